"""data.layout=classes: one folder of root/<class>/<images> made into train, val and test, each
class split on its own (stratified) by data.val_fraction and data.test_fraction with a draw
seeded by data.split_seed; or the split a run wrote to its split.json, read back with
data.split_file. The split travels in SourceData.extra["split"], which auto.write_split puts in
the run dir: file paths relative to data.root, so the folder may move."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from swin_cli.data.sources import DataError, FileSamples, SourceData

SPLITS = ("train", "val", "test")


def held_out_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) images of a class of n: the fractions rounded, leaving at least one to train on."""
    n_test = min(int(round(n * test_fraction)), max(n - 1, 0))
    n_val = min(int(round(n * val_fraction)), max(n - 1 - n_test, 0))
    return n_val, n_test


def draw_split(scan: dict[str, list[Path]], root: Path, val_fraction: float, test_fraction: float,
               seed: int) -> dict[str, list[str]]:
    """Each split's files (relative to root, sorted): per class a seeded permutation, its first
    part the test images, the next the val images, the rest train."""
    parts: dict[str, list[str]] = {name: [] for name in SPLITS}
    for label, files in enumerate(scan.values()):
        # Each class draws from its own seed, so adding a class leaves the others' splits as they were.
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed * 1_000_003 + label)).tolist()
        n_val, n_test = held_out_counts(len(files), val_fraction, test_fraction)
        cuts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        for name, index in cuts.items():
            parts[name] += [files[i].relative_to(root).as_posix() for i in index]
    return {name: sorted(paths) for name, paths in parts.items()}


def read_split(path: str, root: Path) -> dict[str, Any]:
    """A split.json as a run wrote it, checked against root: one DataError line for what is off."""
    try:
        split = json.loads(Path(os.path.expanduser(path)).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"data.split_file={path} cannot be read as a split.json ({exc})") from None
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("classes", *SPLITS)):
        raise DataError(f"data.split_file={path} is not a split.json (it needs classes, train, val and test lists)")
    missing = [p for name in SPLITS for p in split[name] if not (root / p).is_file()]
    if missing:
        raise DataError(f"data.split_file={path}: {len(missing):,} of its files are not under data.root={root} "
                        f"(the first: {missing[0]})")
    return split


def load(cfg: Any, root: Path, scan: dict[str, list[Path]]) -> SourceData:
    """The splits of a class-folder image set, drawn now or read from data.split_file."""
    from swin_cli.data.decode import guess_channels

    if cfg.get("split_file"):
        split = read_split(cfg.split_file, root)
    else:
        split = {"layout": "classes", "root": str(root), "split_seed": cfg.split_seed,
                 "val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction, "classes": list(scan),
                 **draw_split(scan, root, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)}
    label_of = {name: label for label, name in enumerate(split["classes"])}

    def samples(name: str) -> FileSamples:
        labels = []
        for path in split[name]:
            folder = path.split("/", 1)[0]
            if folder not in label_of:
                raise DataError(f"data.split_file lists {path}, whose class folder {folder} is not one of its classes")
            labels.append(label_of[folder])
        return FileSamples([str(root / p) for p in split[name]], labels, f"{root} ({name} of data.layout=classes)")

    train, val, test = (samples(name) for name in SPLITS)
    if not len(test):
        raise DataError(f"data.test_fraction={cfg.test_fraction} holds out no test image of {root}")
    return SourceData(train, val if len(val) else None, test, list(split["classes"]), guess_channels(train.read(0)),
                      where=str(root), extra={"split": split})
