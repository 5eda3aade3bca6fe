"""The `aug` config group: per-image augmentation and batch mixing, their checks, and what the
default aug=auto becomes once the data is open (`auto_aug`)."""

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
    # With aug=auto both are chosen from the data once it is open (auto_aug); until then, none.
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


def auto_aug(channels: int, random_resized: bool) -> tuple[int, bool, str]:
    """(crop_padding, hflip, why) for aug=auto, from the images' channels and the training crop.
    A random resized crop already moves and scales the image, so a pad-crop on top only loses
    border; a mirrored single-channel image (a digit, a letter) is often another class, and the
    digits as a folder learnt 81% unaugmented against 34% with aug=basic (issue 29)."""
    if random_resized:
        if channels == 1:
            return 0, False, "single-channel images, no flip (the random resized crop is the augmentation)"
        return 0, True, "a random resized crop, so flip only (no pad-crop on top)"
    if channels == 1:
        return 0, False, "small single-channel images, no pad-crop or flip (as the built-in digits)"
    return 4, True, "small RGB images, pad-4 crop and flip (as aug=basic)"


def settle_auto_aug(aug: Any, channels: int, random_resized: bool) -> str:
    """aug=auto: set crop_padding and hflip in place from auto_aug; returns the panel's note, or
    "" for any other preset (an aug= given on the command line or by a recipe is used as it is)."""
    if aug.name != "auto":
        return ""
    aug.crop_padding, aug.hflip, why = auto_aug(channels, random_resized)
    return f"aug=auto: {why}"
