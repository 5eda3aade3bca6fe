"""data=imagefolder: a folder of images laid out as root/train/<class>/*, root/test/<class>/* and
optionally root/val/<class>/* (data.layout=splits); classes are the sorted folder names. Without
test/, the final test is on val/ and validation is held out of train.

data.layout=classes reads root/<class>/* (torchvision's ImageFolder) and holds val and test out
of each class (class_split.py), the split recorded for <run dir>/split.json."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from swin_cli.data import class_split
from swin_cli.data.decode import IMAGE_EXTENSIONS, guess_channels
from swin_cli.data.schema import plain
from swin_cli.data.sources import DataError, FileSamples, SourceData, first_of_each_class

log = logging.getLogger(__name__)


def problem(cfg: Any) -> Optional[str]:
    if cfg.root is None:
        return "data=imagefolder needs data.root=/path/with/train_and_test_folders (or data.layout=classes)"
    if plain(cfg.layout) == "classes" and cfg.val_fraction + cfg.test_fraction >= 1.0:
        return (f"data.val_fraction + data.test_fraction must be < 1, leaving images to train on "
                f"(got {cfg.val_fraction} + {cfg.test_fraction})")
    if cfg.split_file is not None and plain(cfg.layout) != "classes":
        return "data.split_file is a split of data.layout=classes: add data.layout=classes"
    return None


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
            hint = ("; it holds class folders: add data.layout=classes to hold val and test out of them"
                    if list_classes(root) else "")
            raise DataError(f"data.root={root} has no {split}/ folder (expected {root}/{split}/<class>/<images>){hint}")
        return None
    classes = list_classes(split_dir)
    if not classes:
        raise DataError(f"{split_dir} has no class folders (expected {split_dir}/<class>/<images>)")
    empty = [c for c, files in classes.items() if not files]
    if empty:
        raise DataError(f"{split_dir} has class folders with no images: {', '.join(empty[:5])}")
    return classes


def _scan_classes(root: Path) -> dict[str, list[Path]]:
    """data.layout=classes: root's class folders, each with images."""
    classes = list_classes(root)
    if not classes:
        raise DataError(f"data.root={root} has no class folders (data.layout=classes expects {root}/<class>/<images>)")
    empty = [c for c, files in classes.items() if not files]
    if empty:
        raise DataError(f"{root} has class folders with no images: {', '.join(empty[:5])}")
    return classes


def _samples(scan: dict[str, list[Path]], where: Path) -> FileSamples:
    pairs = [(str(f), label) for label, files in enumerate(scan.values()) for f in files]
    return FileSamples([p for p, _ in pairs], [lbl for _, lbl in pairs], str(where))


def load(cfg: Any) -> SourceData:
    root = Path(os.path.expanduser(cfg.root))
    if not root.is_dir():
        raise DataError(f"data.root={cfg.root} does not exist or is not a folder")
    if plain(cfg.get("layout") or "splits") == "classes":
        return class_split.load(cfg, root, _scan_classes(root))
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


def class_count(cfg: Any) -> tuple[Optional[int], str]:
    """The class folders under root/train/ (root/ for data.layout=classes), without reading an
    image (benchmark's shapes)."""
    train = Path(str(cfg.root or "")).expanduser()
    train = train if plain(cfg.get("layout") or "splits") == "classes" else train / "train"
    found = [p.name for p in train.iterdir() if p.is_dir()] if train.is_dir() else []
    return (len(found), "") if found else (None, f"no class folders under {train}")


def first_images(cfg: Any, view: Callable, count: int) -> tuple[torch.Tensor, str]:
    """The first images of test/ (else val/, else train/), one class after another, decoded
    directly: no pass over the whole data set for a handful of images."""
    root = Path(os.path.expanduser(str(cfg.get("root") or "")))
    split = next((root / s for s in ("test", "val", "train") if (root / s).is_dir()), None)
    if split is None and plain(cfg.get("layout") or "splits") == "classes":
        split = root  # the first of each class: any of them, as the split itself is not at hand
    if split is None:
        raise FileNotFoundError(f"no test/, val/ or train/ folder under {root}")
    decoded = first_of_each_class(_samples(list_classes(split), split), view, count)
    if not decoded:
        return torch.empty(0, view.channels, view.size, view.size, dtype=torch.uint8), str(split)
    return torch.from_numpy(np.stack(decoded)), f"images of {split}"
