"""Data sources: digits (offline), CIFAR-10/100 (torchvision) and image folders.

Every source ends up as uint8 tensors (N, C, H, W) already resized to data.image_size and held
in memory, with int64 labels. Small image-classification sets fit easily (CIFAR-10 is 184 MB),
and batching from memory keeps the model busy without worker processes; augmentation then runs
on whole batches as tensor ops (swin_cli/augment.py). Image folders are decoded once, in
parallel, and cached on disk keyed by the folder's content, so later runs skip the JPEG work.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from swin_cli.checkpoint import atomic_file
from swin_cli.config import plain
from swin_cli.errors import SwinCliError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# Bumped whenever the cached tensor layout or decoding changes, so stale caches are ignored.
CACHE_VERSION = 1


class DataError(SwinCliError):
    pass


@dataclass
class ImageSplit:
    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> "ImageSplit":
        return ImageSplit(self.images[index], self.labels[index])

    @classmethod
    def from_bytes(cls, images: list[bytes], size: int, channels: int, labels: list[int]) -> "ImageSplit":
        """From decode_image's HWC uint8 buffers to one (N, C, H, W) tensor."""
        pixels = np.frombuffer(b"".join(images), dtype=np.uint8).copy()
        hwc = torch.from_numpy(pixels).view(len(images), size, size, channels)
        return cls(hwc.permute(0, 3, 1, 2).contiguous(), torch.tensor(labels, dtype=torch.int64))


@dataclass
class DataBundle:
    train: ImageSplit
    val: ImageSplit  # may be empty (data.val_fraction=0 and no val folder)
    test: ImageSplit
    classes: list[str]
    mean: list[float]
    std: list[float]
    # Which folder the test split came from: "test", or "val" for an image folder without test/.
    test_source: str = "test"

    @property
    def in_chans(self) -> int:
        return self.train.images.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device) -> "DataBundle":
        splits = [ImageSplit(s.images.to(device), s.labels.to(device)) for s in (self.train, self.val, self.test)]
        return DataBundle(*splits, self.classes, self.mean, self.std, self.test_source)

    @property
    def nbytes(self) -> int:
        return sum(s.images.nbytes + s.labels.nbytes for s in (self.train, self.val, self.test))

    def sizes(self) -> str:
        test = "test" if self.test_source == "test" else f"test (the {self.test_source}/ folder)"
        return f"train {len(self.train):,} / val {len(self.val):,} / {test} {len(self.test):,}"


def load_data(cfg: Any) -> DataBundle:
    """Build the train/val/test splits described by the `data` config group."""
    name = plain(cfg.name)
    test_source = "test"
    if name == "digits":
        train, test, classes, val = *_load_digits(), None
    elif name in ("cifar10", "cifar100"):
        train, test, classes, val = *_load_cifar(name, cfg), None
    elif name == "imagefolder":
        train, val, test, classes, test_source = _load_imagefolder(cfg)
    else:  # the schema's enum makes this unreachable from the command line
        raise DataError(f"unknown data source {name!r}")

    size, channels = cfg.image_size, cfg.channels or train.images.shape[1]
    train, test = _fit(train, size, channels), _fit(test, size, channels)
    if val is None:
        train, val = _hold_out(train, cfg.val_fraction, cfg.split_seed)
    else:
        val = _fit(val, size, channels)
    for split_name, split in (("train", train), ("test", test)):
        if len(split) == 0:
            raise DataError(f"the {split_name} split of data={name} is empty")

    mean, std = (list(cfg.mean), list(cfg.std)) if cfg.mean and cfg.std else channel_stats(train.images)
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"data.mean/data.std have {len(mean)}/{len(std)} values for {channels}-channel images")
    return DataBundle(train, val, test, classes, mean, std, test_source)


def place_data(data: DataBundle, device: torch.device, on_device: bool) -> DataBundle:
    """On a GPU, move the whole uint8 data set into GPU memory when `on_device` and it takes at
    most half of the free memory (CIFAR-10: 184 MB): a batch is then one gather on the GPU, with
    no host copy and no sync. Otherwise batches are gathered on the host and copied over."""
    if device.type != "cuda" or not on_device:
        return data
    free, _ = torch.cuda.mem_get_info(device)
    if data.nbytes > free // 2:
        log.info(f"data: {data.nbytes / 2**30:.1f} GiB stays in host memory "
                 f"(over half of the GPU's {free / 2**30:.1f} GiB free)")
        return data
    return data.to(device)


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, in chunks so a large set never goes float."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64).div_(255)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = images.numel() / channels
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def _fit(split: ImageSplit, size: int, channels: int) -> ImageSplit:
    """Resize to size x size and convert to the requested channel count."""
    x = split.images
    if x.shape[1] != channels:
        if channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        else:  # ITU-R 601 luma, as PIL's convert("L") uses
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if x.shape[-2:] != (size, size) and len(x):
        resized = [
            F.interpolate(x[i:i + 2048].float(), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
            for i in range(0, len(x), 2048)
        ]
        x = torch.cat(resized)
    return ImageSplit(x, split.labels)


def _hold_out(train: ImageSplit, fraction: float, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """Split a fixed random `fraction` of train off as validation (same seed, same split)."""
    n_val = int(round(len(train) * fraction))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(order[n_val:].sort().values), train.subset(order[:n_val].sort().values)


def _load_digits() -> tuple[ImageSplit, ImageSplit, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16 counts; spread them over the uint8 range.
    images = torch.from_numpy(np.rint(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    whole = ImageSplit(images, labels)
    # sklearn ships no test split: a fixed 20% of the set, independent of data.split_seed so
    # that test accuracy is comparable across runs with different validation splits.
    train, test = _hold_out(whole, 0.2, seed=1234)
    return train, test, [str(d) for d in range(10)]


def _load_cifar(name: str, cfg: Any) -> tuple[ImageSplit, ImageSplit, list[str]]:
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
    return splits[0], splits[1], list(ds.classes)


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


def _load_imagefolder(cfg: Any) -> tuple[ImageSplit, Optional[ImageSplit], ImageSplit, list[str], str]:
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

    channels = cfg.channels or _guess_channels(scans["train"])
    cache = ImageFolderCache(Path(os.path.expanduser(cfg.cache_dir)), root, cfg.image_size, channels)
    splits = {s: cache.load(s, scans[s]) if scans[s] is not None else None for s in scans}
    if splits["test"] is None:  # train/ and val/ only: val/ becomes the test split
        return splits["train"], None, splits["val"], classes, "val"
    return splits["train"], splits["val"], splits["test"], classes, "test"


def _guess_channels(scan: dict[str, list[Path]]) -> int:
    from PIL import Image

    first = next(f for files in scan.values() for f in files)
    try:
        with Image.open(first) as im:
            return 1 if im.mode in ("1", "L", "I", "I;16", "F") else 3
    except OSError:
        return 3


def _decode(args: tuple[str, int, int]) -> Optional[bytes]:
    return decode_image(*args)


def decode_image(path: str, size: int, channels: int) -> Optional[bytes]:
    """Decode one image to size x size x channels uint8 bytes; None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return im.tobytes()
    except Exception:  # PIL raises many types for truncated/corrupt files
        return None


class ImageFolderCache:
    """Decodes a split once into uint8 tensors and keeps them in cache_dir, keyed by content.

    The key covers every file's path, size and mtime plus the decode settings, so adding,
    removing or editing an image produces a new cache entry instead of stale data.
    Unreadable images are skipped with a warning naming them and how many there were.
    """

    def __init__(self, cache_dir: Path, root: Path, size: int, channels: int):
        self.cache_dir, self.root, self.size, self.channels = cache_dir, root, size, channels

    def _key(self, split: str, scan: dict[str, list[Path]]) -> str:
        h = hashlib.sha1(f"v{CACHE_VERSION}|{self.root.resolve()}|{split}|{self.size}|{self.channels}".encode())
        for class_name, files in scan.items():
            h.update(class_name.encode())
            for f in files:
                st = f.stat()
                h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:20]

    def load(self, split: str, scan: dict[str, list[Path]]) -> ImageSplit:
        path = self.cache_dir / f"imagefolder-{self._key(split, scan)}.pt"
        if path.is_file():
            try:
                cached = torch.load(path, weights_only=True)
                return ImageSplit(cached["images"], cached["labels"])
            except Exception:
                log.warning(f"ignoring unreadable cache {path}; decoding again")
        split_data = self._decode_all(split, scan)
        self._store(path, split_data)
        return split_data

    def _decode_all(self, split: str, scan: dict[str, list[Path]]) -> ImageSplit:
        files = [(str(f), label) for label, paths in enumerate(scan.values()) for f in paths]
        log.info(f"decoding {len(files):,} images of {self.root / split} (cached for later runs)")
        jobs = [(f, self.size, self.channels) for f, _ in files]
        workers = min(8, os.cpu_count() or 1)
        if workers > 1 and len(jobs) > 2000:
            with ProcessPoolExecutor(workers) as pool:
                decoded = list(pool.map(_decode, jobs, chunksize=512))
        else:
            decoded = [_decode(j) for j in jobs]
        bad = [f for (f, _), data in zip(files, decoded) if data is None]
        if bad:
            log.warning(f"skipped {len(bad)} unreadable image(s) in {self.root / split}: "
                        f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
        good = [(data, label) for (_, label), data in zip(files, decoded) if data is not None]
        if not good:
            raise DataError(f"no readable images in {self.root / split}")
        return ImageSplit.from_bytes([d for d, _ in good], self.size, self.channels, [lbl for _, lbl in good])

    def _store(self, path: Path, split: ImageSplit) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as f:
                torch.save({"images": split.images, "labels": split.labels}, f)
        except OSError as exc:  # a read-only or full cache dir costs speed, not correctness
            log.warning(f"could not write the image cache {path} ({exc.strerror}); continuing without it")
