"""Data: sources (what the images are), storages (memory or stream), views, and the one batch
interface the rest of swin-cli reads. Everything outside this package imports from here.

    schema.py      the data config group (DataConfig), the checks every source shares; no torch
    registry.py    every source, one line each: how it loads, its storages, its own checks
    sources.py     what a source hands the storages: tensors, or random-access `Samples`
    digits.py, cifar.py, imagefolder.py, csv_table.py, huggingface.py, webdataset.py: the sources
    decode.py      file or bytes -> 8-bit L/RGB pixels (every PIL mode scaled right)
    transforms.py  random resized crop, centre crop, squash; JPEG draft decoding; batch resize
    views.py       which of those a config asks for, in training and in evaluation
    memory.py      decode once into one uint8 tensor, cached on disk
    stream.py      decode while training in worker processes, deterministic per sample
    prepared.py    the resized shard copy a stream reads (data.prepare)
    loader.py      the worker processes both streams use; a dead worker as one line
    splits.py      the batch interface (ImageSplit in memory), epoch order
    stats.py       per-channel mean/std in bounded memory
    storage.py     which storage a config gets; load_data
    auto.py        what data.image_size=null and aug=auto become once the source is open
    class_split.py an image folder of root/<class>/ split by fractions (data.layout=classes)
    glance.py      a data set's shape and a few test images without loading it
    debug.py       the smaller data of debug runs

The names below are imported on first use, not with the package: swin_cli/config imports
the schema, and `swin-train --help` must not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each public name and the module that defines it.
_HOMES = {
    "DataConfig": "schema",
    "SOURCES": "registry", "Source": "registry", "data_problem": "registry", "data_source": "registry",
    "DataError": "sources", "FileSamples": "sources", "Samples": "sources", "SourceData": "sources",
    "list_classes": "imagefolder",
    "IMAGE_EXTENSIONS": "decode", "guess_channels": "decode", "open_image": "decode", "to_mode": "decode",
    "CenterCrop": "transforms", "RandomResizedCrop": "transforms", "Squash": "transforms",
    "crop_pct": "views", "eval_transform": "views", "train_crop": "views",
    "LoaderDied": "loader", "loader_death": "loader",
    "StreamSplit": "stream",
    "Batch": "splits", "EpochPlan": "splits", "ImageSplit": "splits", "Split": "splits", "epoch_order": "splits",
    "step_seed": "splits",
    "channel_stats": "stats",
    "DataBundle": "storage", "eval_batch_size": "storage", "load_data": "storage", "place_data": "storage",
    "Settled": "auto", "settle_auto": "auto",
    "data_shape": "glance", "first_test_images": "glance",
    "debug_subset": "debug",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
