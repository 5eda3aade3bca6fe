"""Whole-image uint8 ops of PIL/torchvision rebuilt as batched tensor ops: the grayscale,
smoothing, autocontrast and equalisation the augmentation policies blend with or select.

Each works on a float (B, C, H, W) batch holding uint8 values (grayscale, smooth) or on the uint8
batch itself (autocontrast, equalize), with PIL's rounding, so the policies match torchvision
pixel for pixel (tests/test_augment.py compares them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Weights of torchvision's rgb_to_grayscale (ITU-R 601), the degenerate image of `color`.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


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
