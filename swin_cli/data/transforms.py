"""The standard ImageNet transforms, applied to each image at its own resolution.

Train: a random crop of random area and aspect ratio, resized to image_size (the
RandomResizedCrop of Szegedy et al. 2015 that every ImageNet recipe is built on). Eval: resize
the shorter side to image_size / crop_pct, then take the centre image_size square.

Both decode JPEGs in the DCT domain at 1/2, 1/4 or 1/8 scale when the output needs no more
pixels (PIL's draft): a 4000x3000 photo cropped to 224 px never gets decoded at full size.
Random draws come from a generator the caller seeds, so a crop depends on (seed, epoch, sample
index) and not on which worker decoded it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from swin_cli.data.decode import ImageInput, open_image, to_mode

Box = tuple[int, int, int, int]  # left, top, width, height


def _resample(interpolation: str) -> Any:
    from PIL import Image

    return {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[interpolation]


def random_resized_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                       rng: random.Random) -> Box:
    """A crop covering a uniform fraction in `scale` of the image area, with a log-uniform
    aspect ratio in `ratio`; after 10 misses, the whole image cut to the nearest allowed ratio."""
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    own = width / height
    if own < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif own > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _draft(im: Any, needed_w: float, needed_h: float) -> tuple[float, float]:
    """Let a not-yet-decoded JPEG decode at the smallest 1/k scale (k = 1, 2, 4, 8) that still
    has needed_w x needed_h pixels for the full image; returns the factors from original to
    decoded coordinates."""
    width, height = im.size
    if getattr(im, "format", None) != "JPEG" or needed_w <= 0 or needed_h <= 0:
        return 1.0, 1.0
    k = 1
    while k < 8 and width / (2 * k) >= needed_w and height / (2 * k) >= needed_h:
        k *= 2
    if k > 1:
        im.draft(None, (math.ceil(width / k), math.ceil(height / k)))
    return im.size[0] / width, im.size[1] / height


def as_chw(im: Any) -> np.ndarray:
    """A PIL L/RGB image as a uint8 array (C, H, W)."""
    pixels = np.asarray(im, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


@dataclass(frozen=True)
class RandomResizedCrop:
    size: int
    channels: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"
    draft: bool = True

    def __call__(self, source: ImageInput, rng: random.Random) -> np.ndarray:
        with open_image(source) as im:
            left, top, w, h = random_resized_box(im.size[0], im.size[1], self.scale, self.ratio, rng)
            fx, fy = (_draft(im, im.size[0] * self.size / w, im.size[1] * self.size / h) if self.draft
                      else (1.0, 1.0))
            im = to_mode(im, self.channels)
            box = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
            return as_chw(im.resize((self.size, self.size), _resample(self.interpolation), box=box))


@dataclass(frozen=True)
class Squash:
    """Resize the whole image to size x size, aspect ratio lost (the memory storage's train view)."""

    size: int
    channels: int
    interpolation: str = "bilinear"
    draft: bool = True

    def __call__(self, source: ImageInput, rng: Any = None) -> np.ndarray:
        with open_image(source) as im:
            if self.draft:
                _draft(im, self.size, self.size)
            im = to_mode(im, self.channels)
            if im.size != (self.size, self.size):
                im = im.resize((self.size, self.size), _resample(self.interpolation))
            return as_chw(im)


def resized_shape(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(w, h) with the shorter side `shorter` and the aspect ratio kept (torchvision's rule:
    the longer side truncated)."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


@dataclass(frozen=True)
class CenterCrop:
    """Resize the shorter side to size / crop_pct, then crop the centre size x size."""

    size: int
    channels: int
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    draft: bool = True

    @property
    def resize_to(self) -> int:
        return int(math.floor(self.size / self.crop_pct))

    def __call__(self, source: ImageInput, rng: Any = None) -> np.ndarray:
        with open_image(source) as im:
            w, h = resized_shape(im.size[0], im.size[1], self.resize_to)
            if self.draft:
                _draft(im, w, h)
            im = to_mode(im, self.channels)
            if im.size != (w, h):
                im = im.resize((w, h), _resample(self.interpolation))
            top = int(round((h - self.size) / 2.0))
            left = int(round((w - self.size) / 2.0))
            return as_chw(im.crop((left, top, left + self.size, top + self.size)))
