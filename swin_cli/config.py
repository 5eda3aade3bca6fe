"""The config schema: every knob of swin-train, its type and its allowed values, in one place.

The YAML files in conf/ fill these dataclasses. Because the primary config starts from the
`base_config` schema stored here, Hydra rejects unknown keys and wrong types at start-up;
`validate` then checks ranges and cross-field rules that types cannot express.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from swin_cli.errors import SwinCliError


class ConfigError(SwinCliError):
    """A config value that cannot work; the message is one line naming the key."""


# RandAugment magnitudes are bins 0..30, the scale of torchvision's RandAugment(magnitude=...).
RANDAUGMENT_MAX_MAGNITUDE = 30


def choices(name: str, *values: str) -> type[Enum]:
    """A str Enum of the allowed values of a key: Hydra rejects any other value at start-up and
    names the allowed ones."""
    return Enum(name, [(v, v) for v in values], type=str)  # type: ignore[return-value]


DataSource = choices("DataSource", "digits", "cifar10", "cifar100", "imagefolder", "webdataset", "huggingface")
# memory: decode once into a uint8 tensor (fastest for sets that fit); stream: decode while
# training in worker processes; auto: see swin_cli/data/storage.py choose_storage.
Storage = choices("Storage", "auto", "memory", "stream")
TrainCrop = choices("TrainCrop", "auto", "resize", "random_resized")
Interpolation = choices("Interpolation", "bilinear", "bicubic")
OptimizerName = choices("OptimizerName", "adamw", "adam", "sgd")
SchedulerName = choices("SchedulerName", "cosine", "step", "onecycle", "constant")
AutoAugment = choices("AutoAugment", "none", "randaugment", "trivialaugment", "autoaugment")
AutoAugmentPolicy = choices("AutoAugmentPolicy", "cifar10", "imagenet", "svhn")
OpSpaceName = choices("OpSpaceName", "standard", "wide")
Precision = choices("Precision", "fp32", "bf16", "fp16")
AttnImpl = choices("AttnImpl", "auto", "sdpa", "math")
Stem = choices("Stem", "patch", "conv")
Device = choices("Device", "auto", "cpu", "cuda", "mps")
# preview: write <run dir>/augment_preview.png, training images after the configured augmentation.
# benchmark: time the configured training step on random data, write <run dir>/benchmark.json.
Mode = choices("Mode", "train", "eval", "predict", "summary", "preview", "benchmark")
# torch.compile's modes: reduce-overhead adds CUDA graphs, max-autotune also searches kernels.
CompileMode = choices("CompileMode", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TTA = choices("TTA", "none", "flip")
PredictBackend = choices("PredictBackend", "torch", "onnx")


@dataclass
class ModelConfig:
    name: str = MISSING
    # 1: Swin (Liu et al. 2021). 2: Swin V2 (Liu et al. 2022): scaled cosine attention, a
    # continuous position bias from a small MLP, residual post-norm.
    version: int = 1
    patch_size: int = 2
    embed_dim: int = 24
    depths: list[int] = field(default_factory=lambda: [2, 2, 2])
    num_heads: list[int] = field(default_factory=lambda: [4, 4, 4])
    window_size: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    patch_norm: bool = True
    # patch: the paper's p x p patch projection. conv: a 3x3 conv + BatchNorm + GELU before it
    # (a convolutional tokenizer; much faster learning on small data, see swin_cli/model.py).
    stem: Stem = Stem.patch
    # How many 3x3 conv + BatchNorm + GELU layers (embed_dim wide) a conv stem has.
    stem_convs: int = 1
    # sdpa: F.scaled_dot_product_attention; math: explicit softmax (same numbers). auto: the one
    # measured faster for windows this small, math, on CPUs (nano +6%) and on an H100 (nano +13%,
    # tiny +3%; benchmarks/RESULTS.md).
    attn_impl: AttnImpl = AttnImpl.auto
    # Weights to start from: `imagenet` (exactly that spelling) for torchvision's ImageNet-1k
    # weights of this preset (tiny, small, base, v2_tiny, v2_small, v2_base; downloaded once into
    # torch hub's cache, $TORCH_HOME/hub/checkpoints), or a state_dict file: torchvision's, timm's
    # or swin-cli's. The head is dropped when the number of classes differs.
    pretrained: Optional[str] = None
    # Recompute each block's activations during backward instead of keeping them (torch.utils
    # .checkpoint): less activation memory for more compute; the gradients are the same.
    grad_checkpointing: bool = False


@dataclass
class DataConfig:
    name: DataSource = MISSING
    # Where the data lives (imagefolder: a folder with train/ and test/, optional val/;
    # cifar: where torchvision keeps or downloads it). None means the source's default.
    root: Optional[str] = None
    image_size: int = 32
    # Channels fed to the model; None keeps the source's own (1 for digits, 3 for RGB).
    channels: Optional[int] = None
    # Held-out part of train used for validation when the source has no val split.
    val_fraction: float = 0.1
    split_seed: int = 0
    batch_size: int = 64
    # null: 512 images up to 64 px, fewer for larger ones (the same pixels per batch), never
    # fewer than batch_size.
    eval_batch_size: Optional[int] = None
    download: bool = True
    # memory, stream or auto: stream for data=webdataset, for data.train_crop=random_resized, or
    # when the decoded set (N x C x image_size^2 bytes) is over memory_budget_gb; else memory.
    storage: Storage = Storage.auto
    # null: a quarter of the machine's RAM.
    memory_budget_gb: Optional[float] = None
    # Training view of each image: resize (squash the whole image to image_size, the memory
    # storage's), random_resized (RandomResizedCrop from the image at its own resolution, stream
    # storage), auto (random_resized for image files over 64 px, else resize).
    train_crop: TrainCrop = TrainCrop.auto
    # RandomResizedCrop: the fraction of the image area and the aspect-ratio range of the crop.
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    interpolation: Interpolation = Interpolation.bilinear
    # Evaluation view: resize the shorter side to image_size / crop_pct, then the centre crop.
    # null: 0.875 over 64 px (224 -> 256, the official Swin repo's), 1.0 for small images.
    crop_pct: Optional[float] = None
    # Stream storage: decoding processes (null: one per core, at most 8), batches each keeps
    # ready, and how many training images (eval view) the mean/std are estimated from.
    workers: Optional[int] = None
    prefetch: int = 4
    stats_images: int = 2000
    # Stream storage of image files: read a copy prepared once under cache_dir, each image
    # re-encoded with its shorter side at most prepare_side (null: 1.15 x image_size), in a few
    # shard files. Decoding fewer pixels is the loader's main cost (benchmarks/RESULTS.md).
    prepare: bool = False
    prepare_side: Optional[int] = None
    # Repeated augmentation (Hoffer et al. 2020; DeiT, Lee et al.'s small-data ViTs): each epoch
    # takes len(train) / repeats images, each `repeats` times in a row, differently augmented.
    repeats: int = 1
    # Decoded images are cached here as uint8 tensors so later runs skip JPEG decoding.
    cache_dir: str = "~/.cache/swin-cli"
    # On a GPU, hold the decoded uint8 images in GPU memory when they take at most half of the
    # free memory (CIFAR-10: 184 MB), so batches never cross from the host.
    on_device: bool = True
    # Per-channel normalisation; None computes it from the training split.
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    # data=huggingface: a folder written by datasets' save_to_disk, a folder of parquet files, or
    # a hub name (needs the network, or its copy in the datasets cache with HF_HUB_OFFLINE=1);
    # the columns holding the image and the label.
    path: Optional[str] = None
    image_column: str = "image"
    label_column: str = "label"
    # data=webdataset: tar shards, brace-expanded ('/data/train-{0000..0127}.tar', quoted for
    # Hydra) or globbed (/data/train-*.tar). test_urls may be left out when val_urls is given
    # (the final test is then on val); without val_urls there is no validation.
    train_urls: Optional[str] = None
    val_urls: Optional[str] = None
    test_urls: Optional[str] = None
    # The extensions of a sample's image (the first present of ;-separated alternatives) and of
    # its integer label: WebDataset's conventions.
    image_key: str = "jpg;jpeg;png;webp"
    label_key: str = "cls"
    # Class names by label (webdataset; null: "0".."K-1" from the largest label in the shards).
    classes: Optional[list[str]] = None
    # Encoded samples each loader worker shuffles among, on top of the per-epoch shard order
    # (0: off). Costs this many encoded images of memory per worker.
    shuffle_buffer: int = 1000


@dataclass
class AugConfig:
    name: str = MISSING
    # Zero-pad by this many pixels, then crop back to image_size at a random offset (0: off).
    crop_padding: int = 0
    hflip: bool = False
    # Per-image policy applied after crop/flip (torchvision's RandAugment / TrivialAugmentWide /
    # AutoAugment with the learnt policy autoaugment_policy, whose own magnitudes ignore op_space).
    auto_augment: AutoAugment = AutoAugment.none
    autoaugment_policy: AutoAugmentPolicy = AutoAugmentPolicy.cifar10
    # How far the ops reach at the top magnitude: standard (RandAugment paper: translate 45% of
    # the side, rotate 30 deg) or wide (TrivialAugment paper: translate 32 px, rotate 135 deg,
    # i.e. the whole of a 32 px image). null: the policy's own (randaugment: standard,
    # trivialaugment: wide).
    op_space: Optional[OpSpaceName] = None
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    # Probability per image of erasing one random rectangle (filled with noise).
    random_erasing: float = 0.0
    # Beta(alpha, alpha) mixing of image pairs and their labels; 0 turns each off.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    # Probability that a batch is mixed at all, and of cutmix rather than mixup when both are on.
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5


@dataclass
class OptimizerConfig:
    name: OptimizerName = MISSING
    lr: float = 2e-3
    # On weight matrices only; the model names the parameters it exempts (norms, biases, ...).
    weight_decay: float = 0.05
    # adamw, adam:
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # sgd:
    momentum: float = 0.9
    nesterov: bool = False
    # Layer-wise lr decay, for fine-tuning: the head trains at lr and each block below it at
    # layer_decay times the lr of the one above (patch embedding lowest); null: one lr for all.
    layer_decay: Optional[float] = None


@dataclass
class SchedulerConfig:
    """The lr schedule, stepped once per optimizer step. warmup_epochs: a linear warmup from
    warmup_start_factor*lr, in epochs (fractions allowed). cosine and onecycle end at
    min_lr_factor*lr. step multiplies the lr by decay_rate every decay_epochs epochs. onecycle
    rises to the peak lr over the first pct_start of all steps."""

    name: SchedulerName = MISSING
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.01
    min_lr_factor: float = 0.01
    decay_epochs: float = 30.0
    decay_rate: float = 0.1
    pct_start: float = 0.3


@dataclass
class EmaConfig:
    # Exponential moving average of the weights, updated every optimizer step; None: off.
    # The EMA weights are validated beside the raw ones and kept in checkpoints.
    decay: Optional[float] = None


@dataclass
class EarlyStoppingConfig:
    # Stop when validation accuracy (the better of the raw and EMA weights) has not risen by
    # more than min_delta points for `patience` epochs in a row; null: train every epoch.
    patience: Optional[int] = None
    min_delta: float = 0.0


@dataclass
class EvalConfig:
    # Test-time augmentation for validation, test and mode=eval: flip averages the logits of
    # each image and its mirror image (for data where a mirror image is the same class).
    tta: TTA = TTA.none


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


LOGGERS = ("none", "tensorboard", "mlflow")


@dataclass
class LogConfig:
    # A live progress bar when stdout is a terminal; plain epoch lines otherwise.
    progress: bool = True
    # How often (in steps) the bar refreshes and the loss is checked for NaN/inf.
    interval: int = 10
    # logger=mlflow: where runs are stored (null: a SQLite store under outputs/mlruns) and the
    # experiment (null: swin-cli, or for a sweep its folder, so a sweep is one experiment).
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
    mode: Mode = Mode.train
    epochs: int = 10
    seed: int = 0
    device: Device = Device.auto
    # Experiment trackers besides metrics.csv/metrics.jsonl (always written): none, tensorboard
    # (scalars under <run dir>/tb), mlflow, or a list of them: logger=[tensorboard,mlflow].
    logger: Any = "none"
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


def plain(value: Any) -> Any:
    """A config value with enums turned into their string (`cfg.optimizer.name` -> "adamw")."""
    return getattr(value, "value", value)


def logger_names(cfg: Any) -> list[str]:
    """The trackers `logger` names, as a list without "none"."""
    value = cfg.logger
    names = [value] if isinstance(value, str) else list(value)
    return [plain(n) for n in names if plain(n) != "none"]


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Any) -> None:
    """Range and cross-field checks that the schema's types cannot express."""
    known = set(Config.__dataclass_fields__)
    unknown = sorted(set(cfg.keys()) - known - {"hydra"})
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} (top-level keys: {', '.join(sorted(known))})")
    m, d, o, s, t = cfg.model, cfg.data, cfg.optimizer, cfg.scheduler, cfg.train
    _check(cfg.epochs >= 1, f"epochs must be >= 1 (got {cfg.epochs})")
    _check(cfg.threads is None or cfg.threads >= 1, f"threads must be >= 1 (got {cfg.threads})")
    loggers = [cfg.logger] if isinstance(cfg.logger, str) else cfg.logger
    _check(all(isinstance(n, str) and n in LOGGERS for n in loggers),
           f"logger must be one of {', '.join(LOGGERS)} or a list of them, e.g. logger=[tensorboard,mlflow] "
           f"(got {cfg.logger})")
    mode = plain(cfg.mode)
    _check(mode not in ("eval", "predict") or bool(cfg.ckpt),
           f"mode={mode} needs ckpt=/path/to/checkpoint.pt (or a run dir: its best.pt)")
    _check(mode != "predict" or bool(cfg.predict_dir), "mode=predict needs predict_dir=/folder/of/images")
    _check(cfg.eval_split in ("train", "val", "test"),
           f"eval_split must be one of train, val, test (got {cfg.eval_split!r})")

    # Imported here: the model module imports torch, which --help must not pay for.
    from swin_cli.model import architecture_problem

    problem = architecture_problem(
        image_size=d.image_size, patch_size=m.patch_size, in_chans=d.channels or 1, num_classes=0,
        embed_dim=m.embed_dim, depths=list(m.depths), num_heads=list(m.num_heads), window_size=m.window_size,
        mlp_ratio=m.mlp_ratio, stem_convs=m.stem_convs, version=m.version)
    _check(problem is None, problem or "")
    for key in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
        value = getattr(m, key)
        _check(0.0 <= value < 1.0, f"model.{key} must be in [0, 1) (got {value})")

    _check(d.channels is None or d.channels in (1, 3),
           f"data.channels must be 1, 3 or null (got {d.channels})")
    _check(0.0 <= d.val_fraction < 1.0, f"data.val_fraction must be in [0, 1) (got {d.val_fraction})")
    _check(d.batch_size >= 1, f"data.batch_size must be >= 1 (got {d.batch_size})")
    _check(d.eval_batch_size is None or d.eval_batch_size >= 1,
           f"data.eval_batch_size must be >= 1 or null (got {d.eval_batch_size})")
    _check(d.memory_budget_gb is None or d.memory_budget_gb >= 0,
           f"data.memory_budget_gb must be >= 0 or null (got {d.memory_budget_gb})")
    _check(d.crop_pct is None or 0 < d.crop_pct <= 1, f"data.crop_pct must be in (0, 1] or null (got {d.crop_pct})")
    _check(len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
           f"data.crop_scale must be [low, high] with 0 < low <= high <= 1 (got {list(d.crop_scale)})")
    _check(len(d.crop_ratio) == 2 and 0 < d.crop_ratio[0] <= d.crop_ratio[1],
           f"data.crop_ratio must be [low, high] with 0 < low <= high (got {list(d.crop_ratio)})")
    _check(d.workers is None or d.workers >= 0, f"data.workers must be >= 0 or null (got {d.workers})")
    _check(d.prefetch >= 1, f"data.prefetch must be >= 1 (got {d.prefetch})")
    _check(d.stats_images >= 1, f"data.stats_images must be >= 1 (got {d.stats_images})")
    _check(d.repeats >= 1, f"data.repeats must be >= 1 (got {d.repeats})")
    _check(d.repeats == 1 or d.name != DataSource.webdataset,
           "data.repeats needs random access to the images, which data=webdataset does not give")
    _check(d.prepare_side is None or d.prepare_side >= d.image_size,
           f"data.prepare_side must be >= data.image_size={d.image_size} or null (got {d.prepare_side})")
    _check(not (d.storage == Storage.memory and d.train_crop == TrainCrop.random_resized),
           "data.train_crop=random_resized needs each image at its own resolution: "
           "use data.storage=stream (or auto)")
    if d.name in (DataSource.digits, DataSource.cifar10, DataSource.cifar100):
        _check(d.storage != Storage.stream and d.train_crop != TrainCrop.random_resized,
               f"data={d.name.value} is held in memory at its own size: data.storage=stream and "
               f"data.train_crop=random_resized are for image files (data=imagefolder, webdataset, huggingface)")
    if d.name == DataSource.imagefolder:
        _check(d.root is not None, "data=imagefolder needs data.root=/path/with/train_and_test_folders")
    if d.name == DataSource.huggingface:
        _check(bool(d.path), "data=huggingface needs data.path=/folder/saved/with/save_to_disk "
                             "(or a folder of parquet files, or a hub name)")
    if d.name == DataSource.webdataset:
        _check(bool(d.train_urls), "data=webdataset needs data.train_urls='/data/train-{0000..0127}.tar'")
        _check(bool(d.test_urls or d.val_urls),
               "data=webdataset needs data.test_urls (or data.val_urls, which the final test then uses)")
        _check(d.storage != Storage.memory, "data=webdataset streams its shards: data.storage=memory cannot "
                                            "hold them (use stream or auto)")
    _check(d.shuffle_buffer >= 0, f"data.shuffle_buffer must be >= 0 (got {d.shuffle_buffer})")
    _check(bool(d.image_key.strip(" ;")), "data.image_key must name at least one extension, e.g. jpg;png")
    _check(bool(d.label_key.strip()), "data.label_key must name the label's extension, e.g. cls")
    for key in ("mean", "std"):
        value = getattr(d, key)
        _check(value is None or len(value) in (1, 3), f"data.{key} must list 1 or 3 values (got {value})")
    _check(d.std is None or all(v > 0 for v in d.std), f"data.std values must be > 0 (got {d.std})")

    a = cfg.aug
    _check(a.crop_padding >= 0, f"aug.crop_padding must be >= 0 (got {a.crop_padding})")
    _check(a.randaugment_ops >= 1, f"aug.randaugment_ops must be >= 1 (got {a.randaugment_ops})")
    _check(0 <= a.randaugment_magnitude <= RANDAUGMENT_MAX_MAGNITUDE,
           f"aug.randaugment_magnitude must be in [0, {RANDAUGMENT_MAX_MAGNITUDE}] (got {a.randaugment_magnitude})")
    for key in ("random_erasing", "mix_prob", "mix_switch_prob"):
        _check(0.0 <= getattr(a, key) <= 1.0, f"aug.{key} must be in [0, 1] (got {getattr(a, key)})")
    for key in ("mixup_alpha", "cutmix_alpha"):
        _check(getattr(a, key) >= 0.0, f"aug.{key} must be >= 0 (got {getattr(a, key)})")

    _check(o.lr > 0 and math.isfinite(o.lr), f"optimizer.lr must be > 0 (got {o.lr})")
    _check(o.weight_decay >= 0, f"optimizer.weight_decay must be >= 0 (got {o.weight_decay})")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
           f"optimizer.betas must be two values in [0, 1) (got {list(o.betas)})")
    _check(o.layer_decay is None or 0 < o.layer_decay <= 1,
           f"optimizer.layer_decay must be in (0, 1] or null (got {o.layer_decay})")
    _check(0 <= o.momentum < 1, f"optimizer.momentum must be in [0, 1) (got {o.momentum})")

    _check(s.warmup_epochs >= 0, f"scheduler.warmup_epochs must be >= 0 (got {s.warmup_epochs})")
    _check(0 < s.warmup_start_factor <= 1,
           f"scheduler.warmup_start_factor must be in (0, 1] (got {s.warmup_start_factor})")
    _check(0 <= s.min_lr_factor <= 1, f"scheduler.min_lr_factor must be in [0, 1] (got {s.min_lr_factor})")
    _check(s.decay_epochs > 0, f"scheduler.decay_epochs must be > 0 (got {s.decay_epochs})")
    _check(0 < s.decay_rate <= 1, f"scheduler.decay_rate must be in (0, 1] (got {s.decay_rate})")
    _check(0 < s.pct_start < 1, f"scheduler.pct_start must be in (0, 1) (got {s.pct_start})")

    _check(0 <= t.label_smoothing < 1, f"train.label_smoothing must be in [0, 1) (got {t.label_smoothing})")
    _check(t.grad_clip is None or t.grad_clip > 0, f"train.grad_clip must be > 0 or null (got {t.grad_clip})")
    _check(t.accumulate >= 1, f"train.accumulate must be >= 1 (got {t.accumulate})")
    _check(t.ema.decay is None or 0 < t.ema.decay < 1, f"train.ema.decay must be in (0, 1) or null (got {t.ema.decay})")
    _check(t.max_steps_per_epoch is None or t.max_steps_per_epoch >= 1,
           f"train.max_steps_per_epoch must be >= 1 or null (got {t.max_steps_per_epoch})")
    for key in ("overfit_batches", "limit_eval_batches"):
        value = getattr(t, key)
        _check(value is None or value >= 1, f"train.{key} must be >= 1 or null (got {value})")
    _check(cfg.log.interval >= 1, f"log.interval must be >= 1 (got {cfg.log.interval})")
    b = cfg.benchmark
    _check(b.warmup_steps >= 0, f"benchmark.warmup_steps must be >= 0 (got {b.warmup_steps})")
    _check(b.steps >= 1, f"benchmark.steps must be >= 1 (got {b.steps})")
    _check(b.batch_size is None or b.batch_size >= 1, f"benchmark.batch_size must be >= 1 or null (got {b.batch_size})")
    es = t.early_stopping
    _check(es.patience is None or es.patience >= 1,
           f"train.early_stopping.patience must be >= 1 or null (got {es.patience})")
    _check(es.min_delta >= 0, f"train.early_stopping.min_delta must be >= 0 (got {es.min_delta})")
    _check(not (t.compile_optimizer and plain(t.precision) == "fp16"),
           "train.compile_optimizer does not work with train.precision=fp16 (its GradScaler decides on the host "
           "whether to skip each step): use bf16, or leave the optimizer step eager")
    _check(t.time_limit_min is None or t.time_limit_min > 0,
           f"train.time_limit_min must be > 0 or null (got {t.time_limit_min})")
