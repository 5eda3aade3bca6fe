"""The whole training-time pipeline on a uint8 batch (crop/flip/auto-augment, normalise, erase,
mix) and the step from a loader's batch to the model's input."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from swin_cli.augment.batch import BatchAugment
from swin_cli.augment.mixing import MixBatch
from swin_cli.augment.normalize import Normalize


class TrainBatch:
    """What every training step (and mode=preview) does to a uint8 batch: crop/flip/auto-augment,
    normalise, erase, mix. Returns the model's input and its targets: class indices, or class
    probabilities (label smoothing folded in) when mixing is on."""

    def __init__(self, aug_cfg: Any, num_classes: int, label_smoothing: float, mean: list[float],
                 std: list[float], device: torch.device):
        self.augment = BatchAugment(aug_cfg, device)
        self.mix = MixBatch(aug_cfg, num_classes, label_smoothing)
        self.normalize = Normalize(mean, std, device)

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if self.augment.active:
            images = self.augment(images)
        x = self.augment.erase(self.normalize(images))
        return self.mix(x, labels) if self.mix.active else (x, labels)


def model_input(images: Tensor, labels: Tensor, device: torch.device, prepare: Callable[[Tensor, Tensor], Any],
                channels_last: bool) -> tuple[Tensor, Tensor, Tensor]:
    """A uint8 batch as the model takes it: on the device, through `prepare` (a TrainBatch,
    maybe compiled), channels-last when asked. Returns (input, class labels, targets)."""
    x = images.to(device, non_blocking=True)
    y = labels.to(device, non_blocking=True)
    x, target = prepare(x, y)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y, target
