"""Which views of an image file a config asks for: the training crop and the evaluation crop
(swin_cli/data/transforms.py does the pixels). Every storage and source that decodes files
takes its views from here."""

from __future__ import annotations

from typing import Any, Union

from swin_cli.data.schema import plain
from swin_cli.data.transforms import CenterCrop, RandomResizedCrop, Squash
from swin_cli.sizes import hw, plain_size


def crop_pct(cfg: Any) -> float:
    """data.crop_pct, or 0.875 (the official Swin repo's 224/256) for images over 64 px and 1.0
    for small ones, whose whole frame matters (CIFAR: 32 px). `cfg`: a data config or the
    `data` dict of a checkpoint (older ones have no crop keys)."""
    if cfg.get("crop_pct") is not None:
        return cfg.get("crop_pct")
    return 0.875 if min(hw(cfg.get("image_size"))) > 64 else 1.0


def eval_transform(cfg: Any, size: Any, channels: int) -> CenterCrop:
    """The evaluation view of an image file, the same for validation, test, swin-eval, predict
    and the export check."""
    return CenterCrop(plain_size(size), channels, crop_pct({**dict(cfg), "image_size": size}),
                      plain(cfg.get("interpolation") or "bilinear"))


def train_crop(cfg: Any) -> str:
    """The training view of an image file: data.train_crop, or random_resized over 64 px, else
    resize. Only for sources of image files: one held in memory by its reader (digits, CIFAR)
    is resized at its own size, whatever this says (ask its registry entry first)."""
    choice = plain(cfg.train_crop)
    if choice != "auto":
        return choice
    return "random_resized" if min(hw(cfg.image_size)) > 64 else "resize"


def image_views(cfg: Any, channels: int) -> tuple[Union[RandomResizedCrop, Squash], CenterCrop]:
    """(the training view, the evaluation view) of an image file."""
    interpolation = plain(cfg.interpolation)
    evaluation = eval_transform(cfg, cfg.image_size, channels)
    if train_crop(cfg) == "random_resized":
        training = RandomResizedCrop(plain_size(cfg.image_size), channels, tuple(cfg.crop_scale), tuple(cfg.crop_ratio),
                                     interpolation)
    else:
        training = Squash(plain_size(cfg.image_size), channels, interpolation)
    return training, evaluation
