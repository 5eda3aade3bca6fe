"""Normalisation of uint8 batches on their device: the last step before a model, in training,
evaluation, prediction and the export's check alike."""

from __future__ import annotations

import torch
from torch import Tensor


class Normalize:
    """uint8 (B, C, H, W) -> float (x/255 - mean) / std, on the batch's device."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device):
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (-torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)

