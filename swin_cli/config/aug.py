"""The `aug` config group: per-image augmentation and batch mixing, and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from swin_cli.choices import choices
from swin_cli.config.errors import check

# RandAugment magnitudes are bins 0..30, the scale of torchvision's RandAugment(magnitude=...).
RANDAUGMENT_MAX_MAGNITUDE = 30

# A policy is also an entry of AUTO_AUGMENTS in swin_cli/augment/batch.py.
AutoAugment = choices("AutoAugment", "none", "randaugment", "trivialaugment", "autoaugment")
AutoAugmentPolicy = choices("AutoAugmentPolicy", "cifar10", "imagenet", "svhn")
OpSpaceName = choices("OpSpaceName", "standard", "wide")


@dataclass
class AugConfig:
    name: str = MISSING
    # Zero-pad by this many pixels, then crop back to image_size at a random offset (0: off).
    crop_padding: int = 0
    hflip: bool = False
    # Per-image policy applied after crop/flip (torchvision's RandAugment / TrivialAugmentWide /
    # AutoAugment with the learnt policy autoaugment_policy, whose own magnitudes ignore op_space).
    auto_augment: AutoAugment = AutoAugment.none
    autoaugment_policy: AutoAugmentPolicy = AutoAugmentPolicy.cifar10
    # How far the ops reach at the top magnitude: standard (RandAugment paper: translate 45% of
    # the side, rotate 30 deg) or wide (TrivialAugment paper: translate 32 px, rotate 135 deg,
    # i.e. the whole of a 32 px image). null: the policy's own (randaugment: standard,
    # trivialaugment: wide).
    op_space: Optional[OpSpaceName] = None
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    # Probability per image of erasing one random rectangle (filled with noise).
    random_erasing: float = 0.0
    # Beta(alpha, alpha) mixing of image pairs and their labels; 0 turns each off.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    # Probability that a batch is mixed at all, and of cutmix rather than mixup when both are on.
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5


def check_aug(cfg: Any) -> None:
    """Padding, RandAugment's ops and magnitude, probabilities in [0, 1], mixing alphas >= 0."""
    a = cfg.aug
    check(a.crop_padding >= 0, f"aug.crop_padding must be >= 0 (got {a.crop_padding})")
    check(a.randaugment_ops >= 1, f"aug.randaugment_ops must be >= 1 (got {a.randaugment_ops})")
    check(0 <= a.randaugment_magnitude <= RANDAUGMENT_MAX_MAGNITUDE,
          f"aug.randaugment_magnitude must be in [0, {RANDAUGMENT_MAX_MAGNITUDE}] (got {a.randaugment_magnitude})")
    for key in ("random_erasing", "mix_prob", "mix_switch_prob"):
        check(0.0 <= getattr(a, key) <= 1.0, f"aug.{key} must be in [0, 1] (got {getattr(a, key)})")
    for key in ("mixup_alpha", "cutmix_alpha"):
        check(getattr(a, key) >= 0.0, f"aug.{key} must be >= 0 (got {getattr(a, key)})")
