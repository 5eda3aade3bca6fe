"""Make a multi-label image set out of a single-label one: 2x2 mosaics of four tiles, each mosaic
labelled with the set of classes its tiles show.

From SRC/train/<class>/ and SRC/test/<class>/ (CIFAR-10 as JPEGs, say), each mosaic takes four
images drawn at random (seeded; four distinct images, their classes free to repeat) from the same
split, each resized to 32 px, into one 64 px image saved as a JPEG (quality 95) under
DST/images/<split>/. DST/train.csv and DST/test.csv list them as path,label rows, the label cell
being the space-separated class names present (data.label_separator's default), so the set
trains with

    python benchmarks/make_mosaics.py ../shared/data/cifar10-jpg /tmp/cifar10-mosaics
    swin-train data=csv data.task=multilabel data.train_table=/tmp/cifar10-mosaics/train.csv \\
        data.test_table=/tmp/cifar10-mosaics/test.csv

With C equally common classes, a class is in a mosaic with probability 1 - (1 - 1/C)^4
(CIFAR-10: 0.344), so most mosaics have 2 to 4 distinct labels. A predictor that gives every image
the same scores has, for each class, an average precision equal to the class's prevalence; the
script prints the mean over classes on the test table, the macro mAP a model has to beat.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

TILE = 32  # px of each of the four tiles; the mosaic is 2 x TILE
JPEG_QUALITY = 95
SPLITS = ("train", "test")


def class_files(folder: Path) -> dict[str, list[Path]]:
    """Each class folder's files (hidden ones left out), both in sorted order."""
    return {c.name: sorted(f for f in c.iterdir() if f.is_file() and not f.name.startswith("."))
            for c in sorted(folder.iterdir()) if c.is_dir() and not c.name.startswith(".")}


def tile(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
        return im if im.size == (TILE, TILE) else im.resize((TILE, TILE), Image.Resampling.BILINEAR)


def mosaic(paths: list[Path]) -> Image.Image:
    """Four images as one: the first at the top left, then top right, bottom left, bottom right."""
    out = Image.new("RGB", (2 * TILE, 2 * TILE))
    for k, path in enumerate(paths):
        out.paste(tile(path), ((k % 2) * TILE, (k // 2) * TILE))
    return out


def make_split(src: Path, dst: Path, split: str, count: int, seed: int) -> list[list[str]]:
    """Write `count` mosaics of SRC/<split> and DST/<split>.csv; each mosaic's sorted class names."""
    files = class_files(src / split)
    pool = [(path, name) for name, paths in files.items() for path in paths]
    if len(pool) < 4:
        raise SystemExit(f"error: {src / split} has {len(pool)} images; a mosaic needs 4")
    # Each split draws from its own seed, so --test leaves the training mosaics as they were.
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    (dst / "images" / split).mkdir(parents=True, exist_ok=True)
    width = len(str(count - 1))
    label_sets, rows = [], []
    for i in range(count):
        drawn = [pool[j] for j in rng.choice(len(pool), size=4, replace=False)]
        name = f"images/{split}/{i:0{width}d}.jpg"
        mosaic([path for path, _ in drawn]).save(dst / name, format="JPEG", quality=JPEG_QUALITY)
        labels = sorted({c for _, c in drawn})
        label_sets.append(labels)
        rows.append((name, " ".join(labels)))
    with open(dst / f"{split}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return label_sets


def prevalence(label_sets: list[list[str]], classes: list[str]) -> dict[str, float]:
    """The fraction of mosaics showing each class."""
    return {c: sum(c in labels for labels in label_sets) / len(label_sets) for c in classes}


def make_mosaics(src: Path, dst: Path, train: int, test: int, seed: int) -> dict[str, list[list[str]]]:
    """Write DST as described above; returns each split's label sets."""
    src = src.resolve()
    for split in SPLITS:
        if not (src / split).is_dir():
            raise SystemExit(f"error: {src / split} is not a folder (SRC needs train/<class>/ and test/<class>/)")
    if dst.exists() and any(dst.iterdir()):
        raise SystemExit(f"error: {dst} exists and is not empty; pick a new DST")
    return {split: make_split(src, dst, split, count, seed) for split, count in zip(SPLITS, (train, test))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="an image folder with train/<class>/ and test/<class>/")
    parser.add_argument("dst", type=Path, help="where images/, train.csv and test.csv go (new or empty)")
    parser.add_argument("--train", type=int, default=10000, help="training mosaics (default 10000)")
    parser.add_argument("--test", type=int, default=2000, help="test mosaics (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.train < 1 or args.test < 1:
        parser.error("--train and --test must be >= 1")
    made = make_mosaics(args.src, args.dst, args.train, args.test, args.seed)
    classes = sorted(class_files(args.src.resolve() / "train"))
    for split, label_sets in made.items():
        sizes = np.bincount([len(labels) for labels in label_sets], minlength=5)[1:]
        print(f"{split}: {len(label_sets):,} mosaics in {args.dst / (split + '.csv')}; "
              f"1/2/3/4 distinct labels: {'/'.join(str(int(n)) for n in sizes)}")
    shares = prevalence(made["test"], classes)
    print("test prevalence: " + ", ".join(f"{c} {p:.3f}" for c, p in shares.items()))
    print(f"label-prevalence baseline (macro mAP of a constant predictor) on test: "
          f"{sum(shares.values()) / len(shares):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
