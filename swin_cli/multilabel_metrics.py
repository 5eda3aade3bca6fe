"""Multi-label scores of a split (data.task=multilabel), from every image's sigmoid probabilities.

Average precision ranks all of a class's scores, so unlike the counts of metrics.py it cannot be
summed batch by batch: `MultiLabelMeter` keeps each batch's probabilities and labels on the
model's device (no host sync per batch) and `scores()` gathers all ranks' rows once (under
torchrun each rank saw its own images; a validation split fits in memory: 10,000 images of 1,000
classes are 80 MB), then computes everything on the CPU in float64.

The definitions are scikit-learn's, so a number here equals the one sklearn gives on the same
probabilities:
- mAP: `average_precision_score(y, p, average="macro")`, AP being the step-wise area
  sum_k (R_k - R_k-1) P_k over the distinct scores, highest first. One difference: sklearn
  scores a class without positives in y as AP 0 (with a warning) and averages it in, so a small
  split's mAP would depend on which rare classes happened to land in it. Here such a class has
  no AP (None in the per-class table) and is left out of the mean; where every class has a
  positive the two agree.
- micro mAP: `average="micro"`, the AP of all (image, class) pairs as one ranking.
- F1: `f1_score(y, p >= thresholds, average="macro")`, over every class, an undefined ratio
  counting as 0; the per-class table adds precision, recall, support (positives) and AP.
mAP, micro mAP and F1 are in percent (as accuracy is); the per-class table holds fractions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from swin_cli import distributed, thresholds

# The metrics a multi-label run may select its best checkpoint by.
SELECTABLE = ("map", "loss")
# What an epoch's metrics row holds per evaluated model (val_<name>, ema_val_<name>), and what
# eval.json and results.json (as test_<name>) hold besides the loss.
ROW_SCORES = ("loss", "map", "map_micro", "f1")
RESULT_SCORES = ("map", "map_micro", "f1")


@dataclass
class MultiLabelScores:
    """A multi-label model's scores on one split (all ranks' images together)."""

    loss: float  # mean binary cross-entropy over images and classes
    map: float  # macro mean average precision, %, over the classes with positives
    map_micro: float  # %
    f1: float  # macro F1 at `thresholds`, %
    images: int
    # One dict per class: class (its index), precision, recall, f1 (at its threshold), support
    # (its positives), ap (None without positives), threshold.
    per_class: list[dict[str, Any]]
    thresholds: list[float]

    def value(self, metric: str) -> float:
        """The score `train.select_metric` names (map or loss)."""
        if metric not in SELECTABLE:
            raise ValueError(f"unknown multi-label metric {metric!r}; one of {', '.join(SELECTABLE)}")
        return getattr(self, metric)


def average_precision(probs: Tensor, truth: Tensor) -> Tensor:
    """Per column of probs (N, C) against the bool truth (N, C), sklearn's average precision
    (float64, NaN for a column without positives).

    AP = sum over thresholds of (recall gained) x precision there = the mean, over the positives,
    of the precision at the cut that first takes them. A run of equal scores is one cut: each
    image takes the precision at its run's end."""
    n, columns = probs.shape
    if n == 0:
        return torch.full((columns,), math.nan, dtype=torch.float64)
    scores, order = probs.double().sort(dim=0, descending=True, stable=True)
    hits = truth.gather(0, order).double()
    position = torch.arange(n)[:, None].expand(n, columns)
    precision = hits.cumsum(0) / (position + 1).double()
    run_end = torch.ones_like(scores, dtype=torch.bool)
    run_end[:-1] = scores[:-1] != scores[1:]
    # For every image the first run end at or after it: a minimum over what follows, by a
    # cumulative minimum of the reversed order.
    end = torch.where(run_end, position, n).flip(0).cummin(0).values.flip(0)
    positives = hits.sum(0)
    ap = (hits * precision.gather(0, end)).sum(0) / positives.clamp(min=1)
    return torch.where(positives > 0, ap, math.nan)


def scores_from_probabilities(probs: Tensor, truth: Tensor, chosen: Sequence[float],
                              loss_sum: float) -> MultiLabelScores:
    """Scores from all images' sigmoid probabilities (N, C), their bool labels (N, C), the
    thresholds the F1 is at and the summed binary cross-entropy."""
    n, num_classes = probs.shape
    per_class_ap = average_precision(probs, truth)
    has_positives = ~per_class_ap.isnan()
    micro = average_precision(probs.reshape(-1, 1), truth.reshape(-1, 1))[0]
    said = thresholds.predicted(probs.double(), chosen)
    tp = (said & truth).sum(0).double()
    predicted, support = said.sum(0).double(), truth.sum(0).double()
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * tp, predicted + support)  # 2 tp / (2 tp + fp + fn)
    per_class = [{"class": c, "precision": precision[c].item(), "recall": recall[c].item(), "f1": f1[c].item(),
                  "support": int(support[c]), "ap": per_class_ap[c].item() if has_positives[c] else None,
                  "threshold": float(chosen[c])} for c in range(num_classes)]
    return MultiLabelScores(
        loss=loss_sum / max(1, n * num_classes),
        map=100.0 * per_class_ap[has_positives].mean().item() if has_positives.any() else 0.0,
        map_micro=100.0 * micro.item() if not micro.isnan() else 0.0,
        f1=100.0 * f1.mean().item() if num_classes else 0.0,
        images=n, per_class=per_class, thresholds=[float(t) for t in chosen])


class MultiLabelMeter:
    """Every image's probabilities and labels of one evaluation, on `device`; `update` per
    batch, `scores` once at the end. `chosen`: the thresholds the F1 is at (None: 0.5 each)."""

    def __init__(self, num_classes: int, device: torch.device, chosen: Optional[Sequence[float]] = None):
        self.num_classes, self.device = num_classes, device
        self.thresholds = list(chosen) if chosen is not None else thresholds.defaults(num_classes)
        # Per batch one (B, 2C + 1) float32 block: probabilities, labels, each image's summed
        # BCE; one block kind, so that all ranks' rows travel in one all_gather.
        self.rows: list[Tensor] = []

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add a batch: float logits (B, C) and multi-hot labels (B, C), on the meter's device."""
        logits, target = logits.float(), labels.float()
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1, keepdim=True)
        self.rows.append(torch.cat([logits.sigmoid(), target, loss], 1))

    def gathered(self) -> tuple[Tensor, Tensor, Tensor]:
        """All ranks' images: probabilities (N, C) float64, labels (N, C) bool and each image's
        summed BCE (N,), on the CPU; the same on every rank."""
        c = self.num_classes
        local = torch.cat(self.rows) if self.rows else torch.zeros((0, 2 * c + 1), device=self.device)
        # float64 holds every float32 probability exactly: the ties and the order sklearn sees
        # in the sigmoid's float32 output stay as they are.
        rows = distributed.gather_rows(local).cpu().double()
        return rows[:, :c], rows[:, c:2 * c] > 0.5, rows[:, 2 * c]

    def scores(self) -> MultiLabelScores:
        probs, truth, losses = self.gathered()
        return scores_from_probabilities(probs, truth, self.thresholds, losses.sum().item())


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division)."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.zeros_like(numerator))
