"""Batch-level augmentation and normalisation on image tensors.

Working on whole batches (on the training device) replaces per-image PIL transforms in worker
processes: one gather does every random crop of the batch, one `where` every flip, one mask every
random erasing, one `lerp` every mixup or cutmix. RandAugment and TrivialAugment need a different
op per image; images that drew the same op and magnitude are transformed together.

Every random draw comes from torch's global RNG or the generator passed in (never Python's
`random` or numpy), because the trainer reseeds torch before each step so that a resumed run
repeats the augmentations of the run it continues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision.transforms import InterpolationMode


class Normalize:
    """uint8 (B, C, H, W) -> float (x/255 - mean) / std, on the batch's device."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device):
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (-torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)


# ---------------------------------------------------------------------------------------------
# RandAugment / TrivialAugment

# Magnitudes are bins 0..MAX_BIN, the scale torchvision's RandAugment(magnitude=...) uses.
MAX_BIN = 30
NUM_BINS = MAX_BIN + 1

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
       "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
# Ops whose magnitude is applied in either direction, the sign drawn per image.
SIGNED = frozenset({"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
                    "contrast", "sharpness"})
# Ops that ignore the magnitude; drawing one for them would only split their groups.
NO_MAGNITUDE = frozenset({"identity", "autocontrast", "equalize"})


@dataclass(frozen=True)
class OpSpace:
    """The value each op reaches at the top bin (the bottom bin is always the identity)."""

    shear: float  # tan of the shear angle
    translate: float  # pixels
    translate_relative: bool  # translate is a fraction of the image side rather than pixels
    rotate: float  # degrees
    enhance: float  # brightness/color/contrast/sharpness factor is 1 +- this
    posterize: int  # bits dropped from 8


# The spaces of the RandAugment and TrivialAugment papers (the latter's "wide" space).
RANDAUGMENT_SPACE = OpSpace(shear=0.3, translate=150 / 331, translate_relative=True, rotate=30.0,
                            enhance=0.9, posterize=4)
TRIVIAL_SPACE = OpSpace(shear=0.99, translate=32.0, translate_relative=False, rotate=135.0,
                        enhance=0.99, posterize=6)


def apply_op(images: Tensor, op: str, bin_: int, negate: bool, space: OpSpace) -> Tensor:
    """One op at one magnitude bin on a uint8 (N, C, H, W) group of images."""
    level = bin_ / MAX_BIN
    sign = -1.0 if negate else 1.0
    nearest = InterpolationMode.NEAREST
    if op == "identity":
        return images
    if op in ("shear_x", "shear_y"):
        angle = math.degrees(math.atan(space.shear * level)) * sign
        shear = [angle, 0.0] if op == "shear_x" else [0.0, angle]
        return TF.affine(images, angle=0.0, translate=[0.0, 0.0], scale=1.0, shear=shear, interpolation=nearest,
                         fill=0.0)
    if op in ("translate_x", "translate_y"):
        side = images.shape[-1] if op == "translate_x" else images.shape[-2]
        pixels = space.translate * level * (side if space.translate_relative else 1.0) * sign
        shift = [pixels, 0.0] if op == "translate_x" else [0.0, pixels]
        return TF.affine(images, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=nearest,
                         fill=0.0)
    if op == "rotate":
        return TF.rotate(images, space.rotate * level * sign, interpolation=nearest, fill=0.0)
    factor = 1.0 + space.enhance * level * sign
    if op == "brightness":
        return TF.adjust_brightness(images, factor)
    if op == "color":
        return TF.adjust_saturation(images, factor)  # a no-op on 1-channel images
    if op == "contrast":
        return TF.adjust_contrast(images, factor)
    if op == "sharpness":
        return TF.adjust_sharpness(images, factor)
    if op == "posterize":
        return TF.posterize(images, 8 - round(space.posterize * level))
    if op == "solarize":
        # 256 at bin 0 so that the bottom bin inverts nothing, like every other op.
        threshold = 256.0 * (1.0 - level)
        return images if threshold > 255 else TF.solarize(images, threshold)
    if op == "autocontrast":
        return TF.autocontrast(images)
    if op == "equalize":
        return TF.equalize(images)
    raise ValueError(f"unknown augmentation op {op!r}")


class AutoAugment:
    """RandAugment (num_ops ops at one fixed magnitude) or TrivialAugmentWide (one op at a random
    magnitude), with the ops, magnitudes and signs drawn independently for every image."""

    def __init__(self, kind: str, num_ops: int = 2, magnitude: int = 9):
        if kind not in ("randaugment", "trivialaugment"):
            raise ValueError(f"auto_augment must be none, randaugment or trivialaugment (got {kind!r})")
        if not 0 <= magnitude <= MAX_BIN:
            raise ValueError(f"randaugment_magnitude must be in 0..{MAX_BIN} (got {magnitude})")
        self.trivial = kind == "trivialaugment"
        self.num_ops = 1 if self.trivial else int(num_ops)
        self.magnitude = int(magnitude)
        self.space = TRIVIAL_SPACE if self.trivial else RANDAUGMENT_SPACE
        self._magnitude_free = torch.tensor([op in NO_MAGNITUDE for op in OPS])
        self._unsigned = torch.tensor([op not in SIGNED for op in OPS])

    def __call__(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        for _ in range(self.num_ops):
            images = self._one_round(images, generator)
        return images

    def _one_round(self, images: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        b, dev = len(images), images.device
        # Draws happen on the images' device; only the grouping below comes back to the host.
        ops = torch.randint(0, len(OPS), (b,), generator=generator, device=dev)
        if self.trivial:
            bins = torch.randint(0, NUM_BINS, (b,), generator=generator, device=dev)
        else:
            bins = torch.full((b,), self.magnitude, device=dev)
        negate = torch.rand(b, generator=generator, device=dev) < 0.5
        bins = bins.masked_fill(self._magnitude_free.to(dev)[ops], 0)
        negate = negate & ~self._unsigned.to(dev)[ops]
        # One key per (op, bin, sign): each distinct key is one batched torchvision call.
        keys = (ops * NUM_BINS + bins) * 2 + negate.long()
        order = keys.argsort()
        uniq, counts = keys[order].unique_consecutive(return_counts=True)
        out = images.clone()
        for key, idx in zip(uniq.tolist(), order.split(counts.tolist())):
            op_bin, negated = divmod(key, 2)
            op, bin_ = divmod(op_bin, NUM_BINS)
            out[idx] = apply_op(images[idx], OPS[op], bin_, bool(negated), self.space)
        return out


# ---------------------------------------------------------------------------------------------
# Per-batch augmentation of uint8 images, and random erasing of normalised ones


def _option(value: Any) -> str:
    # Hydra hands str Enums over as the Enum, plain configs as the str.
    return str(value.value if isinstance(value, Enum) else value).lower()


class BatchAugment:
    """Random crop after zero padding, random horizontal flip and RandAugment/TrivialAugment on a
    uint8 batch; `erase` does random erasing after normalisation."""

    ERASE_AREA = (0.02, 0.33)
    ERASE_LOG_RATIO = (math.log(0.3), math.log(3.3))
    # Candidate rectangles per image; a candidate that does not fit the image is skipped.
    ERASE_TRIES = 10

    def __init__(self, cfg: Any):
        self.padding = int(cfg.crop_padding)
        self.hflip = bool(cfg.hflip)
        kind = _option(cfg.auto_augment)
        self.auto = None if kind == "none" else AutoAugment(kind, cfg.randaugment_ops, cfg.randaugment_magnitude)
        self.erase_prob = float(cfg.random_erasing)

    @property
    def active(self) -> bool:
        return self.padding > 0 or self.hflip or self.auto is not None or self.erase_prob > 0

    def __call__(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        if self.padding > 0:
            images = self._random_crop(images, generator)
        if self.hflip:
            flip = torch.rand(len(images), generator=generator, device=images.device) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        if self.auto is not None:
            images = self.auto(images, generator)
        return images

    def _random_crop(self, images: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        b, _, h, w = images.shape
        p = self.padding
        padded = F.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b, 1), generator=generator, device=images.device)
        dx = torch.randint(0, 2 * p + 1, (b, 1), generator=generator, device=images.device)
        rows = (dy + torch.arange(h, device=images.device)).view(b, 1, h, 1).expand(-1, images.shape[1], -1, w + 2 * p)
        padded = padded.gather(2, rows)
        cols = (dx + torch.arange(w, device=images.device)).view(b, 1, 1, w).expand(-1, images.shape[1], h, -1)
        return padded.gather(3, cols)

    def erase(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """With probability random_erasing per image, fill one random rectangle of a normalised
        float (B, C, H, W) batch with standard normal noise, which matches normalised statistics."""
        if self.erase_prob <= 0:
            return x
        b, _, h, w = x.shape
        dev = x.device
        area = h * w * torch.empty(b, self.ERASE_TRIES, device=dev).uniform_(*self.ERASE_AREA, generator=generator)
        ratio = torch.empty(b, self.ERASE_TRIES, device=dev).uniform_(*self.ERASE_LOG_RATIO, generator=generator).exp()
        rect_h = (area * ratio).sqrt().round().long()
        rect_w = (area / ratio).sqrt().round().long()
        # Rounding can push the area just outside the range, and tall or wide candidates may not fit.
        fraction = rect_h * rect_w / (h * w)
        fits = ((rect_h >= 1) & (rect_h <= h) & (rect_w >= 1) & (rect_w <= w)
                & (fraction >= self.ERASE_AREA[0]) & (fraction <= self.ERASE_AREA[1]))
        first = fits.int().argmax(1, keepdim=True)  # the first fitting try (argmax takes the first max)
        rect_h, rect_w = rect_h.gather(1, first).squeeze(1), rect_w.gather(1, first).squeeze(1)
        chosen = (torch.rand(b, generator=generator, device=dev) < self.erase_prob) & fits.any(1)
        top = self._offset(h - rect_h, generator)
        left = self._offset(w - rect_w, generator)
        rows = torch.arange(h, device=dev)
        cols = torch.arange(w, device=dev)
        in_rows = (rows >= top[:, None]) & (rows < (top + rect_h)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + rect_w)[:, None])
        mask = in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None]
        noise = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
        return torch.where(mask[:, None], noise, x)

    @staticmethod
    def _offset(slack: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """Uniform integer in 0..slack per image (slack may be negative for unused candidates)."""
        u = torch.rand(slack.shape, generator=generator, device=slack.device)
        # min() because float rounding can make u * (slack + 1) reach slack + 1.
        return torch.minimum((u * (slack + 1)).floor().long(), slack).clamp(min=0)


# ---------------------------------------------------------------------------------------------
# Mixup / CutMix on normalised images, with soft targets


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
        """Smoothed one-hot rows: (1 - s) on the label plus s / num_classes everywhere."""
        one_hot = F.one_hot(labels, self.num_classes).to(dtype)
        return one_hot * (1.0 - self.smoothing) + self.smoothing / self.num_classes

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
            cutmix = torch.tensor(self.cutmix_alpha > 0, device=dev)
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
