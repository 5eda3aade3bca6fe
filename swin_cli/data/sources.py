"""What every source hands the storages: its splits as tensors already in memory (digits, CIFAR:
small, square, fixed-size) or as `Samples`, a random-access list of encoded images with labels,
that a storage then decodes once into memory or while training (swin_cli/data/storage.py).

The sources themselves are one module each (digits.py, cifar.py, imagefolder.py, csv_table.py,
huggingface.py, webdataset.py), listed in registry.py.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence, Union

import numpy as np
import torch

from swin_cli.data.decode import ImageInput
from swin_cli.data.splits import ImageSplit
from swin_cli.errors import SwinCliError


class DataError(SwinCliError):
    pass


# A sample's label: its class index, or with data.task=multilabel the sorted tuple of its classes'
# indices (empty: an image with no labels).
Label = Union[int, tuple[int, ...]]


def multi_hot(label_sets: Sequence[tuple[int, ...]], num_classes: int) -> torch.Tensor:
    """uint8 (N, num_classes): row i has a 1 at each class of label_sets[i]."""
    rows = torch.zeros(len(label_sets), num_classes, dtype=torch.uint8)
    # One scatter, not a loop over rows: a table of a million rows is made in a blink.
    sizes = torch.tensor([len(classes) for classes in label_sets], dtype=torch.int64)
    columns = torch.tensor([c for classes in label_sets for c in classes], dtype=torch.int64)
    rows[torch.repeat_interleave(torch.arange(len(label_sets)), sizes), columns] = 1
    return rows


def label_tensor(labels: Sequence[Label], multilabel_classes: int = 0) -> torch.Tensor:
    """A split's labels as the trainer gets them: int64 (N,) class indices, or with
    multilabel_classes > 0 (data.task=multilabel) the uint8 multi-hot rows (N, multilabel_classes)."""
    if multilabel_classes:
        return multi_hot(labels, multilabel_classes)  # type: ignore[arg-type]
    return torch.as_tensor(labels, dtype=torch.int64)


class Samples(Protocol):
    """Random access to a split's encoded images: what a storage decodes."""

    labels: list[Label]
    # 0: one class per sample; else data.task=multilabel and this is the class count of the
    # samples' multi-hot rows (label_tensor).
    multilabel_classes: int

    def __len__(self) -> int: ...

    def read(self, i: int) -> ImageInput:
        """Sample i as a path, encoded bytes or a PIL image; may raise for a bad file."""

    def name(self, i: int) -> str:
        """Sample i for a warning: its file path or its place in the data set."""


@dataclass
class FileSamples:
    """Image files on disk, one label (or with data.task=multilabel one label set) each."""

    paths: list[str]
    labels: list[Label]
    where: str = ""  # the folder, for messages
    multilabel_classes: int = 0  # see Samples

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> str:
        return self.paths[i]

    def name(self, i: int) -> str:
        return self.paths[i]

    def fingerprint(self, settings: str) -> str:
        """A short key for what a cache built from these files holds: every file's path, label,
        size and mtime, and the `settings` that made it; any edit to the folder changes it."""
        # Multi-hot rows are as wide as the class count, which the labels alone do not fix.
        multilabel = f"|multilabel {self.multilabel_classes}" if self.multilabel_classes else ""
        h = hashlib.sha1(f"{settings}|{self.where}{multilabel}".encode())
        for path, label in zip(self.paths, self.labels):
            st = os.stat(path)
            h.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:20]

    def subset(self, index: list[int]) -> "FileSamples":
        return FileSamples([self.paths[i] for i in index], [self.labels[i] for i in index], self.where,
                           self.multilabel_classes)


SplitSource = Union[ImageSplit, Any]  # an ImageSplit in memory, or Samples


@dataclass
class SourceData:
    """A source's splits before storage. val is None when validation must be held out of train."""

    train: SplitSource
    val: Optional[SplitSource]
    test: SplitSource
    classes: list[str]
    channels: int  # the source's own channel count
    test_source: str = "test"  # "val" for an image folder tested on its val/ folder
    where: str = ""  # what the data is, for the start panel and eval.json
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = "single"  # or "multilabel": the samples' labels are label sets (data.task)


def hold_out_order(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) indices: a fixed random `fraction` of n (same seed, same split), each sorted.
    Not stratified by label, so it serves multi-label rows (data.task=multilabel) as it is."""
    n_val = int(round(n * fraction))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:].sort().values, order[:n_val].sort().values


def first_of_each_class(samples: FileSamples, view: Callable, count: int) -> list[np.ndarray]:
    """Up to `count` images of `samples` through `view`: the first of each class (by label; a
    multi-label row by its first label, () for none), then the second of each, ...; unreadable
    ones passed over. A handful of images without a pass over the split (the export check)."""
    by_class: dict[Any, list[str]] = {}
    for path, label in zip(samples.paths, samples.labels):
        key = label[:1] if isinstance(label, tuple) else label
        by_class.setdefault(key, []).append(path)
    per_class = [by_class[label] for label in sorted(by_class)]
    decoded: list[np.ndarray] = []
    for rank in range(max(map(len, per_class), default=0)):
        for paths in per_class:
            if rank < len(paths) and len(decoded) < count:
                try:
                    decoded.append(view(paths[rank]))
                except Exception:  # an unreadable file: the next one
                    pass
        if len(decoded) >= count:
            break
    return decoded
