"""Make a long-tailed copy of an image folder, out of symlinks (no image is copied).

From SRC/train/<class>/ (classes in sorted order, i = 0 .. C-1) keep the first
n_i = floor(n_max * ratio^(-i / (C - 1))) files of class i in sorted order, n_max being the
largest class's count: the usual long-tailed CIFAR of Cui et al. 2019 and Cao et al. 2019, and
the same set every time. DST/test links SRC/test whole, so the test set stays balanced. For
CIFAR-10 at ratio 100: 5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50 = 12,406 images.

    python benchmarks/make_long_tailed.py ../shared/data/cifar10-jpg /tmp/cifar10-lt --ratio 100
    swin-train experiment=imbalanced data=imagefolder data.root=/tmp/cifar10-lt
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def kept_counts(available: list[int], ratio: float) -> list[int]:
    """Images kept per class: n_max * ratio^(-i / (C - 1)), floored, at most what class i has."""
    n_max, last = max(available), max(len(available) - 1, 1)
    # The small epsilon keeps products that are whole numbers in exact arithmetic (50.0) whole.
    return [min(n, math.floor(n_max * ratio ** (-i / last) + 1e-9)) for i, n in enumerate(available)]


def class_files(train: Path) -> dict[str, list[Path]]:
    """Each class folder's files (hidden ones left out), both in sorted order."""
    return {folder.name: sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
            for folder in sorted(train.iterdir()) if folder.is_dir() and not folder.name.startswith(".")}


def make_long_tailed(src: Path, dst: Path, ratio: float) -> dict[str, int]:
    """Write DST as described above; returns the images kept per class."""
    src = src.resolve()
    for part in ("train", "test"):
        if not (src / part).is_dir():
            raise SystemExit(f"error: {src / part} is not a folder (SRC needs train/<class>/ and test/<class>/)")
    if dst.exists() and any(dst.iterdir()):
        raise SystemExit(f"error: {dst} exists and is not empty; remove it or choose another DST")
    files = class_files(src / "train")
    if len(files) < 2:
        raise SystemExit(f"error: {src / 'train'} needs at least two class folders (found {len(files)})")
    kept = dict(zip(files, kept_counts([len(f) for f in files.values()], ratio)))
    for name, count in kept.items():
        folder = dst / "train" / name
        folder.mkdir(parents=True)
        for file in files[name][:count]:
            (folder / file.name).symlink_to(file)
    (dst / "test").symlink_to(src / "test", target_is_directory=True)
    return kept


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="an image folder with train/<class>/ and test/<class>/")
    parser.add_argument("dst", type=Path, help="where to write the long-tailed folder (new or empty)")
    parser.add_argument("--ratio", type=float, default=100.0, help="most over fewest images per class (default 100)")
    args = parser.parse_args(argv)
    if args.ratio < 1:
        raise SystemExit(f"error: --ratio must be >= 1 (got {args.ratio:g})")
    kept = make_long_tailed(args.src, args.dst, args.ratio)
    width = max(len(name) for name in kept)
    for name, count in kept.items():
        print(f"{name:<{width}}  {count}")
    print(f"{'total':<{width}}  {sum(kept.values()):,} training images in {len(kept)} classes, "
          f"ratio {args.ratio:g}; test/ -> {args.src.resolve() / 'test'}")


if __name__ == "__main__":
    main(sys.argv[1:])
