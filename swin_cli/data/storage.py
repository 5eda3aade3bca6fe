"""From a source's splits to the splits a run trains on: which storage (memory or stream), the
validation hold-out and the normalisation statistics. What a source is comes from registry.py,
the views of an image file from views.py."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from swin_cli.data.loader import loader_settings
from swin_cli.data.memory import DecodeCache
from swin_cli.data.prepared import prepare
from swin_cli.data.registry import Source, data_source
from swin_cli.data.schema import plain
from swin_cli.data.sources import DataError, SourceData, hold_out_order, label_tensor
from swin_cli.data.splits import ImageSplit, Split
from swin_cli.data.stats import channel_stats_of
from swin_cli.data.stream import StreamSplit
from swin_cli.data.transforms import resized_uint8
from swin_cli.data.views import image_views, train_crop
from swin_cli.distributed import computed_once
from swin_cli.sizes import area, hw, size_text
from swin_cli.text import plural

log = logging.getLogger(__name__)


@dataclass
class DataBundle:
    train: Split
    val: Split  # may be empty (data.val_fraction=0 and no val folder)
    test: Split
    classes: list[str]
    mean: list[float]
    std: list[float]
    channels: int
    # Which split the test split came from: "test", or "val" for a source without a test split
    # (an image folder without test/, a csv source without data.test_table, ...).
    test_source: str = "test"
    storage: str = "memory"
    storage_reason: str = ""
    where: str = ""  # the data set, for the panel, results.json and eval.json
    # What data.image_size=null and aug=auto became and why (swin_cli/data/auto.py), for the panel.
    settled: dict[str, str] = field(default_factory=dict)
    # "single": labels are int64 class indices (N,); "multilabel" (data.task): every split's
    # labels, in memory and in batches, are uint8 multi-hot rows (N, num_classes).
    task: str = "single"

    @property
    def in_chans(self) -> int:
        return self.channels

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def skipped(self) -> list[str]:
        return [name for split in (self.train, self.val, self.test) for name in split.skipped]

    def sizes(self) -> str:
        test = "test" if self.test_source == "test" else f"test (the {self.test_source}/ folder)"
        return f"train {len(self.train):,} / val {len(self.val):,} / {test} {len(self.test):,}"


def eval_batch_size(cfg: Any) -> int:
    """data.eval_batch_size, or 512 images up to 64 px and fewer for larger ones (the same
    pixels per batch), never fewer than the training batch."""
    if cfg.eval_batch_size is not None:
        return cfg.eval_batch_size
    return max(cfg.batch_size, min(512, int(512 * 64**2 / area(cfg.image_size))))


def memory_budget_bytes(cfg: Any) -> int:
    """data.memory_budget_gb, or a quarter of the machine's memory."""
    if cfg.memory_budget_gb is not None:
        return int(cfg.memory_budget_gb * 2**30)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def choose_storage(cfg: Any, entry: Source, source: SourceData, channels: int) -> tuple[str, str]:
    """(memory or stream, why), for the start panel."""
    requested, name = plain(cfg.storage), plain(cfg.name)
    if entry.held_by_reader:
        return "memory", f"data={name} is held in memory by its reader"
    if entry.streams_itself:
        return "stream", f"data={name} is read as it streams"
    n = len(source.train) + len(source.test) + (len(source.val) if source.val is not None else 0)
    decoded = n * channels * area(cfg.image_size)
    size = f"{plural(n, 'image')}, {decoded / 2**30:.2f} GiB decoded at {size_text(cfg.image_size)}"
    if requested != "auto":
        return requested, f"data.storage={requested} ({size})"
    if train_crop(cfg) == "random_resized":
        return "stream", f"the random resized crop reads each image at its own resolution ({size})"
    budget = memory_budget_bytes(cfg)
    if decoded > budget:
        return "stream", f"{size}, over data.memory_budget_gb={budget / 2**30:.1f}"
    return "memory", f"{size}, within data.memory_budget_gb={budget / 2**30:.1f}"


def load_data(cfg: Any, device: Optional[torch.device] = None, statistics: bool = True,
              settled: Optional[Any] = None) -> DataBundle:
    """The train/val/test splits described by the `data` config group. statistics=False skips
    the mean/std pass of a streamed split (mode=summary needs only sizes), reporting 0.5/0.25.
    `settled`: settle_auto's (the source it opened, its notes); without it a null
    data.image_size is settled here, in `cfg`, from the source just opened."""
    from swin_cli.data.auto import settle_image_size

    entry = data_source(plain(cfg.name))
    source = settled.source if settled is not None and settled.source is not None else entry.load(cfg)
    notes = dict(settled.notes) if settled is not None else {}
    if cfg.image_size is None:
        notes["size"] = settle_image_size(cfg, entry, source)
    channels = cfg.channels or source.channels
    storage, reason = choose_storage(cfg, entry, source, channels)
    if storage == "memory" and not entry.held_by_reader and train_crop(cfg) == "random_resized":
        raise DataError("data.train_crop=random_resized needs each image at its own resolution: "
                        "use data.storage=stream (or auto)")
    if storage == "memory":
        train, val, test = _memory_splits(cfg, source, channels)
    elif entry.streams_itself:
        train, val, test = source.train, source.val, source.test
    else:
        train, val, test = _stream_splits(cfg, source, channels, device or torch.device("cpu"))
    for split_name, split in (("train", train), ("test", test)):
        if len(split) == 0:
            raise DataError(f"the {split_name} split of data={plain(cfg.name)} is empty")
    if cfg.mean and cfg.std:
        mean, std = list(cfg.mean), list(cfg.std)
    elif statistics or storage == "memory":  # in memory the statistics are exact and cheap
        # Under torchrun rank 0 reads the sample and the others receive its answer (the same).
        mean, std = computed_once(lambda: _channel_stats(cfg, train, channels))
    else:
        mean, std = [0.5] * channels, [0.25] * channels
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"data.mean/data.std have {len(mean)}/{len(std)} values for {channels}-channel images")
    return DataBundle(train, val, test, source.classes, mean, std, channels, source.test_source, storage, reason,
                      source.where, notes, source.task)


def _channel_stats(cfg: Any, train: Any, channels: int) -> tuple[list[float], list[float]]:
    sample = train.stats_sample(min(cfg.stats_images, len(train)), cfg.split_seed)
    return channel_stats_of((images for images, _ in sample), channels)


def _memory_splits(cfg: Any, source: SourceData, channels: int) -> tuple[ImageSplit, ImageSplit, ImageSplit]:
    size = cfg.image_size
    if isinstance(source.train, ImageSplit):  # digits, CIFAR: already tensors
        train, test = _fit(source.train, size, channels), _fit(source.test, size, channels)
        if source.val is None:
            kept, held = hold_out_order(len(train), cfg.val_fraction, cfg.split_seed)
            return train.subset(kept), train.subset(held), test
        return train, _fit(source.val, size, channels), test
    training, evaluation = image_views(cfg, channels)
    cache = DecodeCache(Path(os.path.expanduser(cfg.cache_dir)))
    train_samples, val_samples = _hold_out_samples(cfg, source)
    named = split_names(source)
    train = cache.load(train_samples, training, named["train"])
    val = (cache.load(val_samples, evaluation, named["val"]) if len(val_samples)
           else _empty(channels, size, getattr(val_samples, "multilabel_classes", 0)))
    test = cache.load(source.test, evaluation, named["test"])
    return train, val, test


def _stream_splits(cfg: Any, source: SourceData, channels: int, device: torch.device) -> tuple[Any, Any, Any]:
    training, evaluation = image_views(cfg, channels)
    settings = loader_settings(cfg, device)
    if cfg.prepare:
        source = _prepared(cfg, source)
    train_samples, val_samples = _hold_out_samples(cfg, source)
    named = split_names(source)
    train = StreamSplit(train_samples, training, channels, seed=cfg.split_seed, where=named["train"],
                        eval_transform=evaluation, **settings)
    val = StreamSplit(val_samples, evaluation, channels, where=named["val"], **settings)
    test = StreamSplit(source.test, evaluation, channels, where=named["test"], **settings)
    return train, val, test


def _prepared(cfg: Any, source: SourceData) -> SourceData:
    side = cfg.prepare_side or int(round(1.15 * max(hw(cfg.image_size))))
    cache = Path(os.path.expanduser(cfg.cache_dir))

    def prepared(samples: Any, name: str) -> Any:
        return prepare(samples, side, cache, f"{source.where} {name}") if samples is not None else None

    return dataclasses.replace(source, train=prepared(source.train, "train"), val=prepared(source.val, "val"),
                               test=prepared(source.test, "test"))


def split_names(source: SourceData) -> dict[str, str]:
    """How the log names each split of `source`: distinct even when the val split is held out of
    the training files and the val/ folder is the test split (two "val"s otherwise)."""
    val = f"{source.where} val" if source.val is not None else f"{source.where} val (held out of train)"
    test = (f"{source.where} test" if source.test_source == "test"
            else f"{source.where} test (the {source.test_source}/ folder)")
    return {"train": f"{source.where} train", "val": val, "test": test}


def _hold_out_samples(cfg: Any, source: SourceData) -> tuple[Any, Any]:
    if source.val is not None:
        return source.train, source.val
    kept, held = hold_out_order(len(source.train), cfg.val_fraction, cfg.split_seed)
    return source.train.subset(kept.tolist()), source.train.subset(held.tolist())


def _empty(channels: int, size: Any, multilabel_classes: int = 0) -> ImageSplit:
    labels = label_tensor([], multilabel_classes)  # (0,) int64, or (0, classes) uint8 multi-hot
    return ImageSplit(torch.zeros(0, channels, *hw(size), dtype=torch.uint8), labels)


def _fit(split: ImageSplit, size: Any, channels: int) -> ImageSplit:
    """Resize to size (a side or [H, W]) and convert to the requested channel count."""
    size = hw(size)
    x = split.images
    if x.shape[1] != channels:
        if channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        else:  # ITU-R 601 luma, as PIL's convert("L") uses
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if tuple(x.shape[-2:]) != size and len(x):
        x = torch.cat([resized_uint8(x[i:i + 2048], size) for i in range(0, len(x), 2048)])
    return ImageSplit(x, split.labels)


def place_data(data: DataBundle, device: torch.device, on_device: bool) -> DataBundle:
    """On a GPU, move a memory-stored data set into GPU memory when `on_device` and it takes at
    most half of the free memory (CIFAR-10: 184 MB): a batch is then one gather on the GPU, with
    no host copy and no sync. Otherwise batches are gathered (or streamed) on the host."""
    if device.type != "cuda" or not on_device or data.storage != "memory":
        return data
    nbytes = sum(s.nbytes for s in (data.train, data.val, data.test))
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes > free // 2:
        log.info(f"data: {nbytes / 2**30:.1f} GiB stays in host memory "
                 f"(over half of the GPU's {free / 2**30:.1f} GiB free)")
        return data
    train, val, test = (s.to(device) for s in (data.train, data.val, data.test))
    return dataclasses.replace(data, train=train, val=val, test=test)
