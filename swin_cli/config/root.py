"""The root of the config: `Config` (every group and the top-level keys), the small groups that
have no module of their own (eval, log, benchmark), and their checks; plus the checks of the two
groups whose schemas live beside their code (data: swin_cli/data/schema.py, logger:
swin_cli/loggers/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from swin_cli.choices import choices, plain
from swin_cli.config.aug import AugConfig
from swin_cli.config.checkpoint import CheckpointConfig
from swin_cli.config.errors import ConfigError, check, check_problem
from swin_cli.config.model import ModelConfig
from swin_cli.config.optim import OptimizerConfig, SchedulerConfig
from swin_cli.config.train import TrainConfig
from swin_cli.data.schema import DataConfig
from swin_cli.loggers import LoggerConfig, missing_library, settings_problem
from swin_cli.sizes import size_problem

Device = choices("Device", "auto", "cpu", "cuda", "mps")
# preview: write <run dir>/augment_preview.png, training images after the configured augmentation.
# benchmark: time the configured training step on random data, write <run dir>/benchmark.json.
# cache: list data.cache_dir, or clear what cache.clear names (swin_cli/cache.py); no run dir.
Mode = choices("Mode", "train", "eval", "predict", "summary", "preview", "benchmark", "cache")
TTA = choices("TTA", "none", "flip")
PredictBackend = choices("PredictBackend", "torch", "onnx")


@dataclass
class EvalConfig:
    # Test-time augmentation for validation, test and mode=eval: flip averages the logits of
    # each image and its mirror image (for data where a mirror image is the same class).
    tta: TTA = TTA.none
    # Post-hoc logit adjustment (Menon et al. 2021; swin_cli/imbalance.py): evaluation scores
    # logits - tau * log(prior), the prior being the training split's class shares (kept in the
    # checkpoint); 1.0 undoes an imbalanced training set's prior. null: off.
    logit_adjust_tau: Optional[float] = None
    # Temperature scaling (Guo et al. 2017; swin_cli/calibration.py): after training, fit one
    # temperature on the validation split so that confidence matches accuracy; kept in best.pt
    # and the export sidecar, applied by the final test, swin-eval and predict. Accuracy does not
    # change. Off by default: it needs a validation split, and a model's raw scores stay raw.
    calibrate: bool = False
    # mode=eval (swin-eval) only: score the checkpoint at each of these input sizes (a side or
    # [H, W]) instead of its training size, one row per size, and name the best. The model is
    # not retrained: its window geometry follows the input. null: the training size.
    image_sizes: Optional[list[Any]] = None


@dataclass
class BenchmarkConfig:
    """mode=benchmark: the configured training step timed on random data of the configured
    shape. Warm-up steps (compilation, autotuning) are run and not timed."""

    warmup_steps: int = 10
    steps: int = 30
    # The batch per step; null: data.batch_size.
    batch_size: Optional[int] = None
    # Also write a torch.profiler trace of a few steps (<run dir>/trace.json) and print the top ops.
    profile: bool = False


@dataclass
class CacheConfig:
    """mode=cache: what to remove from data.cache_dir after listing it. null: list only; all:
    everything; a folder: the entries made from images in it (a data root or a split folder);
    an entry's name as the listing shows it: that entry."""

    clear: Optional[str] = None


@dataclass
class LogConfig:
    # A live progress bar when stdout is a terminal; plain epoch lines otherwise.
    progress: bool = True
    # How often (in steps) the bar refreshes and the loss is checked for NaN/inf.
    interval: int = 10
    # Moved to logger.mlflow.tracking_uri and logger.mlflow.experiment (conf/logger/mlflow.yaml).
    # Kept only so that the old spelling fails naming the new key, not as "not in struct".
    tracking_uri: Optional[str] = None
    experiment: Optional[str] = None


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    aug: AugConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    # Top-k checkpoints and their average (swin_cli/config/checkpoint.py).
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    mode: Mode = Mode.train
    epochs: int = 10
    seed: int = 0
    device: Device = Device.auto
    # Experiment trackers besides metrics.csv/metrics.jsonl (always written), a config group
    # (conf/logger/): none, tensorboard (scalars under <run dir>/tb), mlflow, wandb, or several:
    # logger=[tensorboard,mlflow]. Each selected tracker's settings are under logger.<name>
    # (swin_cli/loggers/), with enabled: true.
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # type: ignore[valid-type]
    # CPU threads for torch; None leaves torch's default (one per core).
    threads: Optional[int] = None
    # Deterministic kernels only (torch.use_deterministic_algorithms): GPU runs repeat bit for
    # bit, at a cost in speed. CPU runs repeat bit for bit without it.
    deterministic: bool = False
    # Continue a run: a run dir or a .pt checkpoint, or "auto" for the newest run under
    # outputs/ with the same config.
    resume: Optional[str] = None
    # mode=eval / mode=predict: the checkpoint (or its run dir: best.pt) to use, and the split
    # to evaluate; mode=predict classifies every image under predict_dir into predictions.csv.
    ckpt: Optional[str] = None
    eval_split: str = "test"
    predict_dir: Optional[str] = None
    # mode=predict: score with the checkpoint in torch, or with its ONNX export (swin-export,
    # the .onnx beside the checkpoint) under ONNX Runtime.
    predict_backend: PredictBackend = PredictBackend.torch


def check_top_level(cfg: Any) -> None:
    """No key outside the schema (Hydra's own aside), at least one epoch, at least one thread."""
    known = set(Config.__dataclass_fields__)
    unknown = sorted(set(cfg.keys()) - known - {"hydra"})
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} (top-level keys: {', '.join(sorted(known))})")
    check(cfg.epochs >= 1, f"epochs must be >= 1 (got {cfg.epochs})")
    check(cfg.threads is None or cfg.threads >= 1, f"threads must be >= 1 (got {cfg.threads})")


def check_log_moved_keys(cfg: Any) -> None:
    """log.tracking_uri and log.experiment, set, name where they went."""
    for key in ("tracking_uri", "experiment"):
        check(cfg.log[key] is None, f"log.{key} is now logger.mlflow.{key} (with logger=mlflow)")


def check_logger(cfg: Any) -> None:
    """The selected trackers' settings, and for training their libraries."""
    # Hydra checks the tracker names (the options of conf/logger/); their libraries are checked
    # here, before the data is loaded, and only for training, the one mode that reports to them.
    check_problem(settings_problem(cfg) or (missing_library(cfg) if plain(cfg.mode) == "train" else None))


def check_mode(cfg: Any) -> None:
    """What eval and predict need (a checkpoint, a folder of images), and a split that exists."""
    mode = plain(cfg.mode)
    check(mode not in ("eval", "predict") or bool(cfg.ckpt),
          f"mode={mode} needs ckpt=/path/to/checkpoint.pt (or a run dir: its best.pt)")
    check(mode != "predict" or bool(cfg.predict_dir), "mode=predict needs predict_dir=/folder/of/images")
    check(cfg.cache["clear"] is None or mode == "cache", f"cache.clear is read by mode=cache only (got mode={mode})")
    check(cfg.cache["clear"] is None or str(cfg.cache["clear"]).strip() != "",
          "cache.clear must be all, a folder or an entry name (mode=cache lists the entries)")
    check(cfg.eval_split in ("train", "val", "test"),
          f"eval_split must be one of train, val, test (got {cfg.eval_split!r})")


def check_data(cfg: Any) -> None:
    """The data.* keys: those every source reads, then the chosen source's own."""
    # Imported here: the sources import torch, which --help must not pay for.
    from swin_cli.data.registry import data_problem

    check_problem(data_problem(cfg.data))


def check_eval(cfg: Any) -> None:
    tau = cfg.eval.logit_adjust_tau
    check(tau is None or tau > 0, f"eval.logit_adjust_tau must be > 0 or null (got {tau})")
    sizes = cfg.eval.image_sizes
    if sizes is None:
        return
    check(len(sizes) >= 1, "eval.image_sizes must list at least one size, e.g. [224,256,288] (or be null)")
    mode = plain(cfg.mode)
    check(mode == "eval", f"eval.image_sizes is read by mode=eval (swin-eval) only (got mode={mode})")
    for i, size in enumerate(sizes):
        check_problem(size_problem(size, f"eval.image_sizes[{i}]"))


def check_log(cfg: Any) -> None:
    check(cfg.log.interval >= 1, f"log.interval must be >= 1 (got {cfg.log.interval})")


def check_benchmark(cfg: Any) -> None:
    b = cfg.benchmark
    check(b.warmup_steps >= 0, f"benchmark.warmup_steps must be >= 0 (got {b.warmup_steps})")
    check(b.steps >= 1, f"benchmark.steps must be >= 1 (got {b.steps})")
    check(b.batch_size is None or b.batch_size >= 1, f"benchmark.batch_size must be >= 1 or null (got {b.batch_size})")
