"""How many training images each class has, read from a split's labels without decoding an image.

The imbalance options (class-weighted loss, logit adjustment, the class-balanced sampler) and the
start panel's class line need these counts. A split held in memory keeps its labels as a tensor,
a stream split as a list beside the file names; a split read in sequence from shards
(webdataset) only meets its labels while reading the images, so its counts are unknown (None).
Multi-hot labels (data.task=multilabel) have no class per image: class_counts is None for them,
and label_counts gives each class's images instead.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor


def split_labels(split: Any) -> Optional[Tensor]:
    """The split's class indices as a CPU int64 tensor, or None when it cannot say without
    reading its data (or its labels are not one class per image)."""
    labels = getattr(split, "labels", None)
    if labels is None:
        return None
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    return labels if labels.dim() == 1 else None


def class_counts(split: Any, num_classes: int) -> Optional[list[int]]:
    """Images per class of `split` (length num_classes, zeros included), or None when unknown."""
    labels = split_labels(split)
    if labels is None:
        return None
    return torch.bincount(labels, minlength=num_classes).tolist()


def label_counts(split: Any) -> Optional[list[int]]:
    """Images per class of a multi-label `split` (its multi-hot labels (N, classes) summed), or
    None when its labels are class indices or unknown."""
    labels = getattr(split, "labels", None)
    if labels is None:
        return None
    labels = torch.as_tensor(labels).cpu()
    return labels.sum(0, dtype=torch.int64).tolist() if labels.dim() == 2 else None
