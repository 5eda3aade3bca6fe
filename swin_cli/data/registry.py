"""Every data source, one line each: how it loads, what it reads as, and how its keys are checked.

A source is one module (its loader and the checks of its own data.* keys), one
conf/data/<name>.yaml and one line in SOURCES. What it reads as decides its storage:

    tensors  already decoded in memory by the library that reads it (digits, CIFAR): memory
             storage at its own size, no crops of image files
    files    random-access encoded images (`Samples`): memory or stream storage, decoded
             through the configured views
    shards   its own stream (`ShardSplit`): stream storage only, no random access
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from swin_cli.data import cifar, csv_table, digits, huggingface, imagefolder, webdataset
from swin_cli.data.schema import shared_problem
from swin_cli.data.sources import DataError, SourceData

TENSORS, FILES, SHARDS = "tensors", "files", "shards"


def _no_problem(cfg: Any) -> Optional[str]:
    return None


@dataclass(frozen=True)
class Source:
    """What the data package knows of a source: the line of SOURCES that names it."""

    load: Callable[[Any], SourceData]
    reads: str  # TENSORS, FILES or SHARDS
    # The source's own data.* keys: one line naming the key, or None.
    check: Callable[[Any], Optional[str]] = _no_problem
    # Known without loading (benchmark's shapes); None: 3 channels, and classes_of's count or 10.
    channels: Optional[int] = None
    classes: Optional[int] = None
    # (class count or None, why none) without decoding an image.
    classes_of: Optional[Callable[[Any], tuple[Optional[int], str]]] = None
    # (a few test images through an eval view, where from), decoded directly: the export check
    # needs no pass over the data. None: the first images of load_data's test split.
    first_images: Optional[Callable[[Any, Callable, int], tuple[Any, str]]] = None
    # (side, why) a source held by its reader trains at with data.image_size=null; None: the
    # side is read from the files (swin_cli/data/auto.py).
    default_size: Optional[tuple[int, str]] = None

    @property
    def held_by_reader(self) -> bool:
        return self.reads == TENSORS

    @property
    def streams_itself(self) -> bool:
        return self.reads == SHARDS

    @property
    def storages(self) -> tuple[str, ...]:
        return {TENSORS: ("memory",), FILES: ("memory", "stream"), SHARDS: ("stream",)}[self.reads]

    def problem(self, cfg: Any, name: str) -> Optional[str]:
        """What is wrong with `cfg` for this source, in one line, or None."""
        if self.held_by_reader and (cfg.storage == "stream" or cfg.train_crop == "random_resized"):
            files = ", ".join(n for n, s in SOURCES.items() if not s.held_by_reader)
            return (f"data={name} is held in memory at its own size: data.storage=stream and "
                    f"data.train_crop=random_resized are for image files (data={files})")
        if self.streams_itself and cfg.repeats != 1:
            return f"data.repeats needs random access to the images, which data={name} does not give"
        return self.check(cfg)


SOURCES: dict[str, Source] = {
    "digits": Source(digits.load, TENSORS, channels=1, classes=10,
                     default_size=(32, "the 8x8 digits upscaled, as data=digits has always trained")),
    "cifar10": Source(cifar.load_cifar10, TENSORS, channels=3, classes=10, default_size=(32, "CIFAR's own 32x32")),
    "cifar100": Source(cifar.load_cifar100, TENSORS, channels=3, classes=100,
                       default_size=(32, "CIFAR's own 32x32")),
    "imagefolder": Source(imagefolder.load, FILES, imagefolder.problem, classes_of=imagefolder.class_count,
                          first_images=imagefolder.first_images),
    "webdataset": Source(webdataset.load, SHARDS, webdataset.problem),
    "huggingface": Source(huggingface.load, FILES, huggingface.problem),
    "csv": Source(csv_table.load, FILES, csv_table.problem, classes_of=csv_table.class_count,
                  first_images=csv_table.first_images),
}


def data_source(name: Any) -> Source:
    """The registry entry of data=name; a DataError naming the sources for an unknown one (a
    checkpoint's, say: a config's name was checked at start-up)."""
    entry = SOURCES.get(name)
    if entry is None:
        raise DataError(f"unknown data source {name!r} (the sources: {', '.join(sorted(SOURCES))})")
    return entry


def data_problem(d: Any) -> Optional[str]:
    """What is wrong with a data config, in one line naming the key, or None: an unknown source,
    then the checks every source shares, then the source's own."""
    if d.name not in SOURCES:
        return f"data={d.name} is not a data source (the sources: {', '.join(sorted(SOURCES))})"
    return shared_problem(d) or SOURCES[d.name].problem(d, d.name)
