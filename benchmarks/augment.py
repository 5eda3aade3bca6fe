"""Augmentation throughput against the train step it feeds, in one run.

For each augmentation preset, the whole training-time batch pipeline (swin_cli.augment.TrainBatch:
crop/flip/auto-augment, normalise, erase, mix) on a uint8 batch of 256 32x32 images; beside it,
torchvision's own TrivialAugmentWide applied image by image (the usual per-image DataLoader
way), and the train step (forward + backward + AdamW) of the cifar10_nano and cifar10_swin
models at the same batch. Models and presets come from conf/ (experiment=...), so this measures
what swin-train runs. Ratios: each pipeline's time per batch over the nano step's.

    python benchmarks/augment.py                    # CPU, under 2 minutes on 2 cores
    python benchmarks/augment.py --device cuda      # GPU: bf16 autocast for the steps
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from swin_cli.augment import TrainBatch
from swin_cli.build import build_model
from swin_cli.config import register_configs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import make_step, sync  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
BATCH, SIZE, CLASSES = 256, 32, 10
AUG_KEYS = ["aug.auto_augment", "aug.random_erasing", "aug.mixup_alpha", "aug.cutmix_alpha"]
# name: overrides on top of aug=basic (crop 4 + flip), or a whole experiment's aug.
PRESETS = {
    "none": ["aug=none"],
    "basic (crop+flip)": ["aug=basic"],
    "basic+randaugment": ["aug=basic", "aug.auto_augment=randaugment"],
    "basic+trivialaugment": ["aug=basic", "aug.auto_augment=trivialaugment"],
    "cifar10_swin (TA+erase+mix)": ["experiment=cifar10_swin"],
}


def config(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=["data=cifar10", *overrides])


def seconds_per_call(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step(experiment: str, device: torch.device):
    model = build_model(config(f"experiment={experiment}").model, SIZE, 3, CLASSES).to(device).train()
    return make_step(model, BATCH, SIZE, device, torch.bfloat16 if device.type == "cuda" else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also time each pipeline under torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}; batch {BATCH} of {SIZE}x{SIZE} uint8 images")

    images = torch.randint(0, 256, (BATCH, 3, SIZE, SIZE), dtype=torch.uint8, device=device)
    labels = torch.randint(0, CLASSES, (BATCH,), device=device)
    nano = seconds_per_call(train_step("cifar10_nano", device), device, args.repeats)
    swin = seconds_per_call(train_step("cifar10_swin", device), device, 3 if device.type == "cpu" else args.repeats,
                            warmup=1)
    print(f"\n{'train step (bf16 on GPU)':<36} {'ms/batch':>9} {'img/s':>10}")
    for label, seconds in (("cifar10_nano model", nano), ("cifar10_swin model", swin)):
        print(f"{label:<36} {seconds * 1e3:9.1f} {BATCH / seconds:10.0f}")

    print(f"\n{'augmentation (whole TrainBatch)':<36} {'ms/batch':>9} {'img/s':>10} "
          f"{'/ nano step':>11} {'/ swin step':>11}")
    for label, overrides in PRESETS.items():
        cfg = config(*overrides)
        prepare = TrainBatch(cfg.aug, CLASSES, cfg.train.label_smoothing, [0.5] * 3, [0.25] * 3, device)
        seconds = seconds_per_call(lambda prepare=prepare: prepare(images, labels), device, args.repeats)
        print(f"{label:<36} {seconds * 1e3:9.2f} {BATCH / seconds:10.0f} {seconds / nano:11.1%} {seconds / swin:11.2%}")
        if args.compile and label != "none":
            compiled = torch.compile(prepare)
            seconds = seconds_per_call(lambda compiled=compiled: compiled(images, labels), device, args.repeats)
            print(f"{'  compiled':<36} {seconds * 1e3:9.2f} {BATCH / seconds:10.0f} {seconds / nano:11.1%} "
                  f"{seconds / swin:11.2%}")

    from torchvision.transforms import v2

    trivial = v2.TrivialAugmentWide()
    host = images.cpu()
    seconds = seconds_per_call(lambda: torch.stack([trivial(img) for img in host]), torch.device("cpu"), 3, warmup=1)
    print(f"{'torchvision TrivialAugmentWide/image':<36} {seconds * 1e3:9.2f} {BATCH / seconds:10.0f} "
          f"{seconds / nano:11.1%} {seconds / swin:11.2%}   (host, one image at a time)")


if __name__ == "__main__":
    main()
