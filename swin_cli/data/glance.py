"""What other tools learn of a data set without loading it for a run: its shape (mode=benchmark
times random images of it) and a few of its test images (swin-export checks the exported
model on them)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from omegaconf import OmegaConf

from swin_cli.data.registry import data_source
from swin_cli.data.schema import plain
from swin_cli.data.storage import load_data
from swin_cli.data.views import eval_transform
from swin_cli.text import plural


def data_shape(cfg: Any) -> tuple[int, int, str]:
    """(channels, classes, note) of the configured data without loading it: the source's own,
    or what it can tell without decoding an image (an image folder's train/ subfolders). The
    head's width barely moves a timing, so classes it cannot tell cost only a note."""
    entry = data_source(plain(cfg.name))
    channels, classes, note = entry.channels or 3, entry.classes or 10, ""
    if entry.classes_of is not None:
        found, why = entry.classes_of(cfg)
        if found:
            classes = found
        else:
            note = f"{why}: timed with {plural(classes, 'class')}"
    return cfg.channels or channels, classes, note


def first_test_images(data_cfg: Mapping[str, Any], size: int, channels: int, count: int, mean: list[float],
                std: list[float]) -> tuple[torch.Tensor, str]:
    """(up to `count` uint8 test images (N, C, size, size) of a checkpoint's data, where they came
    from): decoded directly where the source can, else the first of load_data's test split.
    Never downloads; normalisation as trained (no statistics pass). Raises what loading raises."""
    cfg = OmegaConf.create({**data_cfg, "image_size": size, "channels": channels, "download": False,
                            "mean": list(mean), "std": list(std)})
    name = plain(cfg.get("name"))
    entry = data_source(name)
    if entry.first_images is not None:
        return entry.first_images(cfg, eval_transform(cfg, size, channels), count)
    return next(load_data(cfg).test.eval_batches(count))[0], f"test images of data={name}"
