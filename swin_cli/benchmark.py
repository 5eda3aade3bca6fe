"""mode=benchmark: how fast the configured training step runs here, and how far from the
hardware's limit. The model, precision, compile mode, channels-last input, optimizer and batch
pipeline are built as a training run builds them (build.py, augment.TrainBatch), but fed
random uint8 images of the configured shape: no data set is loaded, so any config can be timed
in seconds. It reports train and inference img/s in steady state, achieved TFLOP/s and MFU
(model FLOPs over the device's peak, peaks.py), peak memory and the share of each step spent
preparing batches, prints a table and writes <run dir>/benchmark.json.

Timing synchronises the GPU only at the edges of a measured window, never inside a step, so
the host queues steps ahead as in training. The optimizer does one step per batch
(train.accumulate is not simulated) and the EMA update is left out (one fused lerp per step).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from swin_cli.augment import TrainBatch, model_input
from swin_cli.build import (autocast, build_model, build_optimizer, build_scheduler, configure_device, select_device,
                            training_module, uses_cuda_graphs)
from swin_cli.config import plain
from swin_cli.model import count_parameters
from swin_cli.peaks import device_peak, matmul_dtype
from swin_cli.profiling import format_top_ops, profile_steps
from swin_cli.records import PrepTimer
from swin_cli.summary import device_name, forward_flops
from swin_cli.update import EMA, ParameterUpdate

log = logging.getLogger("swin_cli")

# A training step costs about three forward passes: the forward, and a backward that computes
# gradients for both the activations and the weights (recomputation by grad checkpointing is
# not counted: MFU counts the model's FLOPs, not the hardware's).
TRAIN_FLOPS_PER_FORWARD = 3
# Batches of random images cycled through, so that steps do not reuse one cached batch.
POOL_BATCHES = 4
# Steps under the profiler: enough to see a steady step, few enough for a small trace.
PROFILE_STEPS = 5
SOURCE_SHAPES = {"digits": (1, 10), "cifar10": (3, 10), "cifar100": (3, 100)}


def data_shape(data_cfg: Any) -> tuple[int, int, str]:
    """(channels, classes, note) of the configured data without loading it. An image folder's
    classes are its train/ subfolders when it is there (the head's width barely moves the
    timing, so a missing folder costs only a note)."""
    name = plain(data_cfg.name)
    channels, classes = SOURCE_SHAPES.get(name, (3, 10))
    note = ""
    if name == "imagefolder":
        train = Path(str(data_cfg.root or "")).expanduser() / "train"
        found = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
        if found:
            classes = len(found)
        else:
            note = f"no class folders under {train}: timed with {classes} classes"
    return data_cfg.channels or channels, classes, note


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


def timed(step: Callable[[int], Any], first: int, count: int, device: torch.device) -> float:
    """Seconds for steps first..first+count-1, the GPU drained before and after."""
    sync(device)
    start = time.perf_counter()
    for i in range(first, first + count):
        step(i)
    sync(device)
    return time.perf_counter() - start


class BenchmarkRun:
    """The objects one training step needs, built from the config as the Trainer builds them."""

    def __init__(self, cfg: Any):
        t, b = cfg.train, cfg.benchmark
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = select_device(plain(cfg.device))
        configure_device(self.device, t.tf32, cfg.deterministic)
        torch.manual_seed(cfg.seed)
        self.in_chans, self.num_classes, self.note = data_shape(cfg.data)
        self.batch = b.batch_size or cfg.data.batch_size
        self.precision = plain(t.precision)
        compile_mode = plain(t.compile_mode)
        size = cfg.data.image_size
        # pretrained=False: the weights do not change the timing, and an offline machine can time
        # a fine-tuning config.
        self.model = build_model(cfg.model, size, self.in_chans, self.num_classes, pretrained=False).to(self.device)
        self.forward = training_module(self.model, self.device, 1, t.compile, compile_mode)
        self.optimizer = build_optimizer(cfg.optimizer, self.model, self.device, t.compile_optimizer)
        total = b.warmup_steps + b.steps + PROFILE_STEPS
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, total, total)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        # The EMA too: it is part of every step of a run that has one.
        ema = EMA(self.model, t.ema.decay) if t.ema.decay else None
        self.update = ParameterUpdate(self.optimizer, self.scaler, self.scheduler, self.model, t.grad_clip, ema,
                                      t.compile_optimizer, compile_mode)
        channels = self.in_chans
        self.prepare = TrainBatch(cfg.aug, self.num_classes, t.label_smoothing, [0.5] * channels, [0.25] * channels,
                                  self.device)
        self.prepare_batch = torch.compile(self.prepare, mode=compile_mode) if t.compile else self.prepare
        self.criterion = nn.CrossEntropyLoss(label_smoothing=0.0 if self.prepare.mix.active else t.label_smoothing)
        self.timer = PrepTimer(self.device)
        # Where a training run keeps its uint8 data: in GPU memory (data.on_device) or pinned host
        # memory copied per batch.
        where = self.device if self.device.type != "cuda" or cfg.data.on_device else torch.device("cpu")
        n = POOL_BATCHES * self.batch
        self.images = torch.randint(0, 256, (n, self.in_chans, size, size), dtype=torch.uint8, device=where)
        self.labels = torch.randint(0, self.num_classes, (n,), device=where)
        if self.device.type == "cuda" and where.type == "cpu":
            self.images, self.labels = self.images.pin_memory(), self.labels.pin_memory()
        self.order = torch.randperm(n, device=where)

    def batch_at(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # A gather by index, as the Trainer takes its shuffled batches.
        start = (i % POOL_BATCHES) * self.batch
        index = self.order[start:start + self.batch]
        return self.images[index], self.labels[index]

    def train_step(self, i: int) -> torch.Tensor:
        """Trainer._train_step for one micro-batch: prepare (timed), forward, backward, step."""
        images, labels = self.batch_at(i)
        if uses_cuda_graphs(self.cfg.train):
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        self.timer.start()
        x, y, target = model_input(images, labels, self.device, self.prepare_batch, self.cfg.train.channels_last)
        self.timer.stop()
        with autocast(self.device, self.precision):
            logits = self.forward(x)
            loss = self.criterion(logits.float(), target)
        self.scaler.scale(loss).backward()
        self.update()
        return loss.detach()

    @torch.no_grad()
    def inference_step(self, i: int) -> torch.Tensor:
        """What validation does per batch: normalise, forward in eval mode."""
        images, _ = self.batch_at(i)
        x = self.prepare.normalize(images.to(self.device, non_blocking=True))
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            return self.forward(x)


def run_benchmark(cfg: Any, run_dir: Path) -> dict[str, Any]:
    b = cfg.benchmark
    run = BenchmarkRun(cfg)
    device, batch = run.device, run.batch
    name = device_name(device)
    log.info(f"benchmark: {cfg.model.name} at {cfg.data.image_size} px, batch {batch}, {run.precision}"
             f"{', compiled (' + plain(cfg.train.compile_mode) + ')' if cfg.train.compile else ''} on {name}: "
             f"{b.warmup_steps} warm-up + {b.steps} timed steps")

    run.model.train()
    warmup_s = timed(run.train_step, 0, b.warmup_steps, device)  # compilation is paid here
    run.timer.collect()  # the warm-up's preparation time is not part of the steady state
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = timed(run.train_step, b.warmup_steps, b.steps, device)
    prep_s = run.timer.collect()
    memory, memory_kind = peak_memory(device)

    run.model.eval()  # the compiled forward compiles once more for eval mode, in its warm-up
    timed(run.inference_step, 0, b.warmup_steps, device)
    infer_s = timed(run.inference_step, 0, b.steps, device)

    flops, _ = forward_flops(run.model, cfg.data.image_size, run.in_chans)
    dtype = matmul_dtype(device, run.precision)
    peak_tflops, peak_source = device_peak(device, name, dtype)
    train_ips, infer_ips = b.steps * batch / train_s, b.steps * batch / infer_s
    train_tflops = TRAIN_FLOPS_PER_FORWARD * flops * train_ips / 1e12
    infer_tflops = flops * infer_ips / 1e12
    result: dict[str, Any] = {
        "device": name, "device_type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "model": cfg.model.name, "params": count_parameters(run.model), "image_size": cfg.data.image_size,
        "in_chans": run.in_chans, "num_classes": run.num_classes, "batch_size": batch,
        "precision": run.precision, "compile": bool(cfg.train.compile), "compile_mode": plain(cfg.train.compile_mode),
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
        run.model.train()
        trace = run_dir / "trace.json"
        start = b.warmup_steps + b.steps
        result["top_ops"] = profile_steps(lambda: run.train_step(start), PROFILE_STEPS, device, trace)
        result["trace"] = str(trace)
    (run_dir / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
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
        ("FLOPs", f"{r['forward_gflops_per_image']:.3g} GFLOP/image forward, x{TRAIN_FLOPS_PER_FORWARD} per training image"),
        ("achieved", f"{r['train_tflops']:.3g} TFLOP/s training, {r['inference_tflops']:.3g} inference"),
        ("MFU", f"{100 * r['mfu']:.1f}% training, {100 * r['inference_mfu']:.1f}% inference, of "
                f"{r['peak_tflops']:.4g} TFLOP/s ({r['peak_source']})"),
        ("memory", f"{gib:.2f} GiB peak ({r['peak_memory_kind']})"),
        ("warm-up", f"{r['warmup_s']:.1f} s for {r['warmup_steps']} steps (compilation included)"),
    ]
    if r["note"]:
        rows.append(("note", r["note"]))
    return "\n".join(f"  {key:<10} {value}" for key, value in rows)
