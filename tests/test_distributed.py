"""torchrun with 2 CPU processes (gloo): one run dir, metrics over the whole split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODEL, run_cli


def test_two_process_ddp_shares_one_run_dir_and_counts_the_whole_split(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "swin_cli", *TINY_MODEL,
                           "data=digits", "epochs=2", "threads=1"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = [p.parent for p in (tmp_path / "outputs").glob("*/*/.hydra")]
    assert len(run_dirs) == 1, run_dirs  # rank 0 chose the dir; rank 1 used the same one
    run_dir = run_dirs[0]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["processes"] == 2 and results["epochs"] == 2
    # 1,294 training images, batch 64 per process on 2 processes: 10 steps per epoch.
    assert results["steps"] == 20
    assert proc.stdout.count("epoch 1/2 |") == 1  # only rank 0 prints

    # The reported test accuracy is over all 359 test images: a single process agrees.
    single = run_cli(f"ckpt={run_dir}", "mode=eval", "data=digits", f"hydra.run.dir={tmp_path / 'eval'}",
                     cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert evaluated["images"] == 359 and evaluated["acc"] == pytest.approx(results["test_acc"])
    assert sum(map(sum, results["test_confusion"])) == 359
