"""The training loop: train, validate every epoch, test once with the best weights.

Reproducibility is by construction rather than by saving every RNG: the shuffling order of an
epoch comes from a generator seeded with (seed, epoch), and the global RNG (augmentation,
dropout, stochastic depth) is reseeded from (seed, step) before every step. A run resumed from
any checkpoint, even one written mid-epoch by Ctrl-C, therefore replays exactly the batches and
random draws the uninterrupted run would have made.

What one step does is step.py's TrainStep; where the loop stands, and why it stopped, is
loop_state.py's LoopState (all of it in every checkpoint); what follows the last epoch (the
thresholds and temperature chosen on validation, the test, the top epochs' average) is
final_test.py's.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from swin_cli import (
    atomic_io,
    checkpoint,
    class_report,
    distributed,
    final_test,
    imbalance,
    thresholds,
    top_checkpoints,
)
from swin_cli.build import batch_plan, check_pretrained, configure_device, select_device
from swin_cli.calibration import from_prior
from swin_cli.config import ConfigError, plain
from swin_cli.config.checkpoint import kept_files
from swin_cli.data import (
    DataBundle,
    EpochPlan,
    LoaderDied,
    Split,
    debug_subset,
    eval_batch_size,
    load_data,
    loader_death,
    place_data,
    settle_auto,
    step_seed,
)
from swin_cli.data.class_counts import class_counts, label_counts, split_labels
from swin_cli.errors import NonFiniteLoss
from swin_cli.evaluate import EvalSetup, Evaluator
from swin_cli.interrupt import StopRequest, TrainingInterrupted
from swin_cli.loop_state import HIGHER_IS_BETTER, LoopState, Stop, TimeLimit, choose_select_metric
from swin_cli.metrics import ROW_SCORES, Scores, score_columns
from swin_cli.model import count_parameters
from swin_cli.multilabel_loss import balanced_pos_weight
from swin_cli.multilabel_metrics import ROW_SCORES as MULTILABEL_ROW_SCORES
from swin_cli.multilabel_metrics import MultiLabelScores
from swin_cli.records import EpochProgress, RunRecords, clean_up_after_a_kill, prepare_run_dir
from swin_cli.resolution import ResolutionSchedule, at_size, compiled_sizes, epoch_shapes
from swin_cli.sizes import json_size, size_text
from swin_cli.step import build_train_step

log = logging.getLogger("swin_cli")

# The errors that end a run on purpose, and the stop reason each records in the loop state.
STOPPING_ERRORS = ((TrainingInterrupted, "signal"), (NonFiniteLoss, "nan_loss"), (LoaderDied, "loader_died"))


class Trainer:
    """One run. `overrides`: the command line that made it, to print a complete resume command.
    Seams for tests and extensions: `on_step(trainer)` runs after every optimizer step;
    `evaluator` replaces how a model is scored on a split; `step.criterion` is the loss."""

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
        # data.image_size=null and aug=auto become concrete here, once, before any decoding and
        # before the model, the shape signature and the checkpoints' config read them.
        settled = settle_auto(cfg, self.run_dir if self.is_main else None)
        self.data: DataBundle = place_data(debug_subset(load_data(cfg.data, self.device, settled=settled), cfg,
                                                        self.world), self.device, cfg.data.on_device)
        self.batch_size, self.steps_per_epoch = batch_plan(cfg, len(self.data.train), self.world)
        # train.resolution_schedule (progressive resizing): each epoch's side, batch and steps,
        # from the config and the epoch alone, so a resumed run trains its epoch as the first did.
        # Without a schedule every epoch is (data.image_size, batch_size, steps_per_epoch).
        self.resolution = ResolutionSchedule.from_config(cfg)
        self.shapes = epoch_shapes(cfg, self.resolution, self.batch_size, self.steps_per_epoch, len(self.data.train),
                                   self.world)
        self.total_steps = sum(shape.steps for shape in self.shapes)
        # The training split's images per class (None: unknown without reading it, e.g. shards):
        # the imbalance options' prior, kept in checkpoints for post-hoc adjustment at evaluation.
        self.class_counts = class_counts(self.data.train, self.data.num_classes)
        imbalance.require_counts(cfg, self.class_counts)
        # data.task=multilabel: labels are multi-hot rows; the class counts above are None and
        # label_counts (images per class) stand in for them. Each class's decision threshold is
        # 0.5 until validation chooses it after training (thresholds.py).
        self.multilabel = self.data.task == "multilabel"
        self.label_counts = label_counts(self.data.train) if self.multilabel else None
        self.thresholds = thresholds.defaults(self.data.num_classes) if self.multilabel else None
        self.select_metric, _ = choose_select_metric(plain(cfg.train.select_metric), self.class_counts,
                                                     self.multilabel)
        self.sample_weights = (imbalance.sample_weights(split_labels(self.data.train), self.class_counts)
                               if plain(cfg.data.sampler) == "class_balanced" else None)
        # What evaluation scores: eval.logit_adjust_tau's post-hoc offset, and after training
        # eval.calibrate's temperature (calibration.py); kept in checkpoints for swin-eval/predict.
        self.calibration = from_prior(self.class_counts, cfg.eval.logit_adjust_tau)
        self.step = build_train_step(cfg, self.device, self.data.in_chans, self.data.num_classes, self.data.mean,
                                     self.data.std, self.batch_size, self.steps_per_epoch, self.total_steps, self.world,
                                     class_counts=self.class_counts, pos_weight=self._pos_weight())
        self.model = self.step.model
        self.signature = checkpoint.shape_signature(cfg, self.data.in_chans, self.data.num_classes)
        self.eval_setup = EvalSetup(self.step.prepare.normalize, self.device, eval_batch_size(cfg.data),
                                    self.data.num_classes, plain(cfg.eval.tta), self.step.precision)
        self.evaluator: Evaluator = evaluator or self._evaluate
        self.loop = LoopState()  # where the loop stands; all of it is in checkpoints
        self.resumed_from: Optional[str] = None
        self.first_step_s: Optional[float] = None  # from start-up to the end of the first step
        self.time_limit = TimeLimit(cfg.train.time_limit_min, self.start_time)
        self.earlier_wall_time = 0.0  # of the runs this one resumed, carried in checkpoints
        self.top = top_checkpoints.TopCheckpoints(kept_files(cfg), self.run_dir)  # checkpoint.keep_top
        config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        source = checkpoint.resume_source(cfg.resume, config, self.run_dir)
        if source is not None:
            self._restore(checkpoint.load(source))
        self.records = RunRecords(cfg, self.run_dir, sweep_dir, active=self.is_main)
        self.writer = checkpoint.BackgroundWriter()
        if self.resumed_from:  # the metrics so far, carried over from the checkpoint
            self.records.metrics(self.loop.history)

    # The loop's position, for on_step callbacks and tests.
    epoch = property(lambda self: self.loop.epoch)
    step_in_epoch = property(lambda self: self.loop.step_in_epoch)
    global_step = property(lambda self: self.loop.global_step)
    history = property(lambda self: self.loop.history)

    def _pos_weight(self) -> Optional[torch.Tensor]:
        """train.pos_weight=balanced: each class's negatives / positives in the training labels."""
        if plain(self.cfg.train.pos_weight) == "none":
            return None
        if self.label_counts is None:
            raise ConfigError(f"train.pos_weight=balanced needs the training labels, which "
                              f"data={plain(self.cfg.data.name)} does not hold before reading its images")
        return balanced_pos_weight(self.label_counts, len(self.data.train))

    def _evaluate(self, model: nn.Module, split: Split, full: bool) -> Scores | MultiLabelScores:
        # Every evaluation counts the same things (a confusion matrix is a few kernels a batch);
        # `full` only says the caller will report the per-class table.
        return self.eval_setup.scores(model, split, self.calibration, self.thresholds)

    # ----------------------------------------------------------------------- checkpoints

    def state(self) -> dict[str, Any]:
        config = OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True)
        return {**checkpoint.header(config, self.signature, self.data.classes, self.data.mean, self.data.std,
                                    self.class_counts),
                **self.step.state_dict(), **self.loop.to_dict(), "calibration": self.calibration.to_dict(),
                # Multi-label: the thresholds (0.5 until chosen after training) and the training
                # images per class (the per-class table's imbalance note in swin-eval).
                **({"thresholds": list(self.thresholds), "label_counts": self.label_counts} if self.multilabel else {}),
                "wall_time_s": self.wall_time(),
                "rng": checkpoint.rng_state()}

    def _restore(self, state: dict[str, Any]) -> None:
        checkpoint.check_resumable(state, self.signature, self.cfg.epochs)
        checkpoint.check_not_finished(state, self.cfg.epochs)
        source_dir = Path(state["path"]).parent
        if self.is_main:
            clean_up_after_a_kill(source_dir)
        self.step.load_state_dict(state)
        self.loop = LoopState.from_dict(state)
        self.loop.top = self.top.resumed(self.loop.top, source_dir,
                                         copy=self.is_main and source_dir.resolve() != self.run_dir.resolve())
        checkpoint.restore_rng(state["rng"])
        self.earlier_wall_time = state.get("wall_time_s", 0.0)
        # Bring the best weights along so that the final test uses them.
        if self.is_main and (source_dir / "best.pt").is_file() and source_dir.resolve() != self.run_dir.resolve():
            atomic_io.copy_atomic(source_dir / "best.pt", self.run_dir / "best.pt")
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
        checkpoint.write(self.state(), path)
        return path

    # ------------------------------------------------------------------------------ loop

    def fit(self) -> dict[str, Any]:
        self.records.start(self.model, self.data, self.device, self.steps_per_epoch, self.batch_size, self.world)
        if self.resolution is not None and self.is_main:
            log.info(f"progressive resizing (train.resolution_schedule): {self.resolution.describe(self.cfg.epochs)}; "
                     f"evaluation at {size_text(self.cfg.data.image_size)}")
        stop = StopRequest()
        try:
            with stop.installed(), self.step.anomaly_detection(), compiled_sizes(self.cfg.train.compile, self.shapes):
                while self.epoch < self.cfg.epochs and self.loop.stop is None:
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
            if self.loop.stop is None:
                self.loop.stop = Stop("finished", self.epoch, f"trained to epochs={self.cfg.epochs}")
            else:
                log.info(f"early stop after epoch {self.epoch}: {self.loop.stop.detail}")
            results = self._finish()
        except BaseException as exc:
            reason = next((reason for kind, reason in STOPPING_ERRORS if isinstance(exc, kind)), None)
            if reason is not None and self.loop.stop is None:
                self.loop.stop = Stop(reason, self.epoch + 1, str(exc))
            self.records.abort()
            self.writer.close(quietly=True)  # the last epoch's checkpoint lands before the error is reported
            raise
        distributed.barrier()  # no rank tears the process group down while rank 0 still writes
        return results

    def _train_epoch(self, stop: StopRequest) -> None:
        cfg, loop = self.cfg, self.loop
        shape = self.shapes[loop.epoch]
        if shape.size is not None:  # the side's window geometry kept before a compiled step traces it
            self.model.prepare_input_size(shape.size)
        self.model.train()
        self.step.micro_batch = shape.batch
        # Overfitting a few batches uses the same batches, in the same order, every epoch.
        plan = EpochPlan(cfg.seed, loop.epoch, shape.batch * cfg.train.accumulate, shape.steps,
                         loop.step_in_epoch, self.rank, self.world, shuffle=not cfg.train.overfit_batches,
                         repeats=cfg.data.repeats, weights=self.sample_weights, size=shape.size)
        imbalance.start_epoch(self.step.criterion, loop.epoch)  # deferred re-weighting switches by epoch
        # Each rank draws its own augmentation / stochastic-depth randomness (rank 0 = 1 process).
        rank_seed = cfg.seed + 7_919_093 * self.rank
        # Device-side accumulators: no host sync per step. [loss sum, correct, images]
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)
        recent: list[torch.Tensor] = []
        progress = EpochProgress(self.is_main and cfg.log.progress and sys.stdout.isatty(), loop.epoch + 1,
                                 cfg.epochs, shape.steps, loop.step_in_epoch, self._decisions_per_image())
        started = time.perf_counter()
        batches = self.data.train.train_batches(plan)
        try:
            while loop.step_in_epoch < shape.steps:
                waited = time.perf_counter()  # the time the step waits for its batch counts as data time
                images, labels = next(batches)
                if shape.size is not None:  # a split that holds finished images: resized here
                    images = at_size(images.to(self.device, non_blocking=True), shape.size)
                loop.running["data_time"] += time.perf_counter() - waited
                torch.manual_seed(step_seed(rank_seed, loop.global_step))
                loss, step_correct = self._train_step(images, labels)
                sums[0] += loss.double() * len(labels)
                sums[1] += step_correct
                sums[2] += len(labels)
                recent.append(loss)
                loop.step_in_epoch += 1
                loop.global_step += 1
                if self.first_step_s is None:
                    self.first_step_s = time.time() - self.start_time
                if self.on_step is not None:
                    self.on_step(self)
                log_point = len(recent) >= cfg.log.interval or loop.step_in_epoch == shape.steps
                # All ranks must stop at the same step, or DDP's next all-reduce would hang. Agreeing
                # is an all-reduce the host waits for, so under torchrun it happens at log points
                # only (where the loss check waits anyway): a stop request lands within
                # log.interval steps instead of a sync every step.
                stopping = (self.world == 1 or log_point) and distributed.any_rank(stop.signum is not None, self.device)
                if log_point or stopping:
                    self._check_finite(recent)
                    recent = []
                    loop.running["data_time"] += self.step.prep_timer.collect()
                    progress.update(loop.step_in_epoch, loop.running, sums, time.perf_counter() - started)
                if stopping:
                    stop.signum = stop.signum or signal.SIGTERM
                    break
        finally:
            batches.close()  # stops a stream loader's workers
            progress.close()
            loop.running["data_time"] += self.step.prep_timer.collect()
            loss_total, correct_total, seen_total = distributed.sum_(sums).tolist()
            loop.add_to_running(loss_total, int(correct_total), int(seen_total), time.perf_counter() - started)

    def _decisions_per_image(self) -> int:
        """What a training image adds to the accuracy count (step.hits): 1, or with multi-hot
        labels one per class (per-label accuracy)."""
        return self.data.num_classes if self.multilabel else 1

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step (TrainStep); returns (mean loss, #correct) as device tensors."""
        return self.step(images, labels, f"step {self.global_step + 1} (epoch {self.epoch + 1})")

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
        loop, running, ema = self.loop, self.loop.running, self.step.ema
        seen, train_time = max(1, running["seen"]), running["time"]
        # None (an empty CSV cell, JSON null) where there is nothing to measure.
        has_val = len(self.data.val) > 0
        val = self.evaluator(self.model, self.data.val, False) if has_val else None
        ema_val = self.evaluator(ema.module, self.data.val, False) if has_val and ema else None
        accuracy = 100.0 * running["correct"] / (seen * self._decisions_per_image())
        names = MULTILABEL_ROW_SCORES if self.multilabel else ROW_SCORES
        loop.close_epoch({
            "epoch": loop.epoch + 1, "step": loop.global_step, "train_loss": running["loss"] / seen,
            "train_label_acc" if self.multilabel else "train_acc": accuracy, **score_columns("val", val, names),
            **score_columns("ema_val", ema_val, names), "lr": float(self.step.scheduler.get_last_lr()[0]),
            "epoch_time_s": train_time, "data_time_s": running["data_time"],
            "train_img_per_s": running["seen"] / max(train_time, 1e-9), "skipped_images": len(self.data.skipped),
            # Progressive resizing: the side (or [H, W]) this epoch trained at, for metrics.jsonl
            # and the epoch line.
            **({"train_size": json_size(self.shapes[loop.epoch].size)} if self.resolution is not None else {})})
        rule = self.cfg.train.early_stopping
        improved = loop.score_epoch(loop.history[-1], self.select_metric, rule.patience, rule.min_delta)
        if loop.stop is None and loop.epoch < self.cfg.epochs:
            late = self.time_limit.check(time.time(), self.device)
            if late:
                loop.stop = Stop("time_limit", loop.epoch, late)
        loop.top, kept = self.top.note(loop.top, loop.epoch, *self._top_score(loop.history[-1]))
        if self.is_main:
            # Written while the next epoch trains: an epoch of cifar10_swin on a GPU takes seconds,
            # and saving its 114 MB state took a third of a second on the CPU (RESULTS 12).
            state = checkpoint.cpu_copy(self.state())
            top_files = self.top.epoch_files(state, loop.top, kept)
            self.writer.save_epoch_end(state, self.run_dir, best=improved, first=top_files.first, then=top_files.then)
        self.records.epoch(loop.history, improved and has_val)

    def _top_score(self, row: dict[str, Any]) -> tuple[Optional[float], bool, str, str]:
        """How checkpoint.keep_top ranks a completed epoch (its metrics `row`): (score, higher is
        better, the weights that scored it: model or ema, the metric's name). The better of the
        raw and EMA weights counts, as for best.pt."""
        metric = self.select_metric
        higher = HIGHER_IS_BETTER[metric]
        raw, ema = row.get(f"val_{metric}"), row.get(f"ema_val_{metric}")
        if ema is not None and raw is not None and (ema > raw if higher else ema < raw):
            return ema, higher, "ema", metric
        return raw, higher, "model", metric

    def _interrupted(self, signum: int) -> None:
        path = self.save("last.pt") if self.is_main else None
        distributed.barrier()
        if path is not None:
            log.info(f"saved a resumable checkpoint to {path} "
                     f"(epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.shapes[self.epoch].steps})")
            log.info(f"resume with: {checkpoint.resume_command(self.overrides, self.run_dir)}")
        raise TrainingInterrupted(signum)

    def _finish(self) -> dict[str, Any]:
        """Test the best weights (final_test.py: thresholds and temperature chosen on validation
        first, the top epochs' average after), write results.json and say the final line."""
        self.writer.close()
        distributed.barrier()  # best.pt is on disk before any rank reads it
        best_path, loop = self.run_dir / "best.pt", self.loop
        if best_path.is_file():  # the weights that scored best on validation: raw or EMA
            self.model.load_state_dict(checkpoint.best_weights(checkpoint.load(best_path)))
        if self.multilabel:
            chosen = final_test.choose_thresholds(self.model, self.data.val, self.eval_setup, self.thresholds)
            if chosen is not None:  # kept for swin-eval, predict and swin-export
                self.thresholds = chosen
                final_test.amend_checkpoints(self.run_dir, {"thresholds": chosen}, ["best.pt", "last.pt"],
                                             self.is_main)
        uncalibrated = {}
        if self.cfg.eval.calibrate:
            self.calibration, uncalibrated = final_test.fit_calibration(
                self.model, self.data.val, self.data.test, self.eval_setup, self.calibration, self.evaluator)
            if uncalibrated:  # fitted on the best weights, so kept with them for swin-eval, predict and export
                final_test.amend_checkpoints(self.run_dir, {"calibration": self.calibration.to_dict()}, ["best.pt"],
                                             self.is_main)
        test = self.evaluator(self.model, self.data.test, True)
        results = {
            **loop.results(), "select_metric": self.select_metric,
            **final_test.test_keys(test, loop, self.label_counts),
            "wall_time_s": round(self.wall_time(), 2),
            "wall_time_this_part_s": round(time.time() - self.start_time, 2),
            "first_step_after_s": round(self.first_step_s, 2) if self.first_step_s is not None else None,
            "params": count_parameters(self.model), "device": str(self.device), "processes": self.world,
            "model": self.cfg.model.name, "data": plain(self.cfg.data.name), "data_root": self.data.where,
            "storage": self.data.storage, "test_split": self.data.test_source, "skipped_images": self.data.skipped,
            "classes": self.data.classes, "run_dir": str(self.run_dir), "resumed_from": self.resumed_from,
            "tta": plain(self.cfg.eval.tta),
            "test_per_class": class_report.named(test.per_class, self.data.classes),
            "train_class_counts": self.class_counts,  # None when unknown (streamed shards), or multi-label
            "calibration": self.calibration.to_dict(), **uncalibrated,
        }
        results.update(final_test.test_average(self.cfg, self.run_dir, loop, self.model, self.data.test,
                                               self.evaluator, self.thresholds, self.is_main))
        self.records.finish(results, loop.history, test, self.total_steps, self.steps_per_epoch)
        self.records.final_line(results)
        return results
