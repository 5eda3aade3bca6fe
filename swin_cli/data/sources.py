"""Where images come from: digits (offline), CIFAR-10/100 (torchvision), image folders.

A source returns its splits either as tensors already in memory (digits, CIFAR: small, square,
fixed-size) or as `Samples`, a random-access list of encoded images with labels, that a
storage then decodes once into memory or while training (swin_cli/data/storage.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Union

import numpy as np
import torch

from swin_cli.data.decode import IMAGE_EXTENSIONS, ImageInput, guess_channels
from swin_cli.data.splits import ImageSplit
from swin_cli.errors import SwinCliError

log = logging.getLogger(__name__)


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


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images N x 8 x 8 of 0..16 counts, labels). Read straight from the
    CSV that scikit-learn bundles where it can be found: importing sklearn (and with it scipy)
    takes longer than a tiny model's whole run, and digits is the default data set."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if bundled.is_file():
            table = np.loadtxt(bundled, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return digits.images, digits.target.astype(np.int64)


def load_digits() -> SourceData:
    images, labels = digits_arrays()
    # Pixel values are 0..16 counts; spread them over the uint8 range.
    images = torch.from_numpy(np.rint(images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    whole = ImageSplit(images, torch.from_numpy(labels))
    # sklearn ships no test split: a fixed 20% of the set, independent of data.split_seed so
    # that test accuracy is comparable across runs with different validation splits.
    kept, held = hold_out_order(len(whole), 0.2, seed=1234)
    return SourceData(whole.subset(kept), None, whole.subset(held), [str(d) for d in range(10)], 1,
                      where="scikit-learn digits")


def load_cifar(name: str, cfg: Any) -> SourceData:
    from torchvision import datasets

    dataset_cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = Path(os.path.expanduser(cfg.root or os.path.join(cfg.cache_dir, name)))
    pretty = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    splits = []
    for is_train in (True, False):
        try:
            ds = dataset_cls(str(root), train=is_train, download=cfg.download)
        except Exception as exc:  # URLError, checksum RuntimeError, OSError...
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"could not {'download' if cfg.download else 'find'} {pretty} in {root} ({reason}); "
                f"point data.root at a folder that holds the extracted torchvision copy, "
                f"or use data=imagefolder data.root=/path/to/images"
            ) from None
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        splits.append(ImageSplit(images, torch.tensor(ds.targets, dtype=torch.int64)))
    return SourceData(splits[0], None, splits[1], list(ds.classes), 3, where=f"{pretty} in {root}")


# ---------------------------------------------------------------------------- image folders


def list_classes(split_dir: Path) -> dict[str, list[Path]]:
    """Class folder name -> its image files (searched recursively), both sorted."""
    classes = {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in class_dir.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        classes[class_dir.name] = files
    return classes


def _scan_split(root: Path, split: str, required: bool) -> Optional[dict[str, list[Path]]]:
    split_dir = root / split
    if not split_dir.is_dir():
        if required:
            raise DataError(f"data.root={root} has no {split}/ folder (expected {root}/{split}/<class>/<images>)")
        return None
    classes = list_classes(split_dir)
    if not classes:
        raise DataError(f"{split_dir} has no class folders (expected {split_dir}/<class>/<images>)")
    empty = [c for c, files in classes.items() if not files]
    if empty:
        raise DataError(f"{split_dir} has class folders with no images: {', '.join(empty[:5])}")
    return classes


def _samples(scan: dict[str, list[Path]], where: Path) -> FileSamples:
    pairs = [(str(f), label) for label, files in enumerate(scan.values()) for f in files]
    return FileSamples([p for p, _ in pairs], [lbl for _, lbl in pairs], str(where))


def load_imagefolder(cfg: Any) -> SourceData:
    root = Path(os.path.expanduser(cfg.root))
    if not root.is_dir():
        raise DataError(f"data.root={cfg.root} does not exist or is not a folder")
    scans = {s: _scan_split(root, s, required=s == "train") for s in ("train", "val", "test")}
    if scans["test"] is None:
        if scans["val"] is None:
            raise DataError(f"data.root={root} has no test/ folder (nor a val/ one to test on); "
                            f"expected {root}/test/<class>/<images>")
        log.info(f"data: {root} has no test/ folder, so the final test is on val/ "
                 f"(validation holds out data.val_fraction of train instead)")
    classes = list(scans["train"])
    for split in ("val", "test"):
        if scans[split] is not None and list(scans[split]) != classes:
            theirs = set(scans[split])
            detail = (f"missing {sorted(set(classes) - theirs)[:5]}" if set(classes) - theirs
                      else f"extra {sorted(theirs - set(classes))[:5]}")
            raise DataError(f"{root}/{split} and {root}/train have different classes ({detail})")
    samples = {s: _samples(scans[s], root / s) if scans[s] is not None else None for s in scans}
    channels = guess_channels(samples["train"].read(0))
    if samples["test"] is None:  # train/ and val/ only: val/ becomes the test split
        return SourceData(samples["train"], None, samples["val"], classes, channels, "val", where=str(root))
    return SourceData(samples["train"], samples["val"], samples["test"], classes, channels, where=str(root))
