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
from typing import Any, Callable, Optional, Protocol, Union

import numpy as np
import torch

from swin_cli.data.decode import ImageInput
from swin_cli.data.splits import ImageSplit
from swin_cli.errors import SwinCliError


class DataError(SwinCliError):
    pass


class Samples(Protocol):
    """Random access to a split's encoded images: what a storage decodes."""

    labels: list[int]

    def __len__(self) -> int: ...

    def read(self, i: int) -> ImageInput:
        """Sample i as a path, encoded bytes or a PIL image; may raise for a bad file."""

    def name(self, i: int) -> str:
        """Sample i for a warning: its file path or its place in the data set."""


@dataclass
class FileSamples:
    """Image files on disk, one label each (an image folder's split)."""

    paths: list[str]
    labels: list[int]
    where: str = ""  # the folder, for messages

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> str:
        return self.paths[i]

    def name(self, i: int) -> str:
        return self.paths[i]

    def fingerprint(self, settings: str) -> str:
        """A short key for what a cache built from these files holds: every file's path, label,
        size and mtime, and the `settings` that made it; any edit to the folder changes it."""
        h = hashlib.sha1(f"{settings}|{self.where}".encode())
        for path, label in zip(self.paths, self.labels):
            st = os.stat(path)
            h.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:20]

    def subset(self, index: list[int]) -> "FileSamples":
        return FileSamples([self.paths[i] for i in index], [self.labels[i] for i in index], self.where)


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


def hold_out_order(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) indices: a fixed random `fraction` of n (same seed, same split), each sorted."""
    n_val = int(round(n * fraction))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:].sort().values, order[:n_val].sort().values


def first_of_each_class(samples: FileSamples, view: Callable, count: int) -> list[np.ndarray]:
    """Up to `count` images of `samples` through `view`: the first of each class (by label), then
    the second of each, ...; unreadable ones passed over. A handful of images without a pass over
    the split (the export check)."""
    by_class: dict[int, list[str]] = {}
    for path, label in zip(samples.paths, samples.labels):
        by_class.setdefault(label, []).append(path)
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
