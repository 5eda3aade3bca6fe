"""RandAugment and TrivialAugment as batched ops: the op table, the magnitude spaces, and
`AutoAugment`, which draws an op, magnitude and sign per image and applies a whole round of them
as a fixed sequence of tensor ops (the number of kernels never depends on what was drawn)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from swin_cli.augment.pixel_ops import autocontrast, equalize, grayscale, smooth
from swin_cli.config import RANDAUGMENT_MAX_MAGNITUDE


def canonical(device: torch.device) -> torch.device:
    """The device as a tensor on it names it ("cuda" is "cuda:0"): the key of per-device tables."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


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

