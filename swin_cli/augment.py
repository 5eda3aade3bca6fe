"""Batch-level augmentation and normalisation on uint8 image tensors.

Working on whole batches (on the training device) replaces per-image PIL transforms in worker
processes: one gather does every random crop of the batch, one `where` every flip.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class Normalize:
    """uint8 (B, C, H, W) -> float (x/255 - mean) / std, on the batch's device."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device):
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (-torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)


class BatchAugment:
    """Random crop after zero padding, and random horizontal flip, per image in a batch."""

    def __init__(self, cfg: Any):
        self.padding = int(cfg.crop_padding)
        self.hflip = bool(cfg.hflip)

    @property
    def active(self) -> bool:
        return self.padding > 0 or self.hflip

    def __call__(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        if self.padding > 0:
            images = self._random_crop(images, generator)
        if self.hflip:
            flip = torch.rand(len(images), generator=generator, device=images.device) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        return images

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
