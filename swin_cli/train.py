"""The training loop: train, validate every epoch, test once with the best weights.

Reproducibility is by construction rather than by saving every RNG: the shuffling order of an
epoch comes from a generator seeded with (seed, epoch), and the global RNG (augmentation,
dropout, stochastic depth) is reseeded from (seed, step) before every step. A run resumed from
any checkpoint, even one written mid-epoch by Ctrl-C, therefore replays exactly the batches and
random draws the uninterrupted run would have made.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from swin_cli import __version__, checkpoint, distributed, plots, summary
from swin_cli.augment import Normalize, TrainBatch
from swin_cli.checkpoint import write_text_atomic
from swin_cli.config import ConfigError, plain
from swin_cli.data import DataBundle, ImageSplit, load_data, place_data
from swin_cli.errors import SwinCliError
from swin_cli.build import build_model, build_optimizer, configure_device, lr_factor, select_device
from swin_cli.model import count_parameters
from swin_cli.tracking import open_trackers

log = logging.getLogger("swin_cli")

METRIC_FIELDS = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "ema_val_loss", "ema_val_acc", "lr",
                 "epoch_time_s", "data_time_s", "train_img_per_s"]
# Fields that depend on wall-clock time; everything else is reproducible bit for bit on CPU.
TIMING_FIELDS = ("epoch_time_s", "data_time_s", "train_img_per_s")


class TrainingInterrupted(Exception):
    """Raised after a resumable checkpoint was saved because of SIGINT/SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


class NonFiniteLoss(SwinCliError):
    pass


# ------------------------------------------------------------------------------ building blocks


def fresh_running() -> dict[str, float]:
    """Sums over the current epoch's steps so far (saved in mid-epoch checkpoints)."""
    return {"loss": 0.0, "correct": 0, "seen": 0, "time": 0.0, "data_time": 0.0}


def step_seed(seed: int, step: int) -> int:
    # Distinct, well-spread seeds per (run seed, step); 2^61-1 is prime.
    return (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9) % (2**61 - 1)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed + 7919, epoch)))


class PrepTimer:
    """Time spent preparing batches (copy, augmentation, normalisation, mixing).

    On a CPU that is host wall time. On a GPU the host only queues the kernels, so a pair of
    CUDA events brackets them in the stream and the time between the events is read at the log
    interval, when the loop synchronises anyway: reading it every step would stall the queue.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[Any, Any]] = []
        self.seconds = 0.0
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pending.append((self._start, end))
        else:
            self.seconds += time.perf_counter() - self._start

    def collect(self) -> float:
        """Seconds measured since the last call (waits for the last bracketed kernels on a GPU)."""
        if self.pending:
            self.pending[-1][1].synchronize()
            self.seconds += sum(start.elapsed_time(end) for start, end in self.pending) / 1000.0
            self.pending.clear()
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class EMA:
    """Exponential moving average of a model's weights (buffers are copied as they are)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), 1.0 - self.decay)
        torch._foreach_copy_(list(self.module.buffers()), list(model.buffers()))


def autocast(device: torch.device, precision: str):
    """The autocast context for `precision` (a no-op for fp32)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# ---------------------------------------------------------------------------------- signals


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag checked between steps; a second one exits now."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            print(f"\n{signal.Signals(signum).name} again: exiting now without saving", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a resumable checkpoint "
              f"(send it again to exit at once)", file=sys.stderr, flush=True)

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


# ------------------------------------------------------------------------------------ progress


class EpochProgress:
    """A live rich bar on a terminal; nothing on a pipe (the epoch line says it all there)."""

    def __init__(self, enabled: bool, epoch: int, epochs: int, total_steps: int, done_steps: int):
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=True)
        self.task = self.bar.add_task("train", total=total_steps, completed=done_steps, stats="")
        self.bar.start()

    def update(self, done_steps: int, stats: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done_steps, stats=stats)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ------------------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(self, cfg: Any, run_dir: Path, overrides: Sequence[str] = (), sweep_dir: Optional[Path] = None):
        # overrides: the command line that made this run, to print a complete resume command.
        self.cfg, self.run_dir, self.overrides = cfg, Path(run_dir), list(overrides)
        self.start_time = time.time()
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        if self.is_main:
            check_writable(self.run_dir)
            clean_up_after_a_kill(self.run_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = distributed.local_device() or select_device(plain(cfg.device))
        configure_device(self.device, cfg.train.tf32, cfg.deterministic)
        if cfg.deterministic:
            log.info("deterministic=true: deterministic kernels only (on a GPU expect a slower step; "
                     "ops without such a kernel warn); CPU runs repeat bit for bit without it")
        torch.manual_seed(cfg.seed)

        self.data: DataBundle = place_data(load_data(cfg.data), self.device, cfg.data.on_device)
        self.model = build_model(cfg.model, cfg.data.image_size, self.data.in_chans, self.data.num_classes)
        self.model.to(self.device)
        # The module that runs forward: compiled or not, it shares the parameters of self.model.
        self.forward_model = self.model
        if self.world > 1:  # gradients are averaged over ranks during backward
            self.forward_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.train.compile:
            self.forward_model = torch.compile(self.forward_model)
        self.signature = checkpoint.shape_signature(cfg, self.data.in_chans, self.data.num_classes)
        self.optimizer = build_optimizer(cfg.optimizer, self.model, self.device)
        self.precision = plain(cfg.train.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ema = EMA(self.model, cfg.train.ema.decay) if cfg.train.ema.decay else None
        self.accumulate = cfg.train.accumulate
        self.batch_size = min(cfg.data.batch_size, len(self.data.train))
        # data.batch_size is per process: under torchrun a step consumes batch x accumulate x ranks.
        self.steps_per_epoch = max(1, len(self.data.train) // (self.batch_size * self.accumulate * self.world))
        if cfg.train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.max_steps_per_epoch)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.scheduler, self.total_steps, self.steps_per_epoch))
        self.prepare = TrainBatch(cfg.aug, self.data.num_classes, cfg.train.label_smoothing, self.data.mean,
                                  self.data.std, self.device)
        self.normalize = self.prepare.normalize
        # Compiled, the batch preparation is a few fused kernels instead of a few hundred small
        # launches (on an H100 the eager pipeline took 13% of a cifar10_swin step).
        self.prepare_batch = torch.compile(self.prepare) if cfg.train.compile else self.prepare
        self.prep_timer = PrepTimer(self.device)
        # With mixing, targets arrive as class probabilities (smoothing already folded in).
        self.criterion = nn.CrossEntropyLoss(label_smoothing=0.0 if self.prepare.mix.active else cfg.train.label_smoothing)

        # Where the loop stands; all of it is saved in checkpoints and restored by resume.
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0
        self.global_step = 0
        self.running = fresh_running()
        self.history: list[dict[str, Any]] = []
        self.best_val_acc, self.best_epoch, self.best_source = -1.0, 0, "model"
        # Early stopping: the best score that counted as progress, epochs since, and why it stopped.
        self.plateau = {"best": -1.0, "epochs": 0}
        self.stopped_early: Optional[str] = None
        self.resumed_from: Optional[str] = None
        self.earlier_wall_time = 0.0  # of the runs this one resumed, carried in checkpoints
        if cfg.resume:
            self._resume(cfg.resume)
        elif requeued_job() and (self.run_dir / "last.pt").is_file():
            # SLURM requeued this job after preemption: carry on from its own last checkpoint.
            self._resume(str(self.run_dir))
        self.trackers = open_trackers(cfg, self.run_dir, sweep_dir) if self.is_main else []

    # ----------------------------------------------------------------------- checkpoints

    def state(self) -> dict[str, Any]:
        return {
            "format": "swin-cli", "format_version": checkpoint.FORMAT_VERSION, "version": __version__,
            "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True),
            "signature": self.signature, "classes": self.data.classes,
            "mean": self.data.mean, "std": self.data.std,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "running": dict(self.running), "history": list(self.history),
            "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch, "best_source": self.best_source,
            "wall_time_s": self.wall_time(),
            "plateau": dict(self.plateau), "stopped_early": self.stopped_early,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def _resume(self, target: str) -> None:
        source = find_auto_resume(self.cfg, self.run_dir) if target == "auto" else target
        if source is None:
            log.info("resume=auto: no earlier run with this config under outputs/; starting fresh")
            return
        state = checkpoint.load(source)
        checkpoint.check_compatible(state, self.signature)
        source_dir = Path(state["path"]).parent
        if state["epoch"] > self.cfg.epochs:
            raise ConfigError(f"the run in {source_dir} is already complete at epoch {state['epoch']}; "
                              f"to train it further, resume it with epochs greater than {state['epoch']}")
        if self.is_main:
            clean_up_after_a_kill(source_dir)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None:
                self.ema.module.load_state_dict(state["ema"] if state.get("ema") else state["model"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise checkpoint.CheckpointError(
                f"checkpoint {state['path']} does not fit this run: {str(exc).splitlines()[0]}") from None
        saved_epochs = state["config"]["epochs"]
        if saved_epochs != self.cfg.epochs:
            log.info(f"note: the checkpoint's run had epochs={saved_epochs}; continuing to epochs={self.cfg.epochs}")
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.running = state["global_step"], dict(state["running"])
        self.history = list(state["history"])
        self.best_val_acc, self.best_epoch = state["best_val_acc"], state["best_epoch"]
        self.best_source = state["best_source"]
        self.plateau = dict(state.get("plateau", self.plateau))
        self.stopped_early = state.get("stopped_early")
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        # Bring the best weights along so the final test uses them, and the metrics so far.
        self.earlier_wall_time = state.get("wall_time_s", 0.0)
        if self.is_main:
            if (source_dir / "best.pt").is_file() and source_dir.resolve() != self.run_dir.resolve():
                shutil.copyfile(source_dir / "best.pt", self.run_dir / "best.pt")
            self._write_metrics()
        distributed.barrier()
        self.resumed_from = state["path"]
        where = f"epoch {self.epoch + 1}" + (f", step {self.step_in_epoch}" if self.step_in_epoch else "")
        log.info(f"resumed from {state['path']} at {where}")

    def wall_time(self) -> float:
        """Seconds spent on this run so far, the parts it resumed from included."""
        return self.earlier_wall_time + time.time() - self.start_time

    def _write_metrics(self) -> None:
        _write_metrics_files(self.run_dir, self.history)

    def save(self, name: str) -> Path:
        path = self.run_dir / name
        checkpoint.save_atomic(self.state(), path)
        return path

    # ------------------------------------------------------------------------------ loop

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.is_main:  # the panel's FLOP count runs a forward pass: once, not once per rank
            self.describe()
        stop = StopRequest()
        try:
            with stop.installed():
                while self.epoch < cfg.epochs and self.stopped_early is None:
                    self._train_epoch(stop)
                    if stop.signum is not None:
                        self._interrupted(stop.signum)
                    self._end_epoch()
            if self.stopped_early is not None:
                log.info(f"early stop after epoch {self.epoch}: {self.stopped_early}")
            results = self._finish()
        except BaseException:
            for tracker in self.trackers:
                tracker.abort()
            raise
        distributed.barrier()  # no rank tears the process group down while rank 0 still writes
        return results

    def _train_epoch(self, stop: StopRequest) -> None:
        cfg, train = self.cfg, self.data.train
        self.model.train()
        order = epoch_order(len(train), cfg.seed, self.epoch).to(train.images.device)
        rank_images = self.batch_size * self.accumulate
        step_images = rank_images * self.world
        # Each rank draws its own augmentation / stochastic-depth randomness (rank 0 = 1 process).
        rank_seed = cfg.seed + 7_919_093 * self.rank
        # Device-side accumulators: no host sync per step. [loss sum, correct, images]
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)
        recent: list[torch.Tensor] = []
        progress = EpochProgress(self.is_main and cfg.log.progress and sys.stdout.isatty(), self.epoch + 1,
                                 cfg.epochs, self.steps_per_epoch, self.step_in_epoch)
        started = time.perf_counter()
        try:
            while self.step_in_epoch < self.steps_per_epoch:
                start = self.step_in_epoch * step_images + self.rank * rank_images
                index = order[start:start + rank_images]
                torch.manual_seed(step_seed(rank_seed, self.global_step))
                loss, step_correct = self._train_step(train.images[index], train.labels[index])
                sums[0] += loss.double() * len(index)
                sums[1] += step_correct
                sums[2] += len(index)
                recent.append(loss)
                self.step_in_epoch += 1
                self.global_step += 1
                # All ranks must stop at the same step, or DDP's next all-reduce would hang.
                stopping = distributed.any_rank(stop.signum is not None, self.device)
                last_of_epoch = self.step_in_epoch == self.steps_per_epoch
                if len(recent) >= cfg.log.interval or last_of_epoch or stopping:
                    self._check_finite(recent)
                    recent = []
                    self.running["data_time"] += self.prep_timer.collect()
                    if progress.bar is not None:
                        done = sums.tolist()
                        seen = max(1, self.running["seen"] + done[2])
                        rate = done[2] / max(time.perf_counter() - started, 1e-9)
                        progress.update(self.step_in_epoch, f"loss {(self.running['loss'] + done[0]) / seen:.4f} "
                                        f"acc {100 * (self.running['correct'] + done[1]) / seen:5.2f}% {rate:.0f} img/s")
                if stopping:
                    stop.signum = stop.signum or signal.SIGTERM
                    break
        finally:
            progress.close()
            self.running["data_time"] += self.prep_timer.collect()
            loss_total, correct_total, seen_total = distributed.sum_(sums).tolist()
            self.running["loss"] += loss_total
            self.running["correct"] += int(correct_total)
            self.running["seen"] += int(seen_total)
            self.running["time"] += time.perf_counter() - started

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over `accumulate` micro-batches; returns (mean loss, #correct)."""
        self.optimizer.zero_grad(set_to_none=True)
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        micro_batches = list(zip(images.split(self.batch_size), labels.split(self.batch_size)))
        for i, (micro_images, micro_labels) in enumerate(micro_batches):
            self.prep_timer.start()
            x = micro_images.to(self.device, non_blocking=True)
            y = micro_labels.to(self.device, non_blocking=True)
            x, target = self.prepare_batch(x, y)
            if self.cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.prep_timer.stop()
            # Under DDP, average gradients over ranks once per step, not once per micro-batch.
            last = i == len(micro_batches) - 1
            sync = self.forward_model.no_sync() if self.world > 1 and not last else nullcontext()
            with sync:
                with autocast(self.device, self.precision):
                    logits = self.forward_model(x)
                    loss = self.criterion(logits.float(), target)
                # Weighted so that k micro-batches give the gradient of one k-times batch.
                self.scaler.scale(loss * (len(y) / len(labels))).backward()
            total_loss += loss.detach() * (len(y) / len(labels))
            correct += (logits.argmax(1) == y).sum()
        if self.cfg.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return total_loss, correct

    def _check_finite(self, recent: list[torch.Tensor]) -> None:
        # Summed over ranks so that every rank sees the same non-finite value and stops together.
        losses = distributed.sum_(torch.stack(recent).float())
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            step = self.global_step - len(recent) + int(bad[0]) + 1
            last = self.run_dir / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
            raise NonFiniteLoss(f"the loss became {losses[bad[0]].item()} at step {step} (epoch {self.epoch + 1}); "
                                f"stopped, {kept}. Try a lower optimizer.lr or train.grad_clip=1.0")

    def _end_epoch(self) -> None:
        seen = max(1, self.running["seen"])
        train_time = self.running["time"]
        # None (an empty CSV cell, JSON null) where there is nothing to measure.
        has_val = len(self.data.val) > 0
        val_loss, val_acc = self.evaluate(self.data.val, self.model) if has_val else (None, None)
        ema_loss, ema_acc = self.evaluate(self.data.val, self.ema.module) if has_val and self.ema else (None, None)
        self.epoch += 1
        row = {"epoch": self.epoch, "step": self.global_step, "train_loss": self.running["loss"] / seen,
               "train_acc": 100.0 * self.running["correct"] / seen, "val_loss": val_loss, "val_acc": val_acc,
               "ema_val_loss": ema_loss, "ema_val_acc": ema_acc, "lr": self.scheduler.get_last_lr()[0],
               "epoch_time_s": train_time, "data_time_s": self.running["data_time"],
               "train_img_per_s": self.running["seen"] / max(train_time, 1e-9)}
        self.history.append(row)
        self.step_in_epoch = 0
        self.running = fresh_running()
        # The best of the raw and EMA weights counts; without a validation split, the latest.
        source, score = ("ema", ema_acc) if ema_acc is not None and ema_acc > val_acc else ("model", val_acc)
        improved = not has_val or score > self.best_val_acc
        if improved:
            self.best_epoch, self.best_source = self.epoch, source
            if has_val:
                self.best_val_acc = score
        if has_val:
            self._watch_plateau(score)
        if self.is_main:
            self.save("last.pt")
            if improved:
                shutil.copyfile(self.run_dir / "last.pt", self.run_dir / ".best.pt.tmp")
                os.replace(self.run_dir / ".best.pt.tmp", self.run_dir / "best.pt")
            self._write_metrics()
            for tracker in self.trackers:
                tracker.epoch(row, self.epoch)
            plots.plot_curves(self.history, self.run_dir / "curves.png")
            log.info(format_row(row, self.cfg.epochs) + ("  *" if improved and has_val else ""))
        distributed.barrier()  # checkpoints are complete before any rank reads them

    def _watch_plateau(self, score: float) -> None:
        """Early stopping: count the epochs since validation accuracy last rose by > min_delta."""
        rule = self.cfg.train.early_stopping
        if rule.patience is None:
            return
        if score > self.plateau["best"] + rule.min_delta:
            self.plateau = {"best": score, "epochs": 0}
            return
        self.plateau["epochs"] += 1
        if self.plateau["epochs"] >= rule.patience:
            self.stopped_early = (f"validation accuracy has not risen by more than {rule.min_delta:g} points "
                                  f"for {rule.patience} epochs (best {self.best_val_acc:.2f}% at epoch "
                                  f"{self.best_epoch})")

    @torch.no_grad()
    def evaluate(self, split: ImageSplit, model: nn.Module, confusion: bool = False):
        """Mean loss and accuracy (%) over a split without augmentation (+ confusion matrix)."""
        with autocast(self.device, self.precision):
            loss, acc, matrix = evaluate(model, split, self.normalize, self.device, self.cfg.data.eval_batch_size,
                                         self.data.num_classes if confusion else None,
                                         tta=plain(self.cfg.eval.tta))
        return (loss, acc, matrix) if confusion else (loss, acc)

    def _interrupted(self, signum: int) -> None:
        if not self.is_main:
            distributed.barrier()
            raise TrainingInterrupted(signum)
        path = self.save("last.pt")
        distributed.barrier()
        log.info(f"saved a resumable checkpoint to {path} "
                 f"(epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.steps_per_epoch})")
        log.info(f"resume with: {resume_command(self.overrides, self.run_dir)}")
        raise TrainingInterrupted(signum)

    def _finish(self) -> dict[str, Any]:
        best_path = self.run_dir / "best.pt"
        tested = self.model
        if best_path.is_file():
            best = checkpoint.load(best_path)
            self.model.load_state_dict(best["model"])
            if self.ema is not None and best["ema"] is not None:
                self.ema.module.load_state_dict(best["ema"])
            tested = self.ema.module if self.best_source == "ema" and self.ema else self.model
        test_loss, test_acc, confusion = self.evaluate(self.data.test, tested, confusion=True)
        wall = self.wall_time()
        results = {
            "best_val_acc": self.best_val_acc if self.best_val_acc >= 0 else None,
            "best_epoch": self.best_epoch, "best_weights": self.best_source, "test_acc": test_acc, "test_loss": test_loss,
            "epochs": self.epoch, "steps": self.global_step, "wall_time_s": round(wall, 2),
            "wall_time_this_part_s": round(time.time() - self.start_time, 2),
            "train_img_per_s": _mean([r["train_img_per_s"] for r in self.history]),
            "params": count_parameters(self.model), "device": str(self.device), "processes": self.world,
            "model": self.cfg.model.name, "data": plain(self.cfg.data.name), "test_split": self.data.test_source,
            "classes": self.data.classes, "run_dir": str(self.run_dir), "resumed_from": self.resumed_from,
            "stopped_early": {"epoch": self.epoch, "reason": self.stopped_early} if self.stopped_early else None,
            "tta": plain(self.cfg.eval.tta),
            "test_confusion": confusion.tolist(),
        }
        if self.is_main:
            self._write_final_plots(confusion)
            write_text_atomic(self.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
            for tracker in self.trackers:
                tracker.finish(results, self.run_dir)
        best = f"{self.best_val_acc:.2f}% (epoch {self.best_epoch})" if self.best_val_acc >= 0 else "n/a"
        log.info(f"best val acc {best} | test acc {test_acc:.2f}% (loss {test_loss:.4f}) | {wall:.1f}s | {self.run_dir}")
        if self.is_main:
            log.info(summary.end_panel(self.run_dir))
        return results

    def _write_final_plots(self, confusion: torch.Tensor) -> None:
        lrs = [self.cfg.optimizer.lr * lr_factor(s, self.cfg.scheduler, self.total_steps, self.steps_per_epoch)
               for s in range(self.total_steps)]
        plots.plot_lr(lrs, self.steps_per_epoch, self.run_dir / "lr.png")
        plots.plot_confusion(confusion.tolist(), self.data.classes, self.run_dir / "confusion.png")

    def describe(self) -> None:
        """Log the start panel: run dir, device, data, model stage by stage, recipe."""
        if self.device.type == "cuda":
            device = torch.cuda.get_device_name(self.device)
        else:
            device = self.device.type + (f", {torch.get_num_threads()} threads" if self.device.type == "cpu" else "")
        log.info(summary.start_panel(self.cfg, self.model, self.data, self.run_dir, device,
                                     self.steps_per_epoch, self.batch_size, self.world))


@torch.no_grad()
def evaluate(model: nn.Module, split: ImageSplit, normalize: Normalize, device: torch.device,
             batch_size: int, num_classes: Optional[int] = None,
             tta: str = "none") -> tuple[float, float, Optional[torch.Tensor]]:
    """Mean loss, accuracy (%) and, given num_classes, the confusion matrix (rows: true class).
    tta="flip" averages the logits of each image and its mirror image."""
    was_training = model.training
    model.eval()
    # Under torchrun each rank takes every world-th image; the sums are added over ranks.
    rank, world = distributed.rank(), distributed.world_size()
    if world > 1:
        split = ImageSplit(split.images[rank::world], split.labels[rank::world])
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, images
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64) if num_classes else None
    for start in range(0, len(split), batch_size):
        images = split.images[start:start + batch_size].to(device, non_blocking=True)
        labels = split.labels[start:start + batch_size].to(device, non_blocking=True)
        x = normalize(images)
        logits = model(x).float()
        if tta == "flip":
            logits = (logits + model(x.flip(-1)).float()) / 2
        predicted = logits.argmax(1)
        sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        sums[1] += (predicted == labels).sum()
        sums[2] += len(labels)
        if confusion is not None:
            confusion += torch.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
    model.train(was_training)
    loss_sum, correct, n = distributed.sum_(sums).tolist()
    matrix = distributed.sum_(confusion).view(num_classes, num_classes).cpu() if confusion is not None else None
    return loss_sum / max(1, n), 100.0 * correct / max(1, n), matrix


def format_row(row: dict[str, Any], epochs: int) -> str:
    width = len(str(epochs))
    data_share = row["data_time_s"] / max(row["epoch_time_s"], 1e-9)
    val = (f"val loss {row['val_loss']:.4f} acc {row['val_acc']:6.2f}%" if row["val_acc"] is not None
           else "val n/a")
    if row["ema_val_acc"] is not None:
        val += f" (ema {row['ema_val_acc']:6.2f}%)"
    return (f"epoch {row['epoch']:>{width}}/{epochs} | train loss {row['train_loss']:.4f} acc {row['train_acc']:6.2f}% | "
            f"{val} | lr {row['lr']:.2e} | {row['epoch_time_s']:.1f}s (data {data_share:.0%}) "
            f"{row['train_img_per_s']:.0f} img/s")


def _mean(values: list[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def requeued_job() -> bool:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def clean_up_after_a_kill(run_dir: Path) -> None:
    """Remove what a killed checkpoint write left in `run_dir`, and say so."""
    removed = checkpoint.remove_stale_temp_files(run_dir)
    if removed:
        names = ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else "")
        log.info(f"removed {len(removed)} temporary file(s) an interrupted write left in {run_dir}: {names}")


def check_writable(run_dir: Path) -> None:
    """Fail before training when the run dir cannot take files (read-only, full disk)."""
    probe = run_dir / ".write-test"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        probe.unlink(missing_ok=True) if run_dir.is_dir() else None
        raise SwinCliError(f"cannot write to the run dir {run_dir}: {exc.strerror or exc}") from None


def find_auto_resume(cfg: Any, run_dir: Path, outputs: Path = Path("outputs")) -> Optional[Path]:
    """The newest last.pt under outputs/ whose run had this config (ignoring resume itself)."""
    wanted = _comparable(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    candidates = sorted(outputs.glob("**/last.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        if path.parent.resolve() == run_dir.resolve():
            continue
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)["config"]
        except Exception:
            continue
        if _comparable(saved) == wanted:
            return path
    return None


# Keys that do not change what a run computes, so resume=auto may differ in them.
_NOT_COMPARED = ("resume", "epochs", "threads", "device", "log", "logger")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _NOT_COMPARED}


def resume_command(overrides: Sequence[str], run_dir: Path) -> str:
    kept = [shlex.quote(o) for o in overrides if not o.startswith(("resume=", "hydra."))]
    return " ".join(["swin-train", *kept, f"resume={shlex.quote(str(run_dir))}"])


def _write_metrics_files(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.csv and metrics.jsonl whole (a resumed run carries the earlier rows)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(run_dir / "metrics.csv", buffer.getvalue())
    write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


