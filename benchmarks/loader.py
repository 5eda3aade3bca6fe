"""Streaming loader throughput: swin-cli's stream storage against torchvision's reference loader,
and swin-train end to end on the same stream.

Both loaders read ROOT/train/<class>/*.jpg with the same worker count and deliver the same
thing: uint8 batches of 224x224 images after RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3,
bilinear) and a random horizontal flip. The baseline is torchvision's ImageFolder +
RandomResizedCrop + RandomHorizontalFlip + PILToTensor in a DataLoader. Ours is StreamSplit
over the raw files, and over the prepared copy (data.prepare=true: shorter side at most
1.15 x 224, in shards; its one-time build is timed too).

The trainer rows are swin-train's own path, in this process: a Trainer with data=imagefolder,
stream storage, the same workers, flip-only augmentation (the view above), the loader rows'
mean/std (no statistics pass) and a model that costs almost nothing (patch 32, embed 8, one
block: about 30 ms a step on one core, most of it reading the batch). Every row leaves out its
first 1 + 4 x workers batches (start-up, and what the workers have ready before a late first
step) and times the next --batches.

Runs are interleaved and the median of the repeats kept; the temp folder (prepared copies, run
dirs) is removed at the end.

    python benchmarks/loader.py /tmp/large --workers 2        # about 4 minutes on 2 cores

The last two lines are the trainer on the prepared copy against the loader alone on it, and the
trainer on the prepared copy against the trainer on the raw files, as `N.NNx`.
"""

from __future__ import annotations

import argparse
import shutil
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


# swin-train's overrides for the trainer rows: the loader rows' view and a near-free model.
TRAINER_OVERRIDES = [
    "data=imagefolder", "data.storage=stream", "data.val_fraction=0", "data.mean=[0.5,0.5,0.5]",
    "data.std=[0.25,0.25,0.25]", "aug=basic", "aug.crop_padding=0",
    "model.patch_size=32", "model.embed_dim=8", "model.depths=[1]", "model.num_heads=[1]", "model.window_size=7",
    "epochs=1", "threads=1", "train.limit_eval_batches=1", "log.progress=false",
]


def trainer_config(root: Path, size: int, batch: int, workers: int, cache_dir: str, prepare: bool, steps: int):
    """swin-train's config for the trainer rows, composed from conf/ as the command line would."""
    from hydra import compose, initialize_config_dir

    from swin_cli.config import register_configs, validate

    register_configs()
    overrides = [*TRAINER_OVERRIDES, f"data.root={root}", f"data.image_size={size}", f"data.batch_size={batch}",
                 f"data.workers={workers}", f"data.prepare={prepare}", f"data.cache_dir={cache_dir}",
                 f"train.max_steps_per_epoch={steps}"]
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    validate(cfg)
    return cfg


def warm_batches(workers: int) -> int:
    """Batches left out of a measurement: the first (worker start-up), and as many as the
    workers can have ready (data.prefetch=4 each), which a consumer that starts late (the
    trainer's first step) finds waiting and would count as free."""
    return 1 + 4 * workers


def measure_trainer(root: Path, size: int, batch: int, workers: int, cache_dir: str, prepare: bool,
                    count: int) -> float:
    """img/s of a swin-train run over `count` steps after warm_batches (start-up excluded, as
    `measure` excludes it), through Trainer.fit: loader, batch pipeline, step."""
    from swin_cli.train import Trainer

    warm = warm_batches(workers)
    cfg = trainer_config(root, size, batch, workers, cache_dir, prepare, warm + count)
    ends: list[float] = []
    run_dir = tempfile.mkdtemp(prefix="run-", dir=cache_dir)
    Trainer(cfg, Path(run_dir), on_step=lambda trainer: ends.append(time.perf_counter())).fit()
    shutil.rmtree(run_dir, ignore_errors=True)
    return count * batch / (ends[-1] - ends[warm - 1])


def measure(batches: Iterator[torch.Tensor], count: int, warm: int = 1) -> float:
    """img/s over `count` batches after the first `warm`."""
    for _ in range(warm):
        first = next(batches)
    assert first.dtype == torch.uint8 and first.shape[1:] == (3, 224, 224), (first.dtype, first.shape)
    start, images = time.perf_counter(), 0
    for _ in range(count):
        images += len(next(batches))
    seconds = time.perf_counter() - start
    batches.close() if hasattr(batches, "close") else None
    return images / seconds


def candidates(args: argparse.Namespace, cache_dir: str) -> dict[str, Callable[[int], float]]:
    """Each row's measurement of one repeat (its argument: the repeat, as the epoch)."""
    root, size, batch, workers, count = args.root, args.size, args.batch, args.workers, args.batches

    def loader(make: Callable[[int], Iterator[torch.Tensor]]) -> Callable[[int], float]:
        return lambda repeat: measure(make(repeat), count, warm_batches(workers))

    def trainer(prepare: bool) -> Callable[[int], float]:
        return lambda repeat: measure_trainer(root, size, batch, workers, cache_dir, prepare, count)

    return {
        TORCHVISION: loader(lambda e: baseline_batches(root, size, batch, workers)),
        STREAM_RAW: loader(lambda e: ours_batches(root, size, batch, workers, cache_dir, False, e)),
        STREAM_PREPARED: loader(lambda e: ours_batches(root, size, batch, workers, cache_dir, True, e)),
        TRAINER_RAW: trainer(False),
        TRAINER_PREPARED: trainer(True),
    }


TORCHVISION = "torchvision ImageFolder + RandomResizedCrop"
STREAM_RAW = "swin-cli stream, raw files"
STREAM_PREPARED = "swin-cli stream, prepared copy"
TRAINER_RAW = "swin-train end to end, raw files"
TRAINER_PREPARED = "swin-train end to end, prepared copy"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=12, help="measured batches (trainer: steps) per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache_dir = tempfile.mkdtemp(prefix="swin-loader-bench-")
    try:
        run(args, cache_dir)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)  # the prepared copies: 150 MB for 7,000 images


def run(args: argparse.Namespace, cache_dir: str) -> None:
    from swin_cli.data import load_data

    start = time.perf_counter()
    load_data(data_config(args.root, args.size, args.batch, args.workers, cache_dir, True))
    prep_s = time.perf_counter() - start
    print(f"prepared copy of {args.root / 'train'} built in {prep_s:.1f} s (once; cached in {cache_dir})")
    rows = candidates(args, cache_dir)
    rates: dict[str, list[float]] = {name: [] for name in rows}
    for repeat in range(args.repeats):
        for name, rate_of in rows.items():
            rates[name].append(rate_of(repeat))
            print(f"  repeat {repeat + 1}: {name}: {rates[name][-1]:.0f} img/s", flush=True)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    base = medians[TORCHVISION]
    print(f"\n{args.workers} workers, batch {args.batch}, {args.size} px, median of {args.repeats} x "
          f"{args.batches} batches:")
    for name, rate in medians.items():
        print(f"  {name:<46} {rate:8.0f} img/s  {rate / base:.2f}x")
    print(f"stream (raw files) vs torchvision: {medians[STREAM_RAW] / base:.2f}x")
    print(f"stream (prepared copy) vs torchvision: {medians[STREAM_PREPARED] / base:.2f}x")
    print(f"trainer vs loader: {medians[TRAINER_PREPARED] / medians[STREAM_PREPARED]:.2f}x")
    print(f"trainer prepared vs raw: {medians[TRAINER_PREPARED] / medians[TRAINER_RAW]:.2f}x")


if __name__ == "__main__":
    main()
