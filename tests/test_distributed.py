"""torchrun with 2 CPU processes (gloo): one run dir, metrics over the whole split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODEL, make_config, on_two_gloo_ranks, run_cli
from test_data import write_folder

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e


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
    # Per-class counts are summed over the ranks too: the per-class scores agree with one process's.
    assert evaluated["per_class"] == results["test_per_class"]
    for key in ("balanced_acc", "macro_f1", "top5_acc", "ece"):
        assert evaluated[key] == pytest.approx(results[f"test_{key}"]), key


def _stream_statistics_on_one_rank(rank: int, out: Path, root: Path) -> dict:
    """One of two gloo processes: load a streamed folder, note each statistics pass and the answer."""
    from swin_cli.data import DataError, load_data, storage
    from swin_cli.distributed import computed_once

    counted = storage.channel_stats_of

    def counting(*args, **kwargs):
        with open(out / "passes", "a") as log:
            log.write(f"{rank}\n")
        return counted(*args, **kwargs)

    storage.channel_stats_of = counting
    cfg = make_config("data=imagefolder", f"data.root={root}", "data.image_size=16", "data.storage=stream",
                      "data.workers=0").data
    data = load_data(cfg)
    failed = ""
    try:  # a failure on rank 0 reaches rank 1 too, instead of leaving it waiting
        computed_once(lambda: (_ for _ in ()).throw(DataError("unreadable sample")))
    except DataError as exc:
        failed = str(exc)
    return {"mean": data.mean, "std": data.std, "failed": failed}


def test_stream_statistics_are_computed_on_rank_0_and_sent_to_the_others(tmp_path):
    root = write_folder(tmp_path / "folder", size=(20, 20))
    zero, one = on_two_gloo_ranks(_stream_statistics_on_one_rank, tmp_path, root)
    assert (tmp_path / "passes").read_text().split() == ["0"]  # one pass, on rank 0
    assert zero == one and len(zero["mean"]) == 3 and zero["std"][0] > 0
    assert zero["failed"] == "unreadable sample"
