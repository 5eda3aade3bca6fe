"""mode=benchmark and debug=profile: the configured step timed on random data, MFU against the
device's peak, benchmark.json, and a profiler trace."""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch
from conftest import TINY_MODEL, make_config, run_cli

from swin_cli.benchmark import data_shape, timed
from swin_cli.benchmark_progress import BenchmarkProgress, Phase, duration
from swin_cli.config import ConfigError, validate
from swin_cli.peaks import device_peak, matmul_dtype, measured_matmul_peak, table_peak

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e


def test_swin_train_mode_benchmark_writes_benchmark_json_and_a_trace(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("mode=benchmark", *TINY_MODEL, "data=digits", "aug=basic", "threads=1", "benchmark.warmup_steps=1",
                   "benchmark.steps=3", "benchmark.batch_size=8", "benchmark.profile=true",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run_dir / "benchmark.json").read_text())
    assert result["device_type"] == "cpu" and result["batch_size"] == 8 and result["steps"] == 3
    assert (result["in_chans"], result["num_classes"], result["image_size"]) == (1, 10, 16)
    for key in ("train_img_per_s", "inference_img_per_s", "train_tflops", "peak_tflops", "peak_memory_bytes",
                "forward_gflops_per_image"):
        assert result[key] > 0, key
    assert result["train_gflops_per_image"] == pytest.approx(3 * result["forward_gflops_per_image"])
    assert 0 < result["mfu"] <= 1.5  # a measured peak can be beaten a little by a lucky window
    assert 0 <= result["data_share"] < 1
    assert result["peak_source"] == "measured fp32 matmul on this device"
    assert result["peak_memory_kind"] == "process peak RSS"
    # The profiler's trace and the ops that took the time.
    trace = json.loads((run_dir / "trace.json").read_text())
    assert trace["traceEvents"]
    assert result["top_ops"] and all(0 < op["share"] <= 1 for op in result["top_ops"])
    assert "MFU" in proc.stdout and "top ops by self time" in proc.stdout
    assert "benchmark: warm-up done (1 step, " in proc.stdout  # and how long the rest will take
    assert not (run_dir / "last.pt").exists()  # nothing trained, nothing checkpointed


def test_debug_profile_is_a_short_profiled_benchmark():
    cfg = make_config("debug=profile")
    assert cfg.mode.value == "benchmark" and cfg.benchmark.profile is True
    assert cfg.benchmark.steps <= 10 and cfg.benchmark.warmup_steps <= 5


@pytest.mark.parametrize("override,message", [
    ("benchmark.steps=0", "benchmark.steps must be >= 1 (got 0)"),
    ("benchmark.warmup_steps=-1", "benchmark.warmup_steps must be >= 0 (got -1)"),
    ("benchmark.batch_size=0", "benchmark.batch_size must be >= 1 or null (got 0)"),
])
def test_bad_benchmark_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(make_config(override))


@pytest.mark.parametrize("name,dtype,peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4), ("NVIDIA H100 PCIe", "bf16", 756.5), ("NVIDIA H100 NVL", "tf32", 417.5),
    ("NVIDIA H200", "tf32", 494.7), ("NVIDIA A100-SXM4-80GB", "fp16", 312.0), ("NVIDIA A100 80GB PCIe", "fp32", 19.5),
    ("NVIDIA L40S", "bf16", 362.05), ("NVIDIA L4", "bf16", 121.0), ("NVIDIA A10", "tf32", 62.5),
    ("NVIDIA GeForce RTX 4090", "bf16", 165.2),
])
def test_known_gpus_get_their_dense_datasheet_peak(name, dtype, peak):
    assert table_peak(name, dtype)[0] == peak


def test_unknown_gpus_and_missing_dtypes_fall_back_to_a_measurement():
    assert table_peak("NVIDIA A10G", "bf16") is None  # not an A10
    assert table_peak("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 tensor cores
    value, source = device_peak(torch.device("cpu"), "cpu, 2 threads", "fp32")
    assert value > 0 and source.startswith("measured fp32")


def test_the_matmul_dtype_follows_precision_and_tf32(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert matmul_dtype(cpu, "bf16") == "bf16" and matmul_dtype(cuda, "fp16") == "fp16"
    assert matmul_dtype(cpu, "fp32") == "fp32"
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert matmul_dtype(cuda, "fp32") == "tf32"
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")
    assert matmul_dtype(cuda, "fp32") == "fp32"


def test_measured_peak_is_a_plausible_number():
    assert 1e-3 < measured_matmul_peak(torch.device("cpu"), "fp32", seconds=0.05) < 1e4


def test_the_gpu_is_synchronised_at_the_window_edges_only(monkeypatch):
    syncs = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    steps = []
    timed(steps.append, 5, 4, torch.device("cuda"))
    assert steps == [5, 6, 7, 8] and len(syncs) == 2


def test_reporting_progress_adds_no_sync_and_its_time_is_not_counted(monkeypatch):
    syncs = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))

    class SlowReport:
        def tick(self) -> float:
            time.sleep(0.05)
            return 0.05

    assert timed(lambda i: None, 0, 4, torch.device("cuda"), SlowReport()) < 0.05
    assert len(syncs) == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_prints_a_line_every_few_seconds_with_the_time_left(caplog):
    clock = FakeClock()
    phases = [Phase("warm-up", 2), Phase("train", 6), Phase("inference", 6, 1 / 3)]
    progress = BenchmarkProgress(phases, live=False, warn_cpu=True, clock=clock)
    with caplog.at_level(logging.INFO, logger="swin_cli"):
        progress.start(0)
        for _ in range(2):
            clock.now += 2.0
            progress.tick()
        progress.start(1)
        for _ in range(6):
            clock.now += 2.0  # a line once 5 s have passed: after steps 3 and 6
            progress.tick()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["benchmark: train 3/6 steps, 2.00 s/step, about 10 s left",
                     "benchmark: train 6/6 steps, 2.00 s/step, about 4 s left"]  # 6 inference steps at 1/3
    assert duration(45) == "45 s" and duration(200) == "3 min 20 s" and duration(3900) == "1 h 05 min"


@pytest.mark.parametrize("first_step_s,device_is_cpu,warned", [(5.0, True, True), (4.0, True, False),
                                                                (5.0, False, False)])
def test_a_cpu_benchmark_over_a_minute_is_warned_about_after_its_first_step(caplog, first_step_s, device_is_cpu,
                                                                            warned):
    clock = FakeClock()
    phases = [Phase("warm-up", 2), Phase("train", 10)]  # 12 steps: 5.01 s each is just over a minute
    progress = BenchmarkProgress(phases, live=False, warn_cpu=device_is_cpu, hint=" (fewer steps)", clock=clock)
    clock.now += 0.01
    progress.start(0)
    clock.now += first_step_s + 0.01
    with caplog.at_level(logging.INFO, logger="swin_cli"):
        progress.tick()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warnings) == warned, warnings
    if warned:
        assert warnings[0] == ("benchmark: the first step took 5.0 s on this CPU, so the benchmark will take "
                               "about 1 min 00 s (fewer steps)")


def test_an_image_folder_is_timed_with_its_class_count_without_loading_it(tmp_path):
    for name in ("cat", "dog", "owl"):
        (tmp_path / "train" / name).mkdir(parents=True)
    cfg = make_config("data=imagefolder", f"data.root={tmp_path}")
    assert data_shape(cfg.data) == (3, 3, "")
    channels, classes, note = data_shape(make_config("data=imagefolder", f"data.root={tmp_path / 'nope'}").data)
    assert (channels, classes) == (3, 10) and "no class folders" in note
