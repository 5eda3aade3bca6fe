"""The training loss of data.task=multilabel: one independent yes/no per class, a sigmoid and a
binary cross-entropy on each logit, averaged over the batch's images and classes (torch's
BCEWithLogitsLoss, reduction mean).

- Targets arrive as uint8 multi-hot rows, or with mixup/cutmix as float rows already mixed
  and smoothed (swin_cli/augment/mixing.py), which the loss takes as they are.
- Label smoothing (train.label_smoothing = eps) pulls each 0/1 target towards 1/2, the
  uniform answer of a two-way choice: t * (1 - eps) + eps / 2.
- Positive weights (train.pos_weight=balanced): each class's positive term is weighted by its
  negatives / positives in the training labels, so a label present in 2% of the images pulls as
  hard as its absence does; capped so that a label seen a handful of times cannot dominate.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# The largest positive weight: a class with 1 positive in 10,000 images would otherwise weigh
# 9,999 times a negative, and its few images would swing every step.
POS_WEIGHT_CAP = 100.0


def smoothed(targets: Tensor, eps: float) -> Tensor:
    """0/1 (or mixed) targets pulled towards 1/2 by eps."""
    return targets * (1.0 - eps) + eps / 2 if eps else targets


def balanced_pos_weight(positives: Sequence[int], images: int) -> Tensor:
    """Per class negatives / positives (float32), at most POS_WEIGHT_CAP; a class without
    positives gets the cap (its weight multiplies terms that never occur)."""
    pos = torch.tensor(list(positives), dtype=torch.float64)
    ratio = (images - pos) / pos.clamp(min=1)
    return torch.where(pos > 0, ratio, POS_WEIGHT_CAP).clamp(max=POS_WEIGHT_CAP).float()


class MultiLabelLoss(nn.Module):
    """Mean binary cross-entropy of sigmoid(logits) against multi-hot targets (B, C)."""

    def __init__(self, pos_weight: Optional[Tensor] = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = smoothed(target.to(logits.dtype), self.label_smoothing)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)
