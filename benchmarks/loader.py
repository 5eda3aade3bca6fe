"""Streaming loader throughput: swin-cli's stream storage against torchvision's reference loader.

Both read ROOT/train/<class>/*.jpg with the same worker count and deliver the same thing: uint8
batches of 224x224 images after RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, bilinear) and
a random horizontal flip. The baseline is torchvision's ImageFolder + RandomResizedCrop +
RandomHorizontalFlip + PILToTensor in a DataLoader. Ours is StreamSplit over the raw files,
and over the prepared copy (data.prepare=true: shorter side at most 1.15 x 224, in shards;
its one-time build is timed too). Runs are interleaved and the median of the repeats is kept.

    python benchmarks/loader.py /tmp/large --workers 2        # about 3 minutes on 2 cores

The last line is the ratio of the prepared stream storage to the baseline, as `N.NNx`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import torch


def baseline_batches(root: Path, size: int, batch: int, workers: int) -> Iterator[torch.Tensor]:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    view = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                               transforms.PILToTensor()])
    dataset = datasets.ImageFolder(str(root / "train"), transform=view)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        prefetch_factor=4 if workers else None)
    for images, _ in loader:
        yield images


def ours_batches(root: Path, size: int, batch: int, workers: int, cache_dir: str, prepare: bool,
                 epoch: int) -> Iterator[torch.Tensor]:
    from swin_cli.data import EpochPlan, load_data

    cfg = data_config(root, size, batch, workers, cache_dir, prepare)
    train = load_data(cfg).train
    plan = EpochPlan(seed=0, epoch=epoch, rank_images=batch, steps=len(train) // batch)
    flip = torch.Generator().manual_seed(epoch)
    for images, _ in train.train_batches(plan):
        # The flip the trainer's batch augmentation applies, here on the host like the baseline's.
        mirror = torch.rand(len(images), generator=flip) < 0.5
        images[mirror] = images[mirror].flip(-1)
        yield images


def data_config(root: Path, size: int, batch: int, workers: int, cache_dir: str, prepare: bool):
    """data=imagefolder at `size` px in stream storage, as swin-train would compose it."""
    from omegaconf import OmegaConf

    from swin_cli.config import DataConfig

    return OmegaConf.structured(DataConfig(
        name="imagefolder", root=str(root), image_size=size, batch_size=batch, storage="stream",
        train_crop="random_resized", workers=workers, cache_dir=cache_dir, prepare=prepare,
        val_fraction=0.0, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]))


def measure(batches: Iterator[torch.Tensor], count: int) -> float:
    """img/s over `count` batches after the first (worker start-up excluded)."""
    first = next(batches)
    assert first.dtype == torch.uint8 and first.shape[1:] == (3, 224, 224), (first.dtype, first.shape)
    start, images = time.perf_counter(), 0
    for _ in range(count):
        images += len(next(batches))
    seconds = time.perf_counter() - start
    batches.close() if hasattr(batches, "close") else None
    return images / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=12, help="measured batches per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache_dir = tempfile.mkdtemp(prefix="swin-loader-bench-")

    from swin_cli.data import load_data

    start = time.perf_counter()
    load_data(data_config(args.root, args.size, args.batch, args.workers, cache_dir, True))
    prep_s = time.perf_counter() - start
    print(f"prepared copy of {args.root / 'train'} built in {prep_s:.1f} s (once; cached in {cache_dir})")

    candidates: dict[str, Callable[[int], Iterator[torch.Tensor]]] = {
        "torchvision ImageFolder + RandomResizedCrop": lambda e: baseline_batches(args.root, args.size, args.batch,
                                                                                  args.workers),
        "swin-cli stream, raw files": lambda e: ours_batches(args.root, args.size, args.batch, args.workers,
                                                             cache_dir, False, e),
        "swin-cli stream, prepared copy": lambda e: ours_batches(args.root, args.size, args.batch, args.workers,
                                                                 cache_dir, True, e),
    }
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    for repeat in range(args.repeats):
        for name, make in candidates.items():
            rates[name].append(measure(make(repeat), args.batches))
            print(f"  repeat {repeat + 1}: {name}: {rates[name][-1]:.0f} img/s", flush=True)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    base = medians["torchvision ImageFolder + RandomResizedCrop"]
    print(f"\n{args.workers} workers, batch {args.batch}, {args.size} px, median of {args.repeats} x "
          f"{args.batches} batches:")
    for name, rate in medians.items():
        print(f"  {name:<46} {rate:8.0f} img/s  {rate / base:.2f}x")
    print(f"stream (raw files) vs torchvision: {medians['swin-cli stream, raw files'] / base:.2f}x")
    print(f"stream (prepared copy) vs torchvision: {medians['swin-cli stream, prepared copy'] / base:.2f}x")


if __name__ == "__main__":
    main()
