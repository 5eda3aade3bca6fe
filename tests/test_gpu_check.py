"""benchmarks/gpu_check.sh's plumbing, with a stand-in python: it says at once when there is no
GPU, and its exit code says whether every part passed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def gpu_check(tmp_path, **env: str) -> subprocess.CompletedProcess:
    """Run the script with $PYTHON standing in for python: it answers the GPU probe with $FAKE_GPU,
    fails (exit 3) any command whose words contain $FAIL_PART, passes the rest at once (printing
    their arguments into the part's log), and runs gpu_summary.py for real."""
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
case "$*" in
  *cuda.is_available*) echo "${{FAKE_GPU:-True}}" ;;
  *gpu_summary.py*) exec {sys.executable} "$@" ;;
  *"${{FAIL_PART:-no part fails}}"*) exit 3 ;;
  *) echo "$*" ;;
esac
""")
    fake.chmod(0o755)
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHON": str(fake), **env})


@pytest.fixture(autouse=True)
def needs_coreutils():
    if shutil.which("timeout") is None or shutil.which("paste") is None:
        pytest.skip("gpu_check.sh needs coreutils' timeout and paste")


def test_without_a_gpu_it_stops_at_once_with_one_line(tmp_path):
    proc = gpu_check(tmp_path, FAKE_GPU="False")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "gpu_check: error: no CUDA GPU here (torch.cuda.is_available() is False); "
        "for a dry run on a CPU set DEVICE=cpu"]
    assert not (tmp_path / "out").exists()  # nothing ran


def test_exit_code_is_0_only_when_every_part_passed(tmp_path):
    passed = gpu_check(tmp_path)
    assert passed.returncode == 0, passed.stderr
    assert (tmp_path / "out" / "summary.md").is_file()

    failed = gpu_check(tmp_path, FAIL_PART="throughput.py")
    assert failed.returncode == 1
    line, = failed.stderr.strip().splitlines()
    expected = "gpu_check: error: 1 part failed: throughput_compiled (rc=3, see throughput_compiled.log)"
    assert line.startswith(expected), line
    assert "failed: throughput_compiled" in (tmp_path / "out" / "progress.log").read_text()


def started(out) -> list[str]:
    return [line.split("start ")[1].split(" (")[0] for line in (out / "progress.log").read_text().splitlines()
            if "] start " in line]


def test_the_default_runs_the_benchmarks_then_timm_then_the_headline_and_parts_pick_others(tmp_path):
    assert gpu_check(tmp_path).returncode == 0
    assert started(tmp_path / "out") == [
        "bench_cifar10_swin", "bench_cifar10_swin_compiled", "bench_cifar10_swin_cudagraphs", "bench_tiny224",
        "bench_tiny224_compiled", "bench_tiny224_b32", "bench_tiny224_b32_checkpointing", "throughput_compiled",
        "cifar10_swin"]
    # The headline stops itself before the budget runs out, so it still tests and writes results.
    headline = (tmp_path / "out" / "cifar10_swin.log").read_text()
    assert "experiment=cifar10_swin" in headline and re.search(r"train\.time_limit_min=\d+\.\d\d ", headline)
    (tmp_path / "b").mkdir()
    proc = gpu_check(tmp_path / "b", PARTS="headline tta nonsense")
    assert proc.returncode == 1 and "nonsense (unknown part)" in proc.stderr
    assert started(tmp_path / "b" / "out") == ["cifar10_swin", "tta_flip"]


def test_the_summary_says_when_the_headline_stopped_short(tmp_path):
    run = tmp_path / "runs" / "cifar10_swin"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch,val_acc,ema_val_acc,train_img_per_s,data_time_s,epoch_time_s\n"
                                     "1,40.0,,9000,1,10\n2,60.0,61.5,10000,1,10\n")
    (run / "results.json").write_text(json.dumps({
        "test_acc": 60.25, "wall_time_s": 540.0,
        "stopped_early": {"epoch": 2, "reason": "train.time_limit_min=8: 8.1 min so far"}}))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_summary.py"), str(tmp_path)],
                          capture_output=True, text=True, check=True)
    row, = [line for line in proc.stdout.splitlines() if line.startswith("| cifar10_swin")]
    assert row == ("| cifar10_swin | 2 | 61.50 | 60.25 (stopped after epoch 2: train.time_limit_min=8: 8.1 min so far)"
                   " | 10,000 | 10.0% | 540 |")
