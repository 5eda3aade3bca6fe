"""The `train` config group: loss, gradients, precision, compilation, EMA, stopping and debugging
knobs of the training loop, and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from swin_cli.choices import choices, plain
from swin_cli.config.errors import check, check_problem
from swin_cli.resolution import schedule_problem

Precision = choices("Precision", "fp32", "bf16", "fp16")
# torch.compile's modes: reduce-overhead adds CUDA graphs, max-autotune also searches kernels.
CompileMode = choices("CompileMode", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# What chooses best.pt and drives early stopping; auto: balanced accuracy when the training
# classes are imbalanced (the largest 3x the smallest or more), else accuracy; with
# data.task=multilabel, map (macro mean average precision).
SelectMetric = choices("SelectMetric", "auto", "acc", "balanced_acc", "macro_f1", "map", "loss")
# The metrics that score one class per image; a multi-label run has map and loss instead.
SINGLE_LABEL_METRICS = ("acc", "balanced_acc", "macro_f1")
# Per-class loss weights for imbalanced data (swin_cli/imbalance.py): inverse frequency, or the
# inverse "effective number" of Cui et al. 2019.
ClassWeights = choices("ClassWeights", "none", "inverse", "effective")
# data.task=multilabel: the weight of each class's positive term in the BCE loss
# (swin_cli/multilabel_loss.py); balanced: its negatives / positives in the training labels.
PosWeight = choices("PosWeight", "none", "balanced")


@dataclass
class EmaConfig:
    # Exponential moving average of the weights, updated every optimizer step; None: off.
    # The EMA weights are validated beside the raw ones and kept in checkpoints.
    decay: Optional[float] = None


@dataclass
class EarlyStoppingConfig:
    # Stop when the selected validation metric (train.select_metric; the better of the raw and EMA
    # weights) has not improved by more than min_delta (points, or loss units) for `patience`
    # epochs in a row; null: train every epoch.
    patience: Optional[int] = None
    min_delta: float = 0.0


@dataclass
class ResolutionScheduleConfig:
    # Progressive resizing (swin_cli/resolution.py): train the early epochs on smaller images,
    # the side ramping linearly from `start` at epoch start_epoch (0-based) to `end` (null:
    # data.image_size) at round(end_fraction x epochs), rounded down to a multiple of `step`
    # (null: model.patch_size x 2^(stages - 1), the finest step that fits the model). With a box
    # data.image_size the sides are its shorter side's, the longer keeping the aspect ratio.
    # Evaluation stays at data.image_size. start=null: off.
    start: Optional[int] = None
    end: Optional[int] = None
    start_epoch: int = 0
    end_fraction: float = 0.7
    step: Optional[int] = None
    # Grow the batch by (data.image_size / side)^2 on the smaller sides, so a batch holds the
    # pixels of a full-size one (the epoch then takes fewer, larger steps).
    scale_batch: bool = False


@dataclass
class TrainConfig:
    label_smoothing: float = 0.0
    # Clip the global gradient norm to this value; None disables clipping.
    grad_clip: Optional[float] = None
    # Sum gradients over this many batches per optimizer step (same update as a k-times batch).
    accumulate: int = 1
    # Autocast dtype for forward/backward; fp16 adds a GradScaler. Weights stay fp32.
    precision: Precision = Precision.fp32
    # torch.compile the model (compile time is paid in the first steps).
    compile: bool = False
    # The torch.compile mode for the model, the batch pipeline and (train.compile_optimizer) the
    # update, with train.compile=true: reduce-overhead replays CUDA graphs (static shapes: every
    # training batch has the same size), max-autotune also searches kernels (long compiles).
    compile_mode: CompileMode = CompileMode.default
    # Compile what follows backward (gradient clipping, the optimizer step, the EMA update), with
    # the lr as a tensor so the schedule does not recompile it. Not under fp16.
    compile_optimizer: bool = False
    # Feed the patch embedding channels-last images (faster convolutions on GPUs).
    channels_last: bool = False
    # CUDA only: fp32 matmuls and convolutions on TF32 tensor cores (10-bit mantissa, ~7x the
    # fp32 rate on an H100; the usual choice for training). false keeps full fp32 products.
    tf32: bool = True
    ema: EmaConfig = field(default_factory=EmaConfig)
    # Stop after this many optimizer steps per epoch (None: the whole epoch); for smoke tests.
    max_steps_per_epoch: Optional[int] = None
    # The validation metric that picks best.pt (and the top-k checkpoints) and that early stopping
    # watches: acc, balanced_acc (mean per-class recall), macro_f1, map (multi-label: macro mean
    # average precision), loss, or auto (see SelectMetric).
    select_metric: SelectMetric = SelectMetric.auto
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    # Minutes of training this process may take: after an epoch, when one more epoch would end
    # past the limit, stop there and test the best weights (a run that must fit a time slot still
    # reports a test accuracy; the schedule is not shortened). null: no limit.
    time_limit_min: Optional[float] = None
    # Debugging (the debug config group sets these). overfit_batches: train on only the first N
    # batches of the training split, the same batches in the same order every epoch, and
    # validate on them, to check that the model can fit them (debug=overfit). limit_eval_batches:
    # validation and the final test score only their first N batches of data.eval_batch_size
    # images (debug=fast).
    # detect_anomaly: torch.autograd's anomaly detection, so that a backward op making a NaN
    # stops the run naming it and the forward op behind it (debug=anomaly; slow).
    overfit_batches: Optional[int] = None
    limit_eval_batches: Optional[int] = None
    detect_anomaly: bool = False
    # Imbalanced classes (swin_cli/imbalance.py; the counts are the training split's). class_weights:
    # weight each class's loss term by 1/n or by (1 - beta) / (1 - beta^n) (beta:
    # class_weight_beta), normalised to average 1 over the classes. reweight_from_epoch: the
    # weights apply from this epoch on (0-based; 0: from the start), the loss is plain before it
    # (deferred re-weighting, Cao et al. 2019). logit_adjust_tau: the loss sees
    # logits + tau * log(prior) (logit adjustment, Menon et al. 2021; 1.0 is their choice); null: off.
    class_weights: ClassWeights = ClassWeights.none
    class_weight_beta: float = 0.999
    reweight_from_epoch: int = 0
    logit_adjust_tau: Optional[float] = None
    # data.task=multilabel: weigh each class's positive term of the BCE loss by its negatives /
    # positives in the training labels (balanced; capped at POS_WEIGHT_CAP in
    # swin_cli/multilabel_loss.py), so that a rare label is not learnt as "always absent". none: 1.
    pos_weight: PosWeight = PosWeight.none
    resolution_schedule: ResolutionScheduleConfig = field(default_factory=ResolutionScheduleConfig)


def check_train(cfg: Any) -> None:
    """The step's keys: label smoothing, clipping, accumulation, EMA decay, step and batch limits."""
    t = cfg.train
    check(0 <= t.label_smoothing < 1, f"train.label_smoothing must be in [0, 1) (got {t.label_smoothing})")
    check(t.grad_clip is None or t.grad_clip > 0, f"train.grad_clip must be > 0 or null (got {t.grad_clip})")
    check(t.accumulate >= 1, f"train.accumulate must be >= 1 (got {t.accumulate})")
    check(t.ema.decay is None or 0 < t.ema.decay < 1, f"train.ema.decay must be in (0, 1) or null (got {t.ema.decay})")
    check(t.max_steps_per_epoch is None or t.max_steps_per_epoch >= 1,
          f"train.max_steps_per_epoch must be >= 1 or null (got {t.max_steps_per_epoch})")
    for key in ("overfit_batches", "limit_eval_batches"):
        value = getattr(t, key)
        check(value is None or value >= 1, f"train.{key} must be >= 1 or null (got {value})")
    check_imbalance(t)
    check_task(cfg)
    check_resolution_schedule(cfg)


def check_resolution_schedule(cfg: Any) -> None:
    """train.resolution_schedule: sides that fit the model, a ramp that ends after it starts."""
    check_problem(schedule_problem(cfg))


def check_task(cfg: Any) -> None:
    """Keys that fit one data.task only. A multi-label image has no single class: the options
    built on one class per image (class weights and priors, the balanced sampler, a softmax
    temperature, the accuracy metrics) have no meaning there, and pos_weight has none without it."""
    t, multilabel = cfg.train, plain(cfg.data.task) == "multilabel"
    metric = plain(t.select_metric)
    if not multilabel:
        check(plain(t.pos_weight) == "none",
              f"train.pos_weight={plain(t.pos_weight)} weighs the positive labels of data.task=multilabel; "
              "for one class per image use train.class_weights")
        check(metric != "map", "train.select_metric=map is for data.task=multilabel; use acc, balanced_acc, "
                               "macro_f1, loss or auto")
        return
    balanced = "use train.pos_weight=balanced for rare labels"
    thresholds = "the per-class thresholds chosen on validation after training take its place"
    one_class_keys = (
        (plain(t.class_weights) != "none", f"train.class_weights={plain(t.class_weights)}", balanced),
        (t.logit_adjust_tau is not None, "train.logit_adjust_tau", balanced),
        (cfg.eval.logit_adjust_tau is not None, "eval.logit_adjust_tau", thresholds),
        (plain(cfg.data.sampler) != "uniform", f"data.sampler={plain(cfg.data.sampler)}", balanced),
        (bool(cfg.eval.calibrate), "eval.calibrate", thresholds),
        (metric in SINGLE_LABEL_METRICS, f"train.select_metric={metric}", "use map, loss or auto"),
    )
    for is_set, key, advice in one_class_keys:
        check(not is_set, f"{key} needs one class per image, which data.task=multilabel has not: {advice}")


def check_imbalance(t: Any) -> None:
    """The imbalance keys: beta in (0, 1), a re-weighting epoch that has weights to defer, tau > 0."""
    check(0 < t.class_weight_beta < 1, f"train.class_weight_beta must be in (0, 1) (got {t.class_weight_beta})")
    check(t.reweight_from_epoch >= 0, f"train.reweight_from_epoch must be >= 0 (got {t.reweight_from_epoch})")
    check(t.reweight_from_epoch == 0 or plain(t.class_weights) != "none",
          f"train.reweight_from_epoch={t.reweight_from_epoch} defers class weights: set train.class_weights to "
          "inverse or effective")
    check(t.logit_adjust_tau is None or t.logit_adjust_tau > 0,
          f"train.logit_adjust_tau must be > 0 or null (got {t.logit_adjust_tau})")


def check_stopping_and_compile(cfg: Any) -> None:
    """Early stopping, the compiled optimizer step (not under fp16) and the time limit.

    Apart from check_train only to keep the order validate has always reported problems in
    (these came after log.* and benchmark.*)."""
    t = cfg.train
    es = t.early_stopping
    check(es.patience is None or es.patience >= 1,
          f"train.early_stopping.patience must be >= 1 or null (got {es.patience})")
    check(es.min_delta >= 0, f"train.early_stopping.min_delta must be >= 0 (got {es.min_delta})")
    check(not (t.compile_optimizer and plain(t.precision) == "fp16"),
          "train.compile_optimizer does not work with train.precision=fp16 (its GradScaler decides on the host "
          "whether to skip each step): use bf16, or leave the optimizer step eager")
    check(t.time_limit_min is None or t.time_limit_min > 0,
          f"train.time_limit_min must be > 0 or null (got {t.time_limit_min})")
