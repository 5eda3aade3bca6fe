"""Per-channel mean and std of a training split, in [0, 1] units, in bounded memory."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

# Bytes of float32 work space per chunk: the peak extra memory of the statistics, whatever the
# data set's size or resolution (a 4,096-image float64 chunk at 224 px was 4.9 GB).
CHUNK_BYTES = 64 * 2**20


class ChannelMoments:
    """Running per-channel sums of pixel values and their squares: uint8 values and their squares
    are exact in float32, and their sums are taken in float64."""

    def __init__(self, channels: int, chunk_bytes: int = CHUNK_BYTES):
        self.chunk_bytes = chunk_bytes
        self.total = torch.zeros(channels, dtype=torch.float64)
        self.total_sq = torch.zeros(channels, dtype=torch.float64)
        self.count = 0

    def add(self, images: Tensor) -> None:
        """Add uint8 images (N, C, H, W), in chunks of at most chunk_bytes of float32."""
        if len(images) == 0:
            return
        per_image = images[0].numel() * 4
        step = max(1, self.chunk_bytes // per_image)
        for start in range(0, len(images), step):
            x = images[start:start + step].to(device="cpu", dtype=torch.float32)
            self.total += x.sum(dim=(0, 2, 3), dtype=torch.float64)
            self.total_sq += x.square_().sum(dim=(0, 2, 3), dtype=torch.float64)
            self.count += x.numel() // x.shape[1]

    def result(self) -> tuple[list[float], list[float]]:
        count = max(1, self.count)
        mean = self.total / count
        std = (self.total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
        return (mean / 255).tolist(), (std / 255).tolist()


def channel_stats(images: Tensor, chunk_bytes: int = CHUNK_BYTES) -> tuple[list[float], list[float]]:
    """Mean and std of a uint8 tensor (N, C, H, W)."""
    moments = ChannelMoments(images.shape[1], chunk_bytes)
    moments.add(images)
    return moments.result()


def channel_stats_of(batches: Iterable[Tensor], channels: int) -> tuple[list[float], list[float]]:
    """Mean and std over uint8 batches, as a stream reads them."""
    moments = ChannelMoments(channels)
    for images in batches:
        moments.add(images)
    return moments.result()
