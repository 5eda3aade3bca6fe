"""The training loop: train, validate every epoch, test once with the best weights.

Reproducibility is by construction rather than by saving every RNG: the shuffling order of an
epoch comes from a generator seeded with (seed, epoch), and the global RNG (augmentation,
dropout, stochastic depth) is reseeded from (seed, step) before every step. A run resumed from
any checkpoint, even one written mid-epoch by Ctrl-C, therefore replays exactly the batches and
random draws the uninterrupted run would have made.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from swin_cli import __version__, checkpoint, distributed
from swin_cli.augment import TrainBatch, model_input
from swin_cli.build import (autocast, batch_plan, build_model, build_optimizer, build_scheduler, check_pretrained,
                            configure_device, select_device, training_module, uses_cuda_graphs)
from swin_cli.config import plain
from swin_cli.data import (DataBundle, EpochPlan, LoaderDied, Split, debug_subset, eval_batch_size, load_data,
                           loader_death, place_data, step_seed)
from swin_cli.errors import NonFiniteLoss
from swin_cli.evaluate import evaluate_split
from swin_cli.model import count_parameters
from swin_cli.interrupt import StopRequest, TrainingInterrupted
from swin_cli.records import EpochProgress, PrepTimer, RunRecords, clean_up_after_a_kill, mean, prepare_run_dir
from swin_cli.text import plural
from swin_cli.update import EMA, ParameterUpdate, match_loaded_optimizer

log = logging.getLogger("swin_cli")

# evaluator(model, split, confusion) -> (loss, accuracy %, confusion matrix or None)
Evaluator = Callable[[nn.Module, Split, bool], tuple[float, float, Optional[torch.Tensor]]]


def fresh_running() -> dict[str, float]:
    """Sums over the current epoch's steps so far (saved in mid-epoch checkpoints)."""
    return {"loss": 0.0, "correct": 0, "seen": 0, "time": 0.0, "data_time": 0.0}


class Trainer:
    """One run. `overrides`: the command line that made it, to print a complete resume command.
    Seams for tests and extensions: `on_step(trainer)` runs after every optimizer step;
    `evaluator` replaces how a model is scored on a split; `criterion` is a plain attribute."""

    def __init__(self, cfg: Any, run_dir: Path, overrides: Sequence[str] = (), sweep_dir: Optional[Path] = None,
                 on_step: Optional[Callable[["Trainer"], None]] = None, evaluator: Optional[Evaluator] = None):
        self.cfg, self.run_dir, self.overrides = cfg, Path(run_dir), list(overrides)
        self.on_step = on_step
        self.start_time = time.time()
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        if self.is_main:
            prepare_run_dir(self.run_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = distributed.local_device() or select_device(plain(cfg.device))
        configure_device(self.device, cfg.train.tf32, cfg.deterministic, announce=True)
        torch.manual_seed(cfg.seed)

        # Pretrained weights that cannot be had (offline, not cached) stop the run before the
        # data is decoded, which for an image folder can take a while.
        check_pretrained(cfg.model)
        self.data: DataBundle = place_data(debug_subset(load_data(cfg.data, self.device), cfg, self.world),
                                           self.device, cfg.data.on_device)
        self.model = build_model(cfg.model, cfg.data.image_size, self.data.in_chans, self.data.num_classes)
        self.model.to(self.device)
        compile_mode = plain(cfg.train.compile_mode)
        self.cudagraphs = uses_cuda_graphs(cfg.train)
        self.forward_model = training_module(self.model, self.device, self.world, cfg.train.compile, compile_mode)
        self.signature = checkpoint.shape_signature(cfg, self.data.in_chans, self.data.num_classes)
        self.optimizer = build_optimizer(cfg.optimizer, self.model, self.device, cfg.train.compile_optimizer)
        self.precision = plain(cfg.train.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ema = EMA(self.model, cfg.train.ema.decay) if cfg.train.ema.decay else None
        self.accumulate = cfg.train.accumulate
        self.batch_size, self.steps_per_epoch = batch_plan(cfg, len(self.data.train), self.world)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, self.total_steps, self.steps_per_epoch)
        self.update = ParameterUpdate(self.optimizer, self.scaler, self.scheduler, self.model, cfg.train.grad_clip,
                                      self.ema, cfg.train.compile_optimizer, compile_mode)
        self.prepare = TrainBatch(cfg.aug, self.data.num_classes, cfg.train.label_smoothing, self.data.mean,
                                  self.data.std, self.device)
        # Compiled, the batch preparation is a few fused kernels instead of a few hundred small
        # launches (on an H100 the eager pipeline took 13% of a cifar10_swin step).
        self.prepare_batch = torch.compile(self.prepare, mode=compile_mode) if cfg.train.compile else self.prepare
        self.prep_timer = PrepTimer(self.device)
        # With mixing, targets arrive as class probabilities (smoothing already folded in).
        self.criterion = nn.CrossEntropyLoss(label_smoothing=0.0 if self.prepare.mix.active else cfg.train.label_smoothing)
        self.evaluator: Evaluator = evaluator or (
            lambda model, split, confusion: evaluate_split(
                model, split, self.prepare.normalize, self.device, eval_batch_size(cfg.data),
                self.data.num_classes if confusion else None, plain(cfg.eval.tta), self.precision))

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
        self.first_step_s: Optional[float] = None  # from start-up to the end of the first step
        self.epoch_ends: list[float] = []  # when each epoch of this process ended (train.time_limit_min)
        # Why train.time_limit_min ended this process early. Not checkpointed: a run resumed
        # in a new time slot trains on.
        self.out_of_time: Optional[str] = None
        self.earlier_wall_time = 0.0  # of the runs this one resumed, carried in checkpoints
        config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        source = checkpoint.resume_source(cfg.resume, config, self.run_dir)
        if source is not None:
            self._restore(checkpoint.load(source))
        self.records = RunRecords(cfg, self.run_dir, sweep_dir, active=self.is_main)
        self.writer = checkpoint.BackgroundWriter()
        if self.resumed_from:  # the metrics so far, carried over from the checkpoint
            self.records.metrics(self.history)

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

    def _restore(self, state: dict[str, Any]) -> None:
        checkpoint.check_resumable(state, self.signature, self.cfg.epochs)
        source_dir = Path(state["path"]).parent
        if self.is_main:
            clean_up_after_a_kill(source_dir)
        checkpoint.restore(state, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                           scaler=self.scaler, ema=self.ema.module if self.ema else None)
        match_loaded_optimizer(self.optimizer, self.update.compiled)  # as this run steps it, whatever wrote the file
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
                checkpoint.copy_atomic(source_dir / "best.pt", self.run_dir / "best.pt")
        distributed.barrier()
        self.resumed_from = state["path"]
        where = f"epoch {self.epoch + 1}" + (f", step {self.step_in_epoch}" if self.step_in_epoch else "")
        log.info(f"resumed from {state['path']} at {where}")

    def wall_time(self) -> float:
        """Seconds spent on this run so far, the parts it resumed from included."""
        return self.earlier_wall_time + time.time() - self.start_time

    def save(self, name: str) -> Path:
        """Write a checkpoint now, after any epoch-end write still under way (which it replaces)."""
        self.writer.wait()
        path = self.run_dir / name
        checkpoint.save_atomic(self.state(), path)
        return path

    # ------------------------------------------------------------------------------ loop

    def fit(self) -> dict[str, Any]:
        self.records.start(self.model, self.data, self.device, self.steps_per_epoch, self.batch_size, self.world)
        stop = StopRequest()
        try:
            anomaly = nullcontext()
            if self.cfg.train.detect_anomaly:
                # Said once here, in our words, instead of torch's warning pointing at this line.
                warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
                log.info("autograd anomaly detection is on (train.detect_anomaly): training runs several times slower")
                anomaly = torch.autograd.detect_anomaly()
            with stop.installed(), anomaly:
                while self.epoch < self.cfg.epochs and self.stopped_early is None and self.out_of_time is None:
                    try:
                        self._train_epoch(stop)
                    except (LoaderDied, RuntimeError) as exc:  # the steps so far are kept, resumable
                        died = loader_death(exc)
                        if died is None:
                            raise
                        path = self.save("last.pt") if self.is_main else self.run_dir / "last.pt"
                        raise LoaderDied(f"{died}; saved a resumable checkpoint to {path}; resume with: "
                                         f"{checkpoint.resume_command(self.overrides, self.run_dir)}") from None
                    if stop.signum is not None:
                        self._interrupted(stop.signum)
                    self._end_epoch()
            if self.stopped_early is not None or self.out_of_time is not None:
                log.info(f"early stop after epoch {self.epoch}: {self.stopped_early or self.out_of_time}")
            results = self._finish()
        except BaseException:
            self.records.abort()
            self._close_writer(quietly=True)  # the last epoch's checkpoint lands before the error is reported
            raise
        distributed.barrier()  # no rank tears the process group down while rank 0 still writes
        return results

    def _train_epoch(self, stop: StopRequest) -> None:
        cfg, train = self.cfg, self.data.train
        self.model.train()
        # Overfitting a few batches uses the same batches, in the same order, every epoch.
        plan = EpochPlan(cfg.seed, self.epoch, self.batch_size * self.accumulate, self.steps_per_epoch,
                         self.step_in_epoch, self.rank, self.world, shuffle=not cfg.train.overfit_batches,
                         repeats=cfg.data.repeats)
        # Each rank draws its own augmentation / stochastic-depth randomness (rank 0 = 1 process).
        rank_seed = cfg.seed + 7_919_093 * self.rank
        # Device-side accumulators: no host sync per step. [loss sum, correct, images]
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)
        recent: list[torch.Tensor] = []
        progress = EpochProgress(self.is_main and cfg.log.progress and sys.stdout.isatty(), self.epoch + 1,
                                 cfg.epochs, self.steps_per_epoch, self.step_in_epoch)
        started = time.perf_counter()
        batches = train.train_batches(plan)
        try:
            while self.step_in_epoch < self.steps_per_epoch:
                images, labels = self._next_batch(batches)
                torch.manual_seed(step_seed(rank_seed, self.global_step))
                loss, step_correct = self._train_step(images, labels)
                sums[0] += loss.double() * len(labels)
                sums[1] += step_correct
                sums[2] += len(labels)
                recent.append(loss)
                self.step_in_epoch += 1
                self.global_step += 1
                if self.first_step_s is None:
                    self.first_step_s = time.time() - self.start_time
                if self.on_step is not None:
                    self.on_step(self)
                last_of_epoch = self.step_in_epoch == self.steps_per_epoch
                log_point = len(recent) >= cfg.log.interval or last_of_epoch
                # All ranks must stop at the same step, or DDP's next all-reduce would hang. Agreeing
                # is an all-reduce the host waits for, so under torchrun it happens at log points
                # only (where the loss check waits anyway): a stop request lands within
                # log.interval steps instead of a sync every step.
                stopping = (self.world == 1 or log_point) and distributed.any_rank(stop.signum is not None, self.device)
                if log_point or stopping:
                    self._check_finite(recent)
                    recent = []
                    self.running["data_time"] += self.prep_timer.collect()
                    progress.update(self.step_in_epoch, self.running, sums, time.perf_counter() - started)
                if stopping:
                    stop.signum = stop.signum or signal.SIGTERM
                    break
        finally:
            batches.close()  # stops a stream loader's workers
            progress.close()
            self.running["data_time"] += self.prep_timer.collect()
            loss_total, correct_total, seen_total = distributed.sum_(sums).tolist()
            self.running["loss"] += loss_total
            self.running["correct"] += int(correct_total)
            self.running["seen"] += int(seen_total)
            self.running["time"] += time.perf_counter() - started

    def _next_batch(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch; the time the step waits for it counts as data time."""
        waited = time.perf_counter()
        batch = next(batches)
        self.running["data_time"] += time.perf_counter() - waited
        return batch

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over `accumulate` micro-batches; returns (mean loss, #correct)."""
        if self.cudagraphs:  # a new step: the graphs may reuse the memory of the last one's outputs
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        micro_batches = list(zip(images.split(self.batch_size), labels.split(self.batch_size)))
        for i, (micro_images, micro_labels) in enumerate(micro_batches):
            self.prep_timer.start()
            x, y, target = model_input(micro_images, micro_labels, self.device, self.prepare_batch,
                                       self.cfg.train.channels_last)
            self.prep_timer.stop()
            # Under DDP, average gradients over ranks once per step, not once per micro-batch.
            last = i == len(micro_batches) - 1
            sync = self.forward_model.no_sync() if self.world > 1 and not last else nullcontext()
            with sync:
                with autocast(self.device, self.precision):
                    logits = self.forward_model(x)
                    loss = self.criterion(logits.float(), target)
                # Weighted so that k micro-batches give the gradient of one k-times batch.
                try:
                    self.scaler.scale(loss * (len(y) / len(labels))).backward()
                except RuntimeError as exc:
                    # Anomaly detection's own error; any other (out of memory, ...) stays as it is.
                    if not self.cfg.train.detect_anomaly or "returned nan values" not in str(exc):
                        raise
                    # Torch has printed the forward op's traceback as a warning just above.
                    raise NonFiniteLoss(f"anomaly detection stopped step {self.global_step + 1} (epoch "
                                        f"{self.epoch + 1}): {str(exc).splitlines()[0].rstrip('.')}; the forward op "
                                        f"behind it is in the traceback above") from None
            total_loss += loss.detach() * (len(y) / len(labels))
            correct += (logits.argmax(1) == y).sum()
        self.update()
        return total_loss, correct

    def _check_finite(self, recent: list[torch.Tensor]) -> None:
        # Summed over ranks so that every rank sees the same non-finite value and stops together.
        losses = distributed.sum_(torch.stack(recent).float())
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            step = self.global_step - len(recent) + int(bad[0]) + 1
            self.writer.wait()  # the last epoch's checkpoint may still be on its way
            last = self.run_dir / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
            raise NonFiniteLoss(f"the loss became {losses[bad[0]].item()} at step {step} (epoch {self.epoch + 1}); "
                                f"stopped, {kept}. Try a lower optimizer.lr or train.grad_clip=1.0")

    def _end_epoch(self) -> None:
        seen = max(1, self.running["seen"])
        train_time = self.running["time"]
        # None (an empty CSV cell, JSON null) where there is nothing to measure.
        has_val = len(self.data.val) > 0
        val_loss, val_acc, _ = self.evaluator(self.model, self.data.val, False) if has_val else (None, None, None)
        ema_loss, ema_acc, _ = (self.evaluator(self.ema.module, self.data.val, False) if has_val and self.ema
                                else (None, None, None))
        self.epoch += 1
        self.history.append({
            "epoch": self.epoch, "step": self.global_step, "train_loss": self.running["loss"] / seen,
            "train_acc": 100.0 * self.running["correct"] / seen, "val_loss": val_loss, "val_acc": val_acc,
            "ema_val_loss": ema_loss, "ema_val_acc": ema_acc, "lr": float(self.scheduler.get_last_lr()[0]),
            "epoch_time_s": train_time, "data_time_s": self.running["data_time"],
            "train_img_per_s": self.running["seen"] / max(train_time, 1e-9),
            "skipped_images": len(self.data.skipped)})
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
        self._watch_clock()
        if self.is_main:
            # Written while the next epoch trains: an epoch of cifar10_swin on a GPU takes seconds,
            # and saving its 114 MB state took a third of a second on the CPU (RESULTS 12).
            state = checkpoint.cpu_copy(self.state())
            last, best = self.run_dir / "last.pt", self.run_dir / "best.pt"

            def write() -> None:
                checkpoint.save_atomic(state, last)
                if improved:  # the weights alone: resuming reads last.pt
                    checkpoint.save_atomic(checkpoint.best_state(state), best)

            self.writer.submit(write)
        self.records.epoch(self.history, improved and has_val)

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
                                  f"for {plural(rule.patience, 'epoch')} (best {self.best_val_acc:.2f}% at epoch "
                                  f"{self.best_epoch})")

    def _watch_clock(self) -> None:
        """train.time_limit_min: stop after this epoch when the next one, as long as the longest
        so far in this process (validation included), would end past the limit on any rank
        (each has its own clock, and a rank that went on alone would wait in DDP forever)."""
        now = time.time()
        self.epoch_ends.append(now)
        limit = self.cfg.train.time_limit_min
        if limit is None or self.stopped_early is not None or self.epoch >= self.cfg.epochs:
            return
        starts = [self.start_time, *self.epoch_ends[:-1]]
        longest = max(end - start for start, end in zip(starts, self.epoch_ends))
        if distributed.any_rank(now + longest > self.start_time + 60.0 * limit, self.device):
            self.out_of_time = (f"train.time_limit_min={limit:g}: {(now - self.start_time) / 60:.1f} min so far, "
                                f"and another epoch would take up to {longest / 60:.1f}")

    def _interrupted(self, signum: int) -> None:
        if not self.is_main:
            distributed.barrier()
            raise TrainingInterrupted(signum)
        path = self.save("last.pt")
        distributed.barrier()
        log.info(f"saved a resumable checkpoint to {path} "
                 f"(epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.steps_per_epoch})")
        log.info(f"resume with: {checkpoint.resume_command(self.overrides, self.run_dir)}")
        raise TrainingInterrupted(signum)

    def _close_writer(self, quietly: bool = False) -> None:
        """Let the epoch-end write under way finish; `quietly` keeps its error from hiding the
        one being reported."""
        try:
            self.writer.close()
        except Exception as exc:
            if not quietly:
                raise
            log.warning(f"the last epoch-end checkpoint could not be written: {exc}")

    def _finish(self) -> dict[str, Any]:
        self._close_writer()
        distributed.barrier()  # best.pt is on disk before any rank reads it
        best_path = self.run_dir / "best.pt"
        if best_path.is_file():  # the weights that scored best on validation: raw or EMA
            self.model.load_state_dict(checkpoint.best_weights(checkpoint.load(best_path)))
        test_loss, test_acc, confusion = self.evaluator(self.model, self.data.test, True)
        results = {
            "best_val_acc": self.best_val_acc if self.best_val_acc >= 0 else None,
            "best_epoch": self.best_epoch, "best_weights": self.best_source, "test_acc": test_acc, "test_loss": test_loss,
            "epochs": self.epoch, "steps": self.global_step, "wall_time_s": round(self.wall_time(), 2),
            "wall_time_this_part_s": round(time.time() - self.start_time, 2),
            "first_step_after_s": round(self.first_step_s, 2) if self.first_step_s is not None else None,
            "train_img_per_s": mean([r["train_img_per_s"] for r in self.history]),
            "params": count_parameters(self.model), "device": str(self.device), "processes": self.world,
            "model": self.cfg.model.name, "data": plain(self.cfg.data.name), "data_root": self.data.where,
            "storage": self.data.storage, "test_split": self.data.test_source,
            "skipped_images": self.data.skipped,
            "classes": self.data.classes, "run_dir": str(self.run_dir), "resumed_from": self.resumed_from,
            "stopped_early": ({"epoch": self.epoch, "reason": self.stopped_early or self.out_of_time}
                              if self.stopped_early or self.out_of_time else None),
            "tta": plain(self.cfg.eval.tta),
            "test_confusion": confusion.tolist(),
        }
        self.records.finish(results, self.history, confusion, self.total_steps, self.steps_per_epoch)
        self.records.final_line(results)
        return results
