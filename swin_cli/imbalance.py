"""Imbalanced classes: what the training loss, the sampler and evaluation do with the training
split's class counts (swin_cli/data/class_counts.py).

- Class-weighted loss (train.class_weights): each class's term of the cross-entropy is weighted
  by its inverse frequency 1/n, or by the inverse "effective number" (1 - beta) / (1 - beta^n)
  of Cui et al. 2019, normalised so that the weights average 1 over the classes.
- Deferred re-weighting (train.reweight_from_epoch; the DRW of Cao et al. 2019): the weights
  apply from that epoch on, before it the loss is plain. Derived from the epoch alone, so a
  resumed run switches where the uninterrupted one did.
- Logit adjustment (Menon et al. 2021). As a loss (train.logit_adjust_tau): the loss sees
  logits + tau * log(prior), so the model learns to leave the prior out of its logits. Post hoc
  (eval.logit_adjust_tau): evaluation scores logits - tau * log(prior).
- Class-balanced sampling (data.sampler=class_balanced): each image drawn with probability
  proportional to 1 / n(its class), so every class is equally likely (swin_cli/data/splits.py
  EpochPlan draws the epoch's order from these weights).

A class without training images counts as one image here, so that weights and log-priors stay
finite (the start panel says when a class has none).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from swin_cli.choices import plain
from swin_cli.config.errors import ConfigError

# The imbalance ratio (most / fewest images per class) from which the start panel suggests keys.
SUGGEST_FROM_RATIO = 10.0


def _counts(counts: Sequence[int]) -> Tensor:
    return torch.tensor([max(int(n), 1) for n in counts], dtype=torch.float64)


def class_weights(counts: Sequence[int], kind: str, beta: float = 0.999) -> Optional[Tensor]:
    """Per-class loss weights averaging 1 over the classes (float32), or None for kind=none."""
    if kind == "none":
        return None
    n = _counts(counts)
    if kind == "inverse":
        raw = 1.0 / n
    elif kind == "effective":
        raw = (1.0 - beta) / (1.0 - beta ** n)
    else:
        raise ValueError(f"unknown class weighting {kind!r}")
    return (raw / raw.mean()).float()


def log_prior(counts: Sequence[int]) -> Tensor:
    """log of each class's share of the training images (float64)."""
    n = _counts(counts)
    return torch.log(n / n.sum())


def logit_offset(class_counts: Sequence[int], tau: float, device: Any = "cpu") -> Tensor:
    """tau * log(prior) as float32 on `device`: post-hoc logit adjustment scores
    `logits - logit_offset(...)` (evaluate_split's logit_offset)."""
    return (tau * log_prior(class_counts)).float().to(device)


def sample_weights(labels: Tensor, counts: Sequence[int]) -> Tensor:
    """Per-image sampling weights 1 / n(label): every class gets the same total weight."""
    return (1.0 / _counts(counts))[labels.cpu()]


class ImbalancedLoss(nn.Module):
    """Cross-entropy with optional per-class weights (from epoch `reweight_from_epoch` on) and
    an optional additive logit offset. Targets are class indices or, with mixup/cutmix, class
    probabilities; either way sample i's loss is -sum_c w_c t_ic log softmax(z_i + offset)_c with
    t the (smoothed) target, and the batch's loss is its mean over the samples."""

    def __init__(self, weights: Optional[Tensor], offset: Optional[Tensor], label_smoothing: float = 0.0,
                 reweight_from_epoch: int = 0):
        super().__init__()
        self.register_buffer("weights", weights)
        self.register_buffer("offset", offset)
        self.label_smoothing, self.reweight_from_epoch = label_smoothing, reweight_from_epoch
        self.weighted = reweight_from_epoch == 0

    def start_epoch(self, epoch: int) -> None:
        """Called before each epoch (0-based): deferred re-weighting switches on here."""
        self.weighted = epoch >= self.reweight_from_epoch

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.offset is not None:
            logits = logits + self.offset
        weight = self.weights if self.weighted else None
        # reduction="none" then mean: the mean over samples, not torch's division by the summed
        # weights of the batch's labels (which would undo the weighting's scale per batch).
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=self.label_smoothing,
                               reduction="none").mean()


def uses_class_counts(train_cfg: Any) -> bool:
    """Whether the training loss needs the class counts."""
    return plain(train_cfg.class_weights) != "none" or train_cfg.logit_adjust_tau is not None


def build_imbalanced_loss(train_cfg: Any, label_smoothing: float, counts: Sequence[int]) -> Optional[ImbalancedLoss]:
    """The loss train.* asks for, or None when no imbalance option is on (plain cross-entropy)."""
    if not uses_class_counts(train_cfg):
        return None
    weights = class_weights(counts, plain(train_cfg.class_weights), train_cfg.class_weight_beta)
    tau = train_cfg.logit_adjust_tau
    offset = logit_offset(counts, tau) if tau is not None else None
    return ImbalancedLoss(weights, offset, label_smoothing, train_cfg.reweight_from_epoch)


def start_epoch(criterion: Any, epoch: int) -> None:
    """Tell the loss which epoch begins (deferred re-weighting); other losses ignore it."""
    if isinstance(criterion, ImbalancedLoss):
        criterion.start_epoch(epoch)


def keys_needing_counts(cfg: Any) -> list[str]:
    """The keys set in `cfg` that need the training split's class counts."""
    keys = []
    if plain(cfg.train.class_weights) != "none":
        keys.append(f"train.class_weights={plain(cfg.train.class_weights)}")
    if cfg.train.logit_adjust_tau is not None:
        keys.append("train.logit_adjust_tau")
    if cfg.eval.logit_adjust_tau is not None:
        keys.append("eval.logit_adjust_tau")
    if plain(cfg.data.sampler) != "uniform":
        keys.append(f"data.sampler={plain(cfg.data.sampler)}")
    return keys


def require_counts(cfg: Any, counts: Optional[list[int]]) -> None:
    """One line naming the key when an option needs class counts the data cannot give."""
    keys = keys_needing_counts(cfg)
    if counts is None and keys:
        raise ConfigError(f"{keys[0]} needs the training split's class counts, which data={plain(cfg.data.name)} "
                          "does not know without reading all of its images; turn it off for this data")


# ------------------------------------------------------------------------------ start panel

def imbalance_ratio(counts: Sequence[int]) -> float:
    """Most images per class over fewest (inf when a class has none)."""
    fewest = min(counts)
    return max(counts) / fewest if fewest > 0 else math.inf


def counts_text(counts: Sequence[int]) -> str:
    """The start panel's class line: every count up to 10 classes, else min/median/max; and the
    imbalance ratio."""
    if len(counts) <= 10:
        text = ", ".join(str(n) for n in counts)
    else:
        ordered = sorted(counts)
        text = f"min {ordered[0]}, median {ordered[len(ordered) // 2]}, max {ordered[-1]}"
    ratio = imbalance_ratio(counts)
    return text + (f"; imbalance {ratio:.3g}x" if math.isfinite(ratio) else "; a class has no training images")


def suggestion(cfg: Any, counts: Sequence[int]) -> Optional[str]:
    """What to try on imbalanced data, when the ratio is large and no imbalance option is on."""
    if imbalance_ratio(counts) < SUGGEST_FROM_RATIO or keys_needing_counts(cfg):
        return None
    return ("imbalanced: try train.logit_adjust_tau=1.0 or eval.logit_adjust_tau=1.0 "
            "(also train.class_weights=effective, data.sampler=class_balanced)")
