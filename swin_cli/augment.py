"""Batch-level augmentation and normalisation on image tensors.

Working on whole batches (on the training device) replaces per-image PIL transforms in worker
processes: one gather does every random crop of the batch, one `where` every flip, one mask every
random erasing, one `lerp` every mixup or cutmix. RandAugment and TrivialAugment draw a different
op per image, and still cost a fixed sequence of batched ops (see AutoAugment): the number of
kernel launches never depends on the batch size or on what was drawn, and nothing waits on the
host, so a GPU step never stalls on its augmentation.

Every random draw comes from torch's global RNG or the generator passed in (never Python's
`random` or numpy), because the trainer reseeds torch before each step so that a resumed run
repeats the augmentations of the run it continues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from swin_cli.config import RANDAUGMENT_MAX_MAGNITUDE, plain


def canonical(device: torch.device) -> torch.device:
    """The device as a tensor on it names it ("cuda" is "cuda:0"): the key of per-device tables."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


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
MAX_BIN = RANDAUGMENT_MAX_MAGNITUDE
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


(IDENTITY, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y, ROTATE, BRIGHTNESS, COLOR, CONTRAST, SHARPNESS, POSTERIZE,
 SOLARIZE, AUTOCONTRAST, EQUALIZE) = range(len(OPS))
# Weights of torchvision's rgb_to_grayscale (ITU-R 601), the degenerate image of `color`.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


class AutoAugment:
    """RandAugment (num_ops ops at one fixed magnitude) or TrivialAugmentWide (one op at a random
    magnitude), with the op, magnitude and sign drawn independently for every image.

    A batch costs the same fixed sequence of tensor ops whatever its size and whatever was
    drawn: each op family runs once over the whole batch with per-image parameters that are the
    identity for images that drew another op (one affine grid for shear/translate/rotate, one
    blend for brightness/color/contrast/sharpness, per-image bit masks and thresholds for
    posterize/solarize, a masked select for autocontrast/equalize). Nothing is read back to the
    host, so on a GPU the augmentation is a few dozen kernel launches queued behind the step.
    Each op's maths is torchvision's on uint8 images (tests compare them image by image).
    """

    def __init__(self, kind: str, num_ops: int = 2, magnitude: int = 9, space: Optional[str] = None,
                 device: Optional[torch.device] = None):
        if kind not in ("randaugment", "trivialaugment"):
            raise ValueError(f"auto_augment must be none, randaugment or trivialaugment (got {kind!r})")
        if not 0 <= magnitude <= MAX_BIN:
            raise ValueError(f"randaugment_magnitude must be in 0..{MAX_BIN} (got {magnitude})")
        self.trivial = kind == "trivialaugment"
        self.num_ops = 1 if self.trivial else int(num_ops)
        self.magnitude = int(magnitude)
        if space not in (None, "standard", "wide"):
            raise ValueError(f"op_space must be standard, wide or null (got {space!r})")
        space = space or ("wide" if self.trivial else "standard")
        self.space = TRIVIAL_SPACE if space == "wide" else RANDAUGMENT_SPACE
        # Per-op lookup tables, copied to each device once: a host-to-device copy every batch
        # would wait for the GPU to drain its queue. Made here for the training device, so that a
        # compiled pipeline finds them and never adds one (a recompile at the second step).
        self._tables: dict[torch.device, tuple[Tensor, Tensor]] = {}
        if device is not None:
            self._tables_for(device)

    def __call__(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        for _ in range(self.num_ops):
            images = self.apply(images, *self.draw(len(images), images.device, generator))
        return images

    def draw(self, b: int, device: torch.device, generator: Optional[torch.Generator] = None
             ) -> tuple[Tensor, Tensor, Tensor]:
        """Per image: op index into OPS, magnitude bin (0 for ops without one) and whether the
        magnitude is negated (False for unsigned ops)."""
        ops = torch.randint(0, len(OPS), (b,), generator=generator, device=device)
        if self.trivial:
            bins = torch.randint(0, NUM_BINS, (b,), generator=generator, device=device)
        else:
            bins = torch.full((b,), self.magnitude, device=device)
        negate = torch.rand(b, generator=generator, device=device) < 0.5
        magnitude_free, signed = self._tables_for(device)
        bins = bins.masked_fill(magnitude_free[ops], 0)
        negate = negate & signed[ops]
        return ops, bins, negate

    def _tables_for(self, device: torch.device) -> tuple[Tensor, Tensor]:
        key = canonical(device)
        if key not in self._tables:
            self._tables[key] = (torch.tensor([op in NO_MAGNITUDE for op in OPS], device=key),
                                 torch.tensor([op in SIGNED for op in OPS], device=key))
        return self._tables[key]

    def apply(self, images: Tensor, ops: Tensor, bins: Tensor, negate: Tensor) -> Tensor:
        """One round on a uint8 (B, C, H, W) batch: image i gets OPS[ops[i]] at bins[i]."""
        # Per-image parameters in float64, as torchvision computes its Python-float factors.
        return self.apply_levels(images, ops, bins.double() / MAX_BIN, negate)

    def apply_levels(self, images: Tensor, ops: Tensor, level: Tensor, negate: Tensor) -> Tensor:
        """`apply` with each image's magnitude as a fraction of the op space's reach, (B,) in [0, 1]."""
        signed = torch.where(negate, -level, level)
        x = self._geometric(images.float(), ops, signed)
        x = self._enhance(x, ops, signed).to(torch.uint8)
        x = self._posterize(x, ops, level)
        x = self._solarize(x, ops, level)
        pick = ops.view(-1, 1, 1, 1)
        x = torch.where(pick == AUTOCONTRAST, autocontrast(x), x)
        return torch.where(pick == EQUALIZE, equalize(x), x)

    def _geometric(self, x: Tensor, ops: Tensor, signed: Tensor) -> Tensor:
        """Shear, translate and rotate as one nearest-neighbour resampling with a per-image
        affine map (the identity for every other op). In pixel coordinates centred on the image,
        the output pixel p reads the input at A p + t, the inverse of torchvision's affine."""
        _, _, h, w = x.shape
        space = self.space
        zero = torch.zeros_like(signed)
        shear = space.shear * signed  # tan of the shear angle
        shear_x = torch.where(ops == SHEAR_X, shear, zero)
        shear_y = torch.where(ops == SHEAR_Y, shear, zero)
        shift = space.translate * signed
        shift_x = torch.where(ops == TRANSLATE_X, shift * (w if space.translate_relative else 1.0), zero)
        shift_y = torch.where(ops == TRANSLATE_Y, shift * (h if space.translate_relative else 1.0), zero)
        angle = torch.where(ops == ROTATE, torch.deg2rad(space.rotate * signed), zero)
        cos, sin = angle.cos(), angle.sin()
        # affine_grid works in [-1, 1] coordinates: scale the pixel-space map by the half sides.
        theta = torch.stack([
            torch.stack([cos, (shear_x - sin) * (h / w), -shift_x * (2.0 / w)], 1),
            torch.stack([(shear_y + sin) * (w / h), cos, -shift_y * (2.0 / h)], 1),
        ], 1)
        # The grid is A p + t at every pixel centre; elementwise, as a bmm costs more on CPUs.
        theta = theta.float()[:, :, :, None, None]  # (B, 2, 3, 1, 1)
        xs = (torch.arange(w, device=x.device, dtype=torch.float32) * 2 + 1) / w - 1
        ys = ((torch.arange(h, device=x.device, dtype=torch.float32) * 2 + 1) / h - 1)[:, None]
        grid = theta[:, :, 0] * xs + theta[:, :, 1] * ys + theta[:, :, 2]  # (B, 2, H, W)
        return F.grid_sample(x, grid.permute(0, 2, 3, 1), mode="nearest", padding_mode="zeros", align_corners=False)

    def _enhance(self, x: Tensor, ops: Tensor, signed: Tensor) -> Tensor:
        """Brightness, color, contrast and sharpness: each blends the image with a degenerate
        version of it, x' = f x + (1 - f) d, with f = 1 (the identity) for every other op."""
        channels = x.shape[1]
        enhances = (ops >= BRIGHTNESS) & (ops <= SHARPNESS) & ((ops != COLOR) | (channels == 3))
        factor = torch.where(enhances, 1.0 + self.space.enhance * signed, 1.0).view(-1, 1, 1, 1)
        mix = (1.0 - factor).float()
        pick = ops.view(-1, 1, 1, 1)
        gray = grayscale(x)  # torchvision truncates the uint8 grayscale image
        degenerate = torch.where(pick == COLOR, gray, 0.0)
        degenerate = torch.where(pick == CONTRAST, gray.mean(dim=(1, 2, 3), keepdim=True), degenerate)
        degenerate = torch.where(pick == SHARPNESS, smooth(x), degenerate)
        # uint8 images are truncated after blending, as torchvision does.
        return (x + mix * (degenerate - x)).clamp_(0.0, 255.0).trunc_()

    def _posterize(self, x: Tensor, ops: Tensor, level: Tensor) -> Tensor:
        dropped = torch.where(ops == POSTERIZE, (self.space.posterize * level).round(), 0.0)
        mask = (256 - torch.exp2(dropped)).to(torch.uint8).view(-1, 1, 1, 1)  # 255 drops nothing
        return x & mask

    @staticmethod
    def _solarize(x: Tensor, ops: Tensor, level: Tensor) -> Tensor:
        # 256 (nothing inverted) at bin 0 and for every other op.
        threshold = torch.where(ops == SOLARIZE, 256.0 * (1.0 - level), 256.0).view(-1, 1, 1, 1)
        return torch.where(x >= threshold, 255 - x, x)


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
        from torchvision.transforms import AutoAugment as TorchvisionAutoAugment, AutoAugmentPolicy

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


def grayscale(x: Tensor) -> Tensor:
    """(B, 1, H, W) truncated luma of a float image holding uint8 values (itself if 1-channel)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).trunc_().unsqueeze(1)


def smooth(x: Tensor) -> Tensor:
    """PIL's SMOOTH filter (the 3x3 box plus 4x the centre, over 13), rounded, on the interior;
    the one-pixel border keeps its values. Two separable box sums: on a CPU a depthwise 3x3
    convolution costs several times as much."""
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    blurred = ((box + 4.0 * x[..., 1:-1, 1:-1]) / 13.0).round_()
    return F.pad(blurred, (1, 1, 1, 1)).where(_interior(x), x)


def _interior(x: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    return ((rows > 0) & (rows < h - 1))[:, None] & ((cols > 0) & (cols < w - 1))[None, :]


def autocontrast(x: Tensor) -> Tensor:
    """Stretch each channel of each uint8 image to 0..255 (flat channels stay as they are)."""
    low = x.amin(dim=(2, 3), keepdim=True).float()
    high = x.amax(dim=(2, 3), keepdim=True).float()
    flat = high == low
    inv_scale = torch.where(flat, 1.0, (high - low) * (1.0 / 255.0))
    low = torch.where(flat, 0.0, low)
    return ((x.float() - low) / inv_scale).clamp_(0.0, 255.0).to(torch.uint8)


def equalize(x: Tensor) -> Tensor:
    """PIL's histogram equalisation of each channel of each uint8 image, all in one scatter."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w).long()
    hist = torch.zeros(b, c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(2, flat, torch.ones_like(flat))
    # PIL leaves out the pixels of the top occupied level, spreading the rest over 255 steps.
    top = (hist > 0).long().mul(torch.arange(256, device=x.device)).argmax(2, keepdim=True)
    step = (h * w - hist.gather(2, top)) // 255  # (B, C, 1)
    below = hist.cumsum(2) - hist  # pixels strictly below each level
    lut = ((below + step // 2) // step.clamp(min=1)).clamp_(max=255)
    out = lut.gather(2, flat).to(torch.uint8).view(b, c, h, w)
    return torch.where((step > 0).view(b, c, 1, 1), out, x)


# ---------------------------------------------------------------------------------------------
# Per-batch augmentation of uint8 images, and random erasing of normalised ones


class BatchAugment:
    """Random crop after zero padding, random horizontal flip and RandAugment/TrivialAugment/
    AutoAugment on a uint8 batch; `erase` does random erasing after normalisation."""

    ERASE_AREA = (0.02, 0.33)
    ERASE_LOG_RATIO = (math.log(0.3), math.log(3.3))
    # Candidate rectangles per image; a candidate that does not fit the image is skipped.
    ERASE_TRIES = 10

    def __init__(self, cfg: Any, device: Optional[torch.device] = None):
        self.padding = int(cfg.crop_padding)
        self.hflip = bool(cfg.hflip)
        kind = plain(cfg.auto_augment)
        space = plain(cfg.op_space) if cfg.op_space is not None else None
        if kind == "autoaugment":  # its policy fixes ops and magnitudes: op_space does not apply
            self.auto: Optional[Callable[..., Tensor]] = PolicyAugment(plain(cfg.autoaugment_policy), device)
        else:
            self.auto = None if kind == "none" else AutoAugment(kind, cfg.randaugment_ops, cfg.randaugment_magnitude,
                                                                space, device)
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


# ---------------------------------------------------------------------------------------------
# The whole training-time pipeline


class TrainBatch:
    """What every training step (and mode=preview) does to a uint8 batch: crop/flip/auto-augment,
    normalise, erase, mix. Returns the model's input and its targets: class indices, or class
    probabilities (label smoothing folded in) when mixing is on."""

    def __init__(self, aug_cfg: Any, num_classes: int, label_smoothing: float, mean: list[float],
                 std: list[float], device: torch.device):
        self.augment = BatchAugment(aug_cfg, device)
        self.mix = MixBatch(aug_cfg, num_classes, label_smoothing)
        self.normalize = Normalize(mean, std, device)

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if self.augment.active:
            images = self.augment(images)
        x = self.augment.erase(self.normalize(images))
        return self.mix(x, labels) if self.mix.active else (x, labels)


def model_input(images: Tensor, labels: Tensor, device: torch.device, prepare: Callable[[Tensor, Tensor], Any],
                channels_last: bool) -> tuple[Tensor, Tensor, Tensor]:
    """A uint8 batch as the model takes it: on the device, through `prepare` (a TrainBatch,
    maybe compiled), channels-last when asked. Returns (input, class labels, targets)."""
    x = images.to(device, non_blocking=True)
    y = labels.to(device, non_blocking=True)
    x, target = prepare(x, y)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y, target
