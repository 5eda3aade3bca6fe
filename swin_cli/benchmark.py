"""mode=benchmark: how fast the configured training step runs here, and how far from the
hardware's limit. The model, precision, compile mode, channels-last input, optimizer and batch
pipeline are the training run's own (step.build_train_step, the Trainer's step), but fed
random uint8 images of the configured shape: no data set is loaded, so any config can be timed
in seconds. It reports train and inference img/s in steady state, achieved TFLOP/s and MFU
(model FLOPs over the device's peak, peaks.py), peak memory and the share of each step spent
preparing batches, prints a table and writes <run dir>/benchmark.json.

Timing synchronises the GPU only at the edges of a measured window, never inside a step, so
the host queues steps ahead as in training. The optimizer does one step per batch
(train.accumulate is not simulated); the EMA update is part of the step, as in training.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from swin_cli.atomic_io import write_text_atomic
from swin_cli.benchmark_progress import BenchmarkProgress, Phase, duration
from swin_cli.build import autocast, configure_device, select_device
from swin_cli.config import plain
from swin_cli.data import settle_auto
from swin_cli.model import count_parameters
from swin_cli.peaks import device_peak, matmul_dtype
from swin_cli.profiling import format_top_ops, profile_steps
from swin_cli.sizes import hw, plain_size, size_text
from swin_cli.step import build_train_step
from swin_cli.summary import device_name, forward_flops
from swin_cli.text import plural

log = logging.getLogger("swin_cli")

# A training step costs about three forward passes: the forward, and a backward that computes
# gradients for both the activations and the weights (recomputation by grad checkpointing is
# not counted: MFU counts the model's FLOPs, not the hardware's).
TRAIN_FLOPS_PER_FORWARD = 3
# Batches of random images cycled through, so that steps do not reuse one cached batch.
POOL_BATCHES = 4
# Steps under the profiler: enough to see a steady step, few enough for a small trace.
PROFILE_STEPS = 5


def data_shape(data_cfg: Any) -> tuple[int, int, str]:
    """(channels, classes, note) of the configured data without loading it (swin_cli/data/glance.py)."""
    from swin_cli.data import data_shape as shape_without_loading

    return shape_without_loading(data_cfg)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): the allocator's peak since the last reset on CUDA; on a CPU
    the process's peak resident memory, which includes torch itself (about 0.5 GB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated (steady state)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "process peak RSS"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[int], Any], first: int, count: int, device: torch.device,
          progress: Optional[BenchmarkProgress] = None) -> float:
    """Seconds for steps first..first+count-1, the GPU drained before and after; the time
    `progress` spends reporting after each step is not counted."""
    sync(device)
    start = time.perf_counter()
    reporting = 0.0
    for i in range(first, first + count):
        step(i)
        if progress is not None:
            reporting += progress.tick()
    sync(device)
    return time.perf_counter() - start - reporting


class BenchmarkRun:
    """The training step a run of this config would train with (step.build_train_step), and a
    pool of random uint8 batches of the configured shape to feed it."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = select_device(plain(cfg.device))
        configure_device(self.device, cfg.train.tf32, cfg.deterministic)
        torch.manual_seed(cfg.seed)
        self.in_chans, self.num_classes, self.note = data_shape(cfg.data)
        self.batch = cfg.benchmark.batch_size or cfg.data.batch_size
        total = cfg.benchmark.warmup_steps + cfg.benchmark.steps + PROFILE_STEPS
        channels = self.in_chans
        # pretrained=False: the weights do not change the timing, and an offline machine can time
        # a fine-tuning config. One micro-batch per step: train.accumulate is not simulated.
        self.step = build_train_step(cfg, self.device, channels, self.num_classes, [0.5] * channels,
                                     [0.25] * channels, self.batch, total, total, pretrained=False)
        self._make_pool(cfg.data.image_size, cfg.data.on_device)

    def _make_pool(self, size: Any, on_device: bool) -> None:
        # Where a training run keeps its uint8 data: in GPU memory (data.on_device) or pinned host
        # memory copied per batch.
        where = self.device if self.device.type != "cuda" or on_device else torch.device("cpu")
        n = POOL_BATCHES * self.batch
        self.images = torch.randint(0, 256, (n, self.in_chans, *hw(size)), dtype=torch.uint8, device=where)
        self.labels = torch.randint(0, self.num_classes, (n,), device=where)
        if plain(self.cfg.data.task) == "multilabel":  # the multi-hot rows such a run trains on
            self.labels = (torch.rand((n, self.num_classes), device=where) < 0.5).to(torch.uint8)
        if self.device.type == "cuda" and where.type == "cpu":
            self.images, self.labels = self.images.pin_memory(), self.labels.pin_memory()
        self.order = torch.randperm(n, device=where)

    def batch_at(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # A gather by index, as the Trainer takes its shuffled batches.
        start = (i % POOL_BATCHES) * self.batch
        index = self.order[start:start + self.batch]
        return self.images[index], self.labels[index]

    def train_step(self, i: int) -> torch.Tensor:
        """One training step on pool batch i, exactly as the Trainer runs it; returns the loss."""
        loss, _ = self.step(*self.batch_at(i))
        return loss

    @torch.no_grad()
    def inference_step(self, i: int) -> torch.Tensor:
        """What validation does per batch: normalise, forward in eval mode."""
        images, _ = self.batch_at(i)
        x = self.step.prepare.normalize(images.to(self.device, non_blocking=True))
        if self.step.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.step.precision):
            return self.step.forward_model(x)


def start_progress(cfg: Any, device: torch.device, batch: int) -> BenchmarkProgress:
    """The progress of the four runs of steps run_benchmark times, in its order."""
    b = cfg.benchmark
    phases = [Phase("warm-up", b.warmup_steps), Phase("train", b.steps),
              Phase("inference warm-up", b.warmup_steps, 1 / 3), Phase("inference", b.steps, 1 / 3)]
    hint = (f" (benchmark.warmup_steps={b.warmup_steps} + benchmark.steps={b.steps} of batch {batch}; "
            f"fewer steps or a smaller benchmark.batch_size take less)")
    live = bool(cfg.log.progress) and sys.stdout.isatty()
    return BenchmarkProgress(phases, live, warn_cpu=device.type == "cpu", hint=hint)


def time_steps(run: BenchmarkRun, warmup: int, steps: int) -> dict[str, float]:
    """Warm-up, timed training and inference steps, with progress as they go: the seconds of
    each and the training steps' batch preparation."""
    device, step = run.device, run.step
    progress = start_progress(run.cfg, device, run.batch)
    try:
        step.model.train()
        progress.start(0)
        warmup_s = timed(run.train_step, 0, warmup, device, progress)  # compilation is paid here
        if warmup:
            later = warmup_s / warmup * (steps + (warmup + steps) / 3)
            log.info(f"benchmark: warm-up done ({plural(warmup, 'step')}, {warmup_s:.1f} s); "
                     f"the timed steps take about {duration(later)} more")
        step.prep_timer.collect()  # the warm-up's preparation time is not part of the steady state
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        progress.start(1)
        train_s = timed(run.train_step, warmup, steps, device, progress)
        prep_s = step.prep_timer.collect()
        memory = peak_memory(device)
        step.model.eval()  # the compiled forward compiles once more for eval mode, in its warm-up
        progress.start(2)
        timed(run.inference_step, 0, warmup, device, progress)
        progress.start(3)
        infer_s = timed(run.inference_step, 0, steps, device, progress)
    finally:
        progress.close()
    return {"warmup_s": warmup_s, "train_s": train_s, "prep_s": prep_s, "infer_s": infer_s, "memory": memory}


def run_benchmark(cfg: Any, run_dir: Path) -> dict[str, Any]:
    b = cfg.benchmark
    if cfg.data.image_size is None or cfg.aug.name == "auto":  # timed at the size and crops a run would get
        settle_auto(cfg)
    run = BenchmarkRun(cfg)
    device, batch, step = run.device, run.batch, run.step
    name = device_name(device)
    log.info(f"benchmark: {cfg.model.name} at {size_text(cfg.data.image_size)}, batch {batch}, {step.precision}"
             f"{', compiled (' + plain(cfg.train.compile_mode) + ')' if cfg.train.compile else ''} on {name}: "
             f"{b.warmup_steps} warm-up + {b.steps} timed steps")
    times = time_steps(run, b.warmup_steps, b.steps)
    warmup_s, train_s, prep_s, infer_s = times["warmup_s"], times["train_s"], times["prep_s"], times["infer_s"]
    memory, memory_kind = times["memory"]

    flops, _ = forward_flops(step.model, cfg.data.image_size, run.in_chans)
    dtype = matmul_dtype(device, step.precision)
    peak_tflops, peak_source = device_peak(device, name, dtype)
    train_ips, infer_ips = b.steps * batch / train_s, b.steps * batch / infer_s
    train_tflops = TRAIN_FLOPS_PER_FORWARD * flops * train_ips / 1e12
    infer_tflops = flops * infer_ips / 1e12
    result: dict[str, Any] = {
        "device": name, "device_type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "model": cfg.model.name, "params": count_parameters(step.model),
        "image_size": plain_size(cfg.data.image_size),
        "in_chans": run.in_chans, "num_classes": run.num_classes, "batch_size": batch,
        "precision": step.precision, "compile": bool(cfg.train.compile), "compile_mode": plain(cfg.train.compile_mode),
        "channels_last": bool(cfg.train.channels_last), "grad_checkpointing": bool(cfg.model.grad_checkpointing),
        "warmup_steps": b.warmup_steps, "steps": b.steps, "warmup_s": warmup_s,
        "train_step_ms": 1000 * train_s / b.steps, "train_img_per_s": train_ips,
        "inference_img_per_s": infer_ips,
        "forward_gflops_per_image": flops / 1e9, "train_gflops_per_image": TRAIN_FLOPS_PER_FORWARD * flops / 1e9,
        "train_tflops": train_tflops, "inference_tflops": infer_tflops,
        "matmul_dtype": dtype, "peak_tflops": peak_tflops, "peak_source": peak_source,
        "mfu": train_tflops / peak_tflops, "inference_mfu": infer_tflops / peak_tflops,
        "peak_memory_bytes": memory, "peak_memory_kind": memory_kind,
        "data_share": prep_s / train_s, "prep_ms_per_step": 1000 * prep_s / b.steps,
        "note": run.note or None, "trace": None, "top_ops": None,
    }
    if b.profile:
        step.model.train()
        trace = run_dir / "trace.json"
        start = b.warmup_steps + b.steps
        result["top_ops"] = profile_steps(lambda: run.train_step(start), PROFILE_STEPS, device, trace)
        result["trace"] = str(trace)
    write_text_atomic(run_dir / "benchmark.json", json.dumps(result, indent=2) + "\n")
    log.info(format_result(result))
    if result["top_ops"]:
        log.info(f"top ops by self time over {PROFILE_STEPS} training steps (trace: {result['trace']}):\n"
                 + format_top_ops(result["top_ops"]))
    log.info(f"wrote {run_dir / 'benchmark.json'}")
    return result


def rate(img_per_s: float) -> str:
    # Thousands separated on a GPU; three significant digits for a slow CPU step (1.32, not 1).
    return f"{img_per_s:,.0f}" if img_per_s >= 100 else f"{img_per_s:.3g}"


def format_result(r: dict[str, Any]) -> str:
    gib = r["peak_memory_bytes"] / 2**30
    rows = [
        ("train", f"{rate(r['train_img_per_s'])} img/s ({r['train_step_ms']:.1f} ms/step of {r['batch_size']}), "
                  f"data {100 * r['data_share']:.0f}% of the step"),
        ("inference", f"{rate(r['inference_img_per_s'])} img/s"),
        ("FLOPs", f"{r['forward_gflops_per_image']:.3g} GFLOP/image forward, "
                  f"x{TRAIN_FLOPS_PER_FORWARD} per training image"),
        ("achieved", f"{r['train_tflops']:.3g} TFLOP/s training, {r['inference_tflops']:.3g} inference"),
        ("MFU", f"{100 * r['mfu']:.1f}% training, {100 * r['inference_mfu']:.1f}% inference, of "
                f"{r['peak_tflops']:.4g} TFLOP/s ({r['peak_source']})"),
        ("memory", f"{gib:.2f} GiB peak ({r['peak_memory_kind']})"),
        ("warm-up", f"{r['warmup_s']:.1f} s for {plural(r['warmup_steps'], 'step')} (compilation included)"),
    ]
    if r["note"]:
        rows.append(("note", r["note"]))
    return "\n".join(f"  {key:<10} {value}" for key, value in rows)
