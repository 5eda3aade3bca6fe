"""Per-batch augmentation of uint8 images (random crop, flip, an auto-augment policy) and random
erasing of normalised ones.

`AUTO_AUGMENTS` is where aug.auto_augment is chosen: a new policy is a module with a class that
takes (images, generator), and one entry here (plus its name in swin_cli/config/aug.py's AutoAugment choices).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from swin_cli.augment.policy import PolicyAugment
from swin_cli.augment.randaugment import AutoAugment
from swin_cli.config import plain

# A policy applied to a uint8 batch: (images, generator) -> images.
Policy = Callable[..., Tensor]


def _drawn_ops(kind: str) -> Callable[[Any, Optional[torch.device]], Policy]:
    """RandAugment or TrivialAugment: ops drawn from the op space aug.op_space names."""
    def build(cfg: Any, device: Optional[torch.device]) -> Policy:
        space = plain(cfg.op_space) if cfg.op_space is not None else None
        return AutoAugment(kind, cfg.randaugment_ops, cfg.randaugment_magnitude, space, device)
    return build


def _learnt_policy(cfg: Any, device: Optional[torch.device]) -> Policy:
    # The policy fixes ops and magnitudes: op_space does not apply.
    return PolicyAugment(plain(cfg.autoaugment_policy), device)


# aug.auto_augment's values but none: each builds its policy from the aug config for a device.
AUTO_AUGMENTS: dict[str, Callable[[Any, Optional[torch.device]], Policy]] = {
    "randaugment": _drawn_ops("randaugment"),
    "trivialaugment": _drawn_ops("trivialaugment"),
    "autoaugment": _learnt_policy,
}


def auto_augment(cfg: Any, device: Optional[torch.device] = None) -> Optional[Policy]:
    """The policy aug.auto_augment names, built for `device`; None for none."""
    kind = plain(cfg.auto_augment)
    if kind == "none":
        return None
    if kind not in AUTO_AUGMENTS:
        raise ValueError(f"auto_augment must be one of none, {', '.join(AUTO_AUGMENTS)} (got {kind!r})")
    return AUTO_AUGMENTS[kind](cfg, device)


class BatchAugment:
    """Random crop after zero padding, random horizontal flip and RandAugment/TrivialAugment/
    AutoAugment on a uint8 batch; `erase` does random erasing after normalisation."""

    ERASE_AREA = (0.02, 0.33)
    ERASE_LOG_RATIO = (math.log(0.3), math.log(3.3))
    # Candidate rectangles per image; a candidate that does not fit the image is skipped.
    ERASE_TRIES = 10

    def __init__(self, cfg: Any, device: Optional[torch.device] = None):
        self.padding = int(cfg.crop_padding)
        self.hflip = bool(cfg.hflip)
        self.auto = auto_augment(cfg, device)
        self.erase_prob = float(cfg.random_erasing)

    @property
    def active(self) -> bool:
        return self.padding > 0 or self.hflip or self.auto is not None or self.erase_prob > 0

    def __call__(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        if self.padding > 0:
            images = self._random_crop(images, generator)
        if self.hflip:
            flip = torch.rand(len(images), generator=generator, device=images.device) < 0.5
            images = self._flip_columns(images, flip)
        if self.auto is not None:
            images = self.auto(images, generator)
        return images

    @staticmethod
    def _flip_columns(images: Tensor, flip: Tensor) -> Tensor:
        """Mirror the images where `flip` is set, as one gather of columns: on a CPU this is
        half the time of selecting between a flipped copy of the whole batch and the batch, and
        it keeps static shapes for torch.compile (no boolean indexing)."""
        b, c, h, w = images.shape
        forward = torch.arange(w, device=images.device)
        cols = torch.where(flip.view(b, 1), forward.flip(0), forward)
        return images.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))

    def _random_crop(self, images: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        b, _, h, w = images.shape
        p = self.padding
        padded = F.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b, 1), generator=generator, device=images.device)
        dx = torch.randint(0, 2 * p + 1, (b, 1), generator=generator, device=images.device)
        rows = (dy + torch.arange(h, device=images.device)).view(b, 1, h, 1).expand(-1, images.shape[1], -1, w + 2 * p)
        padded = padded.gather(2, rows)
        cols = (dx + torch.arange(w, device=images.device)).view(b, 1, 1, w).expand(-1, images.shape[1], h, -1)
        return padded.gather(3, cols)

    def erase(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """With probability random_erasing per image, fill one random rectangle of a normalised
        float (B, C, H, W) batch with standard normal noise, which matches normalised statistics."""
        if self.erase_prob <= 0:
            return x
        b, _, h, w = x.shape
        dev = x.device
        area = h * w * torch.empty(b, self.ERASE_TRIES, device=dev).uniform_(*self.ERASE_AREA, generator=generator)
        ratio = torch.empty(b, self.ERASE_TRIES, device=dev).uniform_(*self.ERASE_LOG_RATIO, generator=generator).exp()
        rect_h = (area * ratio).sqrt().round().long()
        rect_w = (area / ratio).sqrt().round().long()
        # Rounding can push the area just outside the range, and tall or wide candidates may not fit.
        fraction = rect_h * rect_w / (h * w)
        fits = ((rect_h >= 1) & (rect_h <= h) & (rect_w >= 1) & (rect_w <= w)
                & (fraction >= self.ERASE_AREA[0]) & (fraction <= self.ERASE_AREA[1]))
        first = fits.int().argmax(1, keepdim=True)  # the first fitting try (argmax takes the first max)
        rect_h, rect_w = rect_h.gather(1, first).squeeze(1), rect_w.gather(1, first).squeeze(1)
        chosen = (torch.rand(b, generator=generator, device=dev) < self.erase_prob) & fits.any(1)
        top = self._offset(h - rect_h, generator)
        left = self._offset(w - rect_w, generator)
        rows = torch.arange(h, device=dev)
        cols = torch.arange(w, device=dev)
        in_rows = (rows >= top[:, None]) & (rows < (top + rect_h)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + rect_w)[:, None])
        mask = in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None]
        noise = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
        return torch.where(mask[:, None], noise, x)

    @staticmethod
    def _offset(slack: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """Uniform integer in 0..slack per image (slack may be negative for unused candidates)."""
        u = torch.rand(slack.shape, generator=generator, device=slack.device)
        # min() because float rounding can make u * (slack + 1) reach slack + 1.
        return torch.minimum((u * (slack + 1)).floor().long(), slack).clamp(min=0)
