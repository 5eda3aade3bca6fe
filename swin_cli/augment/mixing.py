"""Mixup and CutMix on normalised images, with the soft targets they need (label smoothing
folded in). Class indices (B,) become one-hot rows; multi-hot rows (B, C) of data.task=multilabel
stay multi-hot, so a mixed target is the lam-weighted sum of the two images' label vectors."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from swin_cli.multilabel_loss import smoothed


class MixBatch:
    """Mixup or CutMix of a float batch with itself reversed (image i with image B-1-i), and the
    matching soft targets, label smoothing included.

    The whole draw stays on the images' device and the choice between "not mixed", mixup and
    cutmix is a tensor, so a step never waits on the host: each is a weight map in [0, 1] for the
    reversed batch (0 everywhere, 1 - lam everywhere, or 1 inside the box), and lam is recovered as
    one minus its mean, which also accounts for a box clipped at the image border.
    """

    def __init__(self, cfg: Any, num_classes: int, label_smoothing: float = 0.0):
        self.mixup_alpha = float(cfg.mixup_alpha)
        self.cutmix_alpha = float(cfg.cutmix_alpha)
        self.prob = float(cfg.mix_prob)
        self.switch_prob = float(cfg.mix_switch_prob)
        self.num_classes = int(num_classes)
        self.smoothing = float(label_smoothing)

    @property
    def active(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def targets(self, labels: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Smoothed one-hot rows: (1 - s) on the label plus s / num_classes everywhere. Multi-hot
        rows (B, C) are per-class yes/no targets: each is smoothed towards 1/2 instead
        (multilabel_loss.smoothed), the loss's own rule when mixing is off."""
        if labels.dim() == 2:
            return smoothed(labels.to(dtype), self.smoothing)
        # A scatter, not F.one_hot, which reads the labels' range back to the host.
        off = self.smoothing / self.num_classes
        rows = torch.full((len(labels), self.num_classes), off, dtype=dtype, device=labels.device)
        return rows.scatter_(1, labels[:, None], 1.0 - self.smoothing + off)

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        targets = self.targets(labels, images.dtype if images.is_floating_point() else torch.float32)
        if not self.active:
            return images, targets
        weight = self._partner_weight(images).to(images.dtype)
        mixed = torch.lerp(images, images.flip(0), weight)  # exact at weights 0 and 1, so cutmix copies pixels
        return mixed, torch.lerp(targets, targets.flip(0), weight.mean())

    def _partner_weight(self, images: Tensor) -> Tensor:
        """(1, 1, H, W) weight of the reversed batch in each pixel."""
        h, w = images.shape[-2:]
        dev = images.device
        # A fixed number of draws every call keeps the RNG stream independent of the outcomes.
        mix_u, switch_u, centre_y, centre_x = torch.rand(4, device=dev)
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cutmix = switch_u < self.switch_prob
        else:
            cutmix = torch.full((), self.cutmix_alpha > 0, device=dev)  # made there, not copied there
        alpha = torch.where(cutmix, self.cutmix_alpha, self.mixup_alpha).float()
        lam = torch.distributions.Beta(alpha, alpha, validate_args=False).sample()
        # Both gamma draws of a tiny alpha can underflow to 0, which makes 0/0.
        lam = lam.nan_to_num(nan=0.5)

        side = (1.0 - lam).sqrt()  # a box of area fraction 1 - lam before clipping
        y0 = (centre_y * h - side * h / 2).round().clamp(0, h)
        y1 = (centre_y * h + side * h / 2).round().clamp(0, h)
        x0 = (centre_x * w - side * w / 2).round().clamp(0, w)
        x1 = (centre_x * w + side * w / 2).round().clamp(0, w)
        rows = torch.arange(h, device=dev, dtype=torch.float32)
        cols = torch.arange(w, device=dev, dtype=torch.float32)
        box = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]

        weight = torch.where(cutmix, box.float(), 1.0 - lam)
        weight = torch.where(mix_u < self.prob, weight, 0.0)
        return weight.view(1, 1, h, w)
