"""AutoAugment's learnt policies (aug.auto_augment=autoaugment): torchvision's tables of
sub-policies, run on the batched ops of RandAugment (randaugment.AutoAugment) plus inversion."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from swin_cli.augment.randaugment import (
    AUTOCONTRAST,
    BRIGHTNESS,
    COLOR,
    CONTRAST,
    EQUALIZE,
    IDENTITY,
    OPS,
    POSTERIZE,
    ROTATE,
    SHARPNESS,
    SHEAR_X,
    SHEAR_Y,
    SIGNED,
    SOLARIZE,
    TRANSLATE_X,
    TRANSLATE_Y,
    AutoAugment,
    canonical,
)

# AutoAugment's policies also invert images; RandAugment and TrivialAugment never draw this op.
INVERT = len(OPS)
# The op names of torchvision's policy tables.
POLICY_OPS = {"ShearX": SHEAR_X, "ShearY": SHEAR_Y, "TranslateX": TRANSLATE_X, "TranslateY": TRANSLATE_Y,
              "Rotate": ROTATE, "Brightness": BRIGHTNESS, "Color": COLOR, "Contrast": CONTRAST,
              "Sharpness": SHARPNESS, "Posterize": POSTERIZE, "Solarize": SOLARIZE, "AutoContrast": AUTOCONTRAST,
              "Equalize": EQUALIZE, "Invert": INVERT}
# A policy's magnitudes are bins 0..9 of the RandAugment space (torchvision's AutoAugment).
POLICY_MAX_BIN = 9


class PolicyAugment:
    """AutoAugment (Cubuk et al. 2019): a policy learnt on a data set, 25 sub-policies of two ops,
    each op with its own probability and magnitude. Every image draws one sub-policy and applies
    each of its two ops with that op's probability, a signed op in a random direction.

    The policy tables are torchvision's (cifar10, imagenet, svhn), read at run time; the ops are
    AutoAugment's batched ones, so a batch costs two fixed rounds of tensor ops, nothing read back.
    Magnitudes follow torchvision exactly: translations are whole pixels, solarize thresholds
    255 down to 0 (tests compare every op of a policy image by image). Shears are about the image
    centre, as in RandAugment here; torchvision's AutoAugment shears about the top-left corner."""

    def __init__(self, policy: str, device: Optional[torch.device] = None):
        from torchvision.transforms import AutoAugment as TorchvisionAutoAugment
        from torchvision.transforms import AutoAugmentPolicy

        names = [p.value for p in AutoAugmentPolicy]
        if policy not in names:
            raise ValueError(f"autoaugment_policy must be one of {', '.join(names)} (got {policy!r})")
        table = TorchvisionAutoAugment(AutoAugmentPolicy(policy)).policies
        self.policy = policy
        self.ops = torch.tensor([[POLICY_OPS[name] for name, _, _ in sub] for sub in table])
        self.probs = torch.tensor([[p for _, p, _ in sub] for sub in table], dtype=torch.float64)
        self.bins = torch.tensor([[m or 0 for _, _, m in sub] for sub in table], dtype=torch.float64)
        self.rounds = self.ops.shape[1]
        self.engine = AutoAugment("randaugment", space="standard", device=device)
        # On each device once, made here for the training device (see AutoAugment).
        self._tables: dict[torch.device, tuple[Tensor, ...]] = {}
        if device is not None:
            self._tables_for(device)

    def __len__(self) -> int:
        return len(self.ops)

    def levels(self, height: int, width: int) -> Tensor:
        """(sub-policies, ops) magnitude of each entry as a fraction of the RandAugment space's reach,
        on the host: what apply_levels needs to give torchvision's magnitude for it."""
        ops, _, level, _, translate_bins = self._tables_for(torch.device("cpu"))
        return self._sized(ops, level, translate_bins, height, width)

    def _size_free_levels(self) -> tuple[Tensor, Tensor]:
        """The levels of every entry but the translations, and the translations' fraction of their
        reach (made whole pixels once the image size is known, _sized)."""
        level = self.bins / POLICY_MAX_BIN
        space = self.engine.space
        # torchvision's magnitudes are float32 steps of its reach; the truncations after a blend
        # see the difference, so the same float32 values are divided back into levels.
        bins = self.bins.long()
        for ops, reach in (((SHEAR_X, SHEAR_Y), space.shear), ((ROTATE,), space.rotate),
                           ((BRIGHTNESS, COLOR, CONTRAST, SHARPNESS), space.enhance)):
            steps = torch.linspace(0.0, reach, POLICY_MAX_BIN + 1).double() / reach
            level = torch.where(torch.isin(self.ops, torch.tensor(ops)), steps[bins], level)
        # torchvision inverts pixels >= 255 (1 - level); apply_levels' threshold is 256 (1 - level).
        # A millionth below it, so that float rounding cannot lift an integer threshold (170) over
        # the pixel value it equals; for integer pixels that changes nothing else.
        threshold = torch.linspace(255.0, 0.0, POLICY_MAX_BIN + 1).double()[bins] - 1e-6
        return torch.where(self.ops == SOLARIZE, 1.0 - threshold / 256.0, level), self.bins / POLICY_MAX_BIN

    def _sized(self, ops: Tensor, level: Tensor, translate: Tensor, height: int, width: int) -> Tensor:
        # torchvision translates by int(pixels), toward zero: whole pixels of the reach.
        for op, side in ((TRANSLATE_X, width), (TRANSLATE_Y, height)):
            reach = self.engine.space.translate * side
            level = torch.where(ops == op, (reach * translate).trunc() / reach, level)
        return level

    def _tables_for(self, device: torch.device) -> tuple[Tensor, ...]:
        key = canonical(device)
        if key not in self._tables:
            level, translate = self._size_free_levels()
            signed = torch.tensor([op in SIGNED for op in OPS] + [False])
            self._tables[key] = tuple(t.to(key) for t in (self.ops, self.probs, level, signed, translate))
        return self._tables[key]

    def draw(self, b: int, height: int, width: int, device: torch.device,
             generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Per image and round: the op (IDENTITY where the sub-policy's op was not applied), its level
        and whether it is negated; each (B, rounds)."""
        ops, probs, level, signed, translate = self._tables_for(device)
        levels = self._sized(ops, level, translate, height, width)
        sub = torch.randint(0, len(ops), (b,), generator=generator, device=device)
        applied = torch.rand(b, self.rounds, generator=generator, device=device, dtype=torch.float64) < probs[sub]
        negate = torch.rand(b, self.rounds, generator=generator, device=device) < 0.5
        op = torch.where(applied, ops[sub], IDENTITY)
        return op, levels[sub], negate & signed[op]

    def apply(self, images: Tensor, ops: Tensor, level: Tensor, negate: Tensor) -> Tensor:
        """One round: image i gets op ops[i] (an OPS index or INVERT) at level[i]."""
        images = self.engine.apply_levels(images, ops, level, negate)
        return torch.where((ops == INVERT).view(-1, 1, 1, 1), 255 - images, images)

    def __call__(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        ops, level, negate = self.draw(len(images), images.shape[-2], images.shape[-1], images.device, generator)
        for i in range(self.rounds):
            images = self.apply(images, ops[:, i], level[:, i], negate[:, i])
        return images
