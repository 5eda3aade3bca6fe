"""Classification scores of a split, from counts gathered on the device batch by batch.

`ClassificationMeter` adds each batch's (logits, labels) to counters on the model's device,
never reading a value back to the host per batch: the confusion matrix, the top-5 hits, the
summed cross-entropy and, for the expected calibration error, 15 confidence bins. `scores()`
sums the counters over ranks in one all-reduce (under torchrun each rank saw its own images)
and computes everything else on the CPU from the sums (`scores_from_counts`).

The definitions are scikit-learn's defaults, so that a number here equals the one a user gets
from sklearn on the same predictions:
- balanced accuracy: `balanced_accuracy_score`, the mean recall over classes present in y_true;
- macro-F1 and the per-class table: `f1_score(average="macro")` and `classification_report`,
  over the classes present in y_true or y_pred, an undefined ratio counting as 0;
- top-5 accuracy: `top_k_accuracy_score(k=5, labels=range(C))`, ties broken as it breaks them
  (of equal scores, the higher class index ranks first);
- ECE: Guo et al. 2017 (On Calibration of Modern Neural Networks), 15 equal-width bins
  (i/15, (i+1)/15] of the top-1 softmax probability; NLL: the mean cross-entropy.
Accuracy-like numbers (acc, balanced_acc, macro_f1, top5_acc, ece) are in percent; the
per-class table holds fractions, as `classification_report` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from swin_cli import distributed

ECE_BINS = 15
TOP_K = 5
# The metrics a run may select its best checkpoint by; loss alone is better lower.
SELECTABLE = ("acc", "balanced_acc", "macro_f1", "loss")


@dataclass
class Scores:
    """A model's scores on one split (all ranks' images together)."""

    loss: float
    acc: float
    balanced_acc: float
    macro_f1: float
    top5_acc: Optional[float]  # None with 5 classes or fewer, where every label is in the top 5
    ece: float
    nll: float
    images: int
    confusion: torch.Tensor  # CPU int64 (C, C); rows: true class, columns: predicted
    # One dict a class present in the labels or the predictions: class (its index), precision,
    # recall, f1, support.
    per_class: list[dict[str, Any]]
    # The reliability diagram's bins: count, mean confidence and accuracy (fractions; None when empty).
    bins: list[dict[str, Any]] = field(default_factory=list)

    def value(self, metric: str) -> float:
        """The score `train.select_metric` names (acc, balanced_acc, macro_f1 or loss)."""
        if metric not in SELECTABLE:
            raise ValueError(f"unknown metric {metric!r}; one of {', '.join(SELECTABLE)}")
        return getattr(self, metric)


# The scores an epoch's metrics row holds per evaluated model (val_<name>, ema_val_<name>).
ROW_SCORES = ("loss", "acc", "balanced_acc", "macro_f1", "top5_acc")


def score_columns(prefix: str, scores: Optional[Any], names: Sequence[str] = ROW_SCORES) -> dict[str, Optional[float]]:
    """A metrics row's `<prefix>_<name>` cells (`names`: a multi-label run's are
    multilabel_metrics.ROW_SCORES); None (an empty CSV cell) without scores."""
    return {f"{prefix}_{name}": getattr(scores, name) if scores is not None else None for name in names}


class ClassificationMeter:
    """Counters of one evaluation, on `device`; `update` per batch, `scores` once at the end."""

    def __init__(self, num_classes: int, device: torch.device):
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.top_k_hits = torch.zeros((), dtype=torch.int64, device=device)
        # Per confidence bin: images, their summed confidence, those predicted right.
        self.bin_counts = torch.zeros(ECE_BINS, dtype=torch.float64, device=device)
        self.bin_confidence = torch.zeros(ECE_BINS, dtype=torch.float64, device=device)
        self.bin_hits = torch.zeros(ECE_BINS, dtype=torch.float64, device=device)
        # Inner bin edges 1/15 .. 14/15: bucketize puts x in bin i when edge[i-1] < x <= edge[i].
        self.edges = torch.tensor([i / ECE_BINS for i in range(1, ECE_BINS)], dtype=torch.float64, device=device)
        self.classes = torch.arange(num_classes, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: float logits (B, C) and integer labels (B,), on the meter's device."""
        logits = logits.float()
        predicted = logits.argmax(1)
        hits = predicted == labels
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        # scatter_add_, not bincount: bincount sizes its output from the data's maximum, which
        # on a GPU reads a value back to the host every batch.
        cells = labels * self.num_classes + predicted
        self.confusion.scatter_add_(0, cells, torch.ones_like(cells))
        if self.num_classes > TOP_K:
            self.top_k_hits += (self._rank_of_label(logits, labels) < TOP_K).sum()
        confidence = logits.softmax(1).amax(1).double()
        where = torch.bucketize(confidence, self.edges)
        self.bin_counts.index_add_(0, where, torch.ones_like(confidence))
        self.bin_confidence.index_add_(0, where, confidence)
        self.bin_hits.index_add_(0, where, hits.double())

    def _rank_of_label(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """How many classes rank above each image's true class: higher scores, and of equal
        scores the higher indices (scikit-learn's order), so ties count as sklearn counts them."""
        true_score = logits.gather(1, labels[:, None])
        ahead = (logits > true_score) | ((logits == true_score) & (self.classes > labels[:, None]))
        return ahead.sum(1)

    def scores(self) -> Scores:
        """All ranks' counts summed (one all-reduce of one packed tensor), then the scores."""
        packed = torch.cat([self.confusion.double(), self.loss_sum.view(1), self.top_k_hits.double().view(1),
                            self.bin_counts, self.bin_confidence, self.bin_hits])
        packed = distributed.sum_(packed).cpu()
        cells = self.num_classes * self.num_classes
        confusion = packed[:cells].round().long().view(self.num_classes, self.num_classes)
        loss_sum, top_k_hits = packed[cells].item(), packed[cells + 1].item()
        bins = packed[cells + 2:].view(3, ECE_BINS)
        return scores_from_counts(confusion, loss_sum, top_k_hits, bins[0], bins[1], bins[2])


def scores_from_counts(confusion: torch.Tensor, loss_sum: float, top_k_hits: float, bin_counts: torch.Tensor,
                       bin_confidence: torch.Tensor, bin_hits: torch.Tensor) -> Scores:
    """Scores from summed counts (CPU tensors): the confusion matrix, the summed cross-entropy,
    the top-5 hits and the confidence bins' images, summed confidence and hits."""
    matrix = confusion.double()
    images = int(confusion.sum())
    n = max(1, images)
    true_positives, support, predicted = matrix.diagonal(), matrix.sum(1), matrix.sum(0)
    precision = _ratio(true_positives, predicted)
    recall = _ratio(true_positives, support)
    # F1 = 2 tp / (2 tp + fp + fn), and 2 tp + fp + fn = support + predicted (sklearn's form).
    f1 = _ratio(2 * true_positives, support + predicted)
    in_labels = support > 0
    present = in_labels | (predicted > 0)
    per_class = [{"class": c, "precision": precision[c].item(), "recall": recall[c].item(), "f1": f1[c].item(),
                  "support": int(support[c])} for c in range(len(support)) if present[c]]
    bins = [{"count": int(count), "confidence": conf / count if count else None,
             "accuracy": hit / count if count else None}
            for count, conf, hit in zip(bin_counts.tolist(), bin_confidence.tolist(), bin_hits.tolist())]
    return Scores(
        loss=loss_sum / n, acc=100.0 * true_positives.sum().item() / n,
        balanced_acc=100.0 * recall[in_labels].mean().item() if in_labels.any() else 0.0,
        macro_f1=100.0 * f1[present].mean().item() if present.any() else 0.0,
        top5_acc=100.0 * top_k_hits / n if len(support) > TOP_K else None,
        ece=100.0 * (bin_hits - bin_confidence).abs().sum().item() / n, nll=loss_sum / n, images=images,
        confusion=confusion.long(), per_class=per_class, bins=bins)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division)."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.zeros_like(numerator))
