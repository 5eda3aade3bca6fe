"""The `data` config group's schema: every data.* key, its type and default, and the checks of
the keys every source reads (registry.data_problem adds the source's own).

Keys of one source (webdataset's urls, huggingface's path, csv's tables) stay flat in data.*,
where users type them, but only that source checks them (swin_cli/data/registry.py). Imported by
swin_cli/config/, so it imports nothing of swin-cli but swin_cli.choices and nothing heavy:
`swin-train --help` must not pay for torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

# plain is imported from here by the rest of the data package.
from swin_cli.choices import choices, plain
from swin_cli.sizes import hw, longer_side, size_problem

__all__ = ["MULTILABEL_SOURCES", "DataConfig", "Interpolation", "Layout", "Sampler", "Storage", "Task", "TrainCrop",
           "first_problem", "plain", "shared_problem"]

# memory: decode once into a uint8 tensor (fastest for sets that fit); stream: decode while
# training in worker processes; auto: see swin_cli/data/storage.py choose_storage.
Storage = choices("Storage", "auto", "memory", "stream")
TrainCrop = choices("TrainCrop", "auto", "resize", "random_resized")
Interpolation = choices("Interpolation", "bilinear", "bicubic")
# An image folder's layout: splits (root/train/<class>/, root/test/<class>/, optional val/) or
# classes (root/<class>/, torchvision's ImageFolder: val and test held out by fractions).
Layout = choices("Layout", "splits", "classes")
# Each epoch's training order: uniform (a permutation of the split) or class_balanced (draws with
# replacement, each image with probability proportional to 1 / its class's count).
Sampler = choices("Sampler", "uniform", "class_balanced")
# single: one class per image (int64 labels). multilabel: a set of classes per image (multi-hot
# uint8 labels, (N, classes)), from the sources whose rows can hold several labels.
Task = choices("Task", "single", "multilabel")
MULTILABEL_SOURCES = ("csv", "huggingface")


@dataclass
class DataConfig:
    # A source of swin_cli/data/registry.py (checked at start-up, the allowed ones named).
    name: str = MISSING
    # Where the data lives (imagefolder: a folder with train/ and test/, optional val/;
    # cifar: where torchvision keeps or downloads it; csv: what relative image paths are
    # relative to). None means the source's default.
    root: Optional[str] = None
    # The size images are trained at: one side for a square, or [H, W] for any box. null: the
    # source decides once it is open (swin_cli/data/auto.py): an image set its files' own size
    # (all alike) or their median shorter side, within the model's range; digits and CIFAR 32,
    # as they always trained. (Any: OmegaConf types cannot say "an int or a pair of ints";
    # shared_problem checks it.)
    image_size: Optional[Any] = None
    # data=imagefolder: splits (train/ and test/ folders) or classes (root/<class>/ only).
    layout: Layout = Layout.splits
    # Channels fed to the model; None keeps the source's own (1 for digits, 3 for RGB).
    channels: Optional[int] = None
    # Held-out part of train used for validation when the source has no val split.
    val_fraction: float = 0.1
    # data.layout=classes: the part of each class held out as the test split.
    test_fraction: float = 0.1
    split_seed: int = 0
    # data.layout=classes: a split.json a run wrote (<run dir>/split.json), to train on the same
    # split again; null: draw it from split_seed and the fractions.
    split_file: Optional[str] = None
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
    # uniform: every image once per epoch, in a fresh order. class_balanced: the epoch's len(train)
    # images are drawn with replacement so that every class is equally likely (imbalanced data;
    # swin_cli/imbalance.py), the same order on every rank, in both storages.
    sampler: Sampler = Sampler.uniform
    # Decoded images are cached here as uint8 tensors so later runs skip JPEG decoding.
    cache_dir: str = "~/.cache/swin-cli"
    # On a GPU, hold the decoded uint8 images in GPU memory when they take at most half of the
    # free memory (CIFAR-10: 184 MB), so batches never cross from the host.
    on_device: bool = True
    # Per-channel normalisation; None computes it from the training split.
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    # data=huggingface: a folder written by datasets' save_to_disk, a folder of parquet files, or
    # a hub name (needs the network, or its copy in the datasets cache with HF_HUB_OFFLINE=1).
    path: Optional[str] = None
    # data=huggingface and data=csv: the columns holding the image and the label (each source's
    # yaml sets its own default image column: huggingface `image`, csv `path`).
    image_column: str = "image"
    label_column: str = "label"
    # single or multilabel (data=csv or data=huggingface): see Task above.
    task: Task = Task.single
    # data=csv with data.task=multilabel: what separates the labels of one cell ("cat dog", as in
    # Planet's Amazon tags); an empty cell is an image with no labels.
    label_separator: str = " "
    # data=csv: tables of path,label rows (a CSV file with a header, or .jsonl objects). Image
    # paths are absolute, or relative to data.root when set, else to the table's folder.
    # test_table may be left out when val_table is given (the final test is then on it, and
    # validation holds out data.val_fraction of train).
    train_table: Optional[str] = None
    val_table: Optional[str] = None
    test_table: Optional[str] = None
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


def first_problem(*checks: tuple[bool, str]) -> Optional[str]:
    """The message of the first (ok, message) check that is not ok, or None."""
    return next((message for ok, message in checks if not ok), None)


def _longer_side_of(size: Any) -> str:
    """How the prepare_side check names the size it must cover (evaluated for every config)."""
    side = longer_side(size)
    if not side or hw(size)[0] == hw(size)[1]:
        return f"data.image_size={side}"
    return f"{side}, the longer side of data.image_size"


def shared_problem(d: DataConfig) -> Optional[str]:
    """What is wrong with the keys every source reads, in one line naming the key, or None."""
    return first_problem(
        (d.channels is None or d.channels in (1, 3), f"data.channels must be 1, 3 or null (got {d.channels})"),
        (d.image_size is None or size_problem(d.image_size, "data.image_size") is None,
         size_problem(d.image_size, "data.image_size")),
        (0.0 <= d.val_fraction < 1.0, f"data.val_fraction must be in [0, 1) (got {d.val_fraction})"),
        (0.0 <= d.test_fraction < 1.0, f"data.test_fraction must be in [0, 1) (got {d.test_fraction})"),
        (d.batch_size >= 1, f"data.batch_size must be >= 1 (got {d.batch_size})"),
        (d.eval_batch_size is None or d.eval_batch_size >= 1,
         f"data.eval_batch_size must be >= 1 or null (got {d.eval_batch_size})"),
        (d.memory_budget_gb is None or d.memory_budget_gb >= 0,
         f"data.memory_budget_gb must be >= 0 or null (got {d.memory_budget_gb})"),
        (d.crop_pct is None or 0 < d.crop_pct <= 1, f"data.crop_pct must be in (0, 1] or null (got {d.crop_pct})"),
        (len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
         f"data.crop_scale must be [low, high] with 0 < low <= high <= 1 (got {list(d.crop_scale)})"),
        (len(d.crop_ratio) == 2 and 0 < d.crop_ratio[0] <= d.crop_ratio[1],
         f"data.crop_ratio must be [low, high] with 0 < low <= high (got {list(d.crop_ratio)})"),
        (d.workers is None or d.workers >= 0, f"data.workers must be >= 0 or null (got {d.workers})"),
        (d.prefetch >= 1, f"data.prefetch must be >= 1 (got {d.prefetch})"),
        (d.stats_images >= 1, f"data.stats_images must be >= 1 (got {d.stats_images})"),
        (d.repeats >= 1, f"data.repeats must be >= 1 (got {d.repeats})"),
        (d.task == "single" or d.name in MULTILABEL_SOURCES,
         f"data.task=multilabel needs a source whose rows hold several labels: "
         f"data={' or data='.join(MULTILABEL_SOURCES)} (got data={d.name})"),
        (bool(d.label_separator), "data.label_separator must not be empty (the default is a space)"),
        (not (d.sampler == "class_balanced" and d.name == "webdataset"),
         "data.sampler=class_balanced needs random access to the images: use uniform with data=webdataset"),
        (d.prepare_side is None or d.prepare_side >= longer_side(d.image_size),
         f"data.prepare_side must be >= {_longer_side_of(d.image_size)} or null (got {d.prepare_side})"),
        (not (d.storage == "memory" and d.train_crop == "random_resized"),
         "data.train_crop=random_resized needs each image at its own resolution: use data.storage=stream (or auto)"),
        *((value is None or len(value) in (1, 3), f"data.{key} must list 1 or 3 values (got {value})")
          for key, value in (("mean", d.mean), ("std", d.std))),
        (d.std is None or all(v > 0 for v in d.std), f"data.std values must be > 0 (got {d.std})"),
    )
