"""data=cifar10, data=cifar100: CIFAR through torchvision, downloaded into data.root (default
<data.cache_dir>/<name>) when the network is there. Held in memory as tensors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swin_cli.data.sources import DataError, SourceData
from swin_cli.data.splits import ImageSplit


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


def load_cifar10(cfg: Any) -> SourceData:
    return load_cifar("cifar10", cfg)


def load_cifar100(cfg: Any) -> SourceData:
    return load_cifar("cifar100", cfg)
