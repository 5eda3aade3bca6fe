"""The standard ImageNet transforms, applied to each image at its own resolution.

Train: a random crop of random area and aspect ratio, resized to image_size (the
RandomResizedCrop of Szegedy et al. 2015 that every ImageNet recipe is built on). Eval: resize
the shorter side to image_size / crop_pct, then take the centre image_size square.

`size` is one side for a square or (H, W) for a box. A box's eval view resizes, aspect kept, to
the smallest image that covers (H, W) / crop_pct, then takes the centre H x W: for a square it is
the shorter-side rule above.

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
import torch
import torch.nn.functional as F

from swin_cli.data.decode import ImageInput, open_image, to_mode
from swin_cli.sizes import Size, hw

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


def _draft(im: Any, needed_w: float, needed_h: float) -> float:
    """Let a not-yet-decoded JPEG decode at the smallest 1/k scale (k = 1, 2, 4, 8) that still
    has needed_w x needed_h pixels for the full image; returns 1/k, the factor from original to
    decoded coordinates.

    The factor is 1/k and not decoded/original size: the decoder rounds its size up, so the last
    row and column of a drafted image cover less than k source pixels."""
    width, height = im.size
    if getattr(im, "format", None) != "JPEG" or needed_w <= 0 or needed_h <= 0:
        return 1.0
    # PIL picks the largest k with k * requested <= size, which is this rule for the ceiling
    requested = (max(1, math.ceil(needed_w)), max(1, math.ceil(needed_h)))
    if 2 * requested[0] > width or 2 * requested[1] > height:
        return 1.0
    drafted = im.draft(None, requested)
    if drafted is None:  # already loaded, or drafted before
        return 1.0
    return drafted[1][2] / width


def as_chw(im: Any) -> np.ndarray:
    """A PIL L/RGB image as a uint8 array (C, H, W)."""
    pixels = np.asarray(im, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _resize_whole(im: Any, width: float, height: float, size: tuple[int, int], resample: Any) -> Any:
    """The whole source image, which covers width x height of a (maybe drafted) decoded image,
    resized to size: without a draft it is PIL's plain resize (torchvision's pixels, exactly)."""
    if (width, height) == im.size:
        return im if im.size == size else im.resize(size, resample)
    return im.resize(size, resample, box=(0, 0, width, height))


@dataclass(frozen=True)
class RandomResizedCrop:
    size: Size
    channels: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"
    draft: bool = True

    def __call__(self, source: ImageInput, rng: random.Random) -> np.ndarray:
        out_h, out_w = hw(self.size)
        with open_image(source) as im:
            left, top, w, h = random_resized_box(im.size[0], im.size[1], self.scale, self.ratio, rng)
            f = _draft(im, im.size[0] * out_w / w, im.size[1] * out_h / h) if self.draft else 1.0
            im = to_mode(im, self.channels)
            resample = _resample(self.interpolation)
            if f == 1.0:
                # Crop, then resize: the filter stops at the crop's edges, as torchvision's
                # resized_crop does (resize(box=) reads pixels beyond them: up to 26 LSB apart)
                crop = im.crop((left, top, left + w, top + h))
                return as_chw(crop.resize((out_w, out_h), resample))
            # Drafted: the box falls between decoded pixels; crop the pixels it touches, resize
            # the box within them
            x0, y0, x1, y1 = left * f, top * f, (left + w) * f, (top + h) * f
            cx, cy = math.floor(x0), math.floor(y0)
            crop = im.crop((cx, cy, min(math.ceil(x1), im.size[0]), min(math.ceil(y1), im.size[1])))
            return as_chw(crop.resize((out_w, out_h), resample, box=(x0 - cx, y0 - cy, x1 - cx, y1 - cy)))


@dataclass(frozen=True)
class Squash:
    """Resize the whole image to size (H x W), aspect ratio lost (the memory storage's train view)."""

    size: Size
    channels: int
    interpolation: str = "bilinear"
    draft: bool = True

    def __call__(self, source: ImageInput, rng: Any = None) -> np.ndarray:
        out_h, out_w = hw(self.size)
        with open_image(source) as im:
            width, height = im.size
            f = _draft(im, out_w, out_h) if self.draft else 1.0
            im = to_mode(im, self.channels)
            return as_chw(_resize_whole(im, width * f, height * f, (out_w, out_h), _resample(self.interpolation)))


def resized_shape(width: int, height: int, cover: tuple[int, int]) -> tuple[int, int]:
    """(w, h), the aspect ratio kept, of the smallest resize that covers `cover` (H, W): the dim
    that needs the larger scale is set, the other truncated (torchvision's shorter-side rule
    when `cover` is square)."""
    cover_h, cover_w = cover
    if cover_w * height >= cover_h * width:
        return cover_w, int(cover_w * height / width)
    return int(cover_h * width / height), cover_h


@dataclass(frozen=True)
class CenterCrop:
    """Resize (aspect kept) to cover size / crop_pct, then crop the centre size (H x W)."""

    size: Size
    channels: int
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    draft: bool = True

    @property
    def resize_to(self) -> tuple[int, int]:
        """(H, W) the resized image must cover before the centre crop."""
        return tuple(int(math.floor(side / self.crop_pct)) for side in hw(self.size))  # type: ignore[return-value]

    def __call__(self, source: ImageInput, rng: Any = None) -> np.ndarray:
        out_h, out_w = hw(self.size)
        with open_image(source) as im:
            width, height = im.size
            w, h = resized_shape(width, height, self.resize_to)
            f = _draft(im, w, h) if self.draft else 1.0
            im = to_mode(im, self.channels)
            im = _resize_whole(im, width * f, height * f, (w, h), _resample(self.interpolation))
            top = int(round((h - out_h) / 2.0))
            left = int(round((w - out_w) / 2.0))
            return as_chw(im.crop((left, top, left + out_w, top + out_h)))


def resized_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 images (N, C, H, W) resized to size (H, W) by an antialiased bilinear filter (no
    aliasing when shrinking), rounded back to uint8."""
    resized = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)
