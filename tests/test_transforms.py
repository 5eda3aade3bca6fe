"""The decoder, the transforms and the channel statistics, proven against references computed
another way: numpy on the raw samples for every PIL mode, torchvision's own transforms (PIL
path) for the crops, a float64 computation for the statistics. Every image is made here."""

from __future__ import annotations

import io
import math
import random
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.stats import ks_2samp

from swin_cli.data import CenterCrop, RandomResizedCrop, Squash, channel_stats, decode_image, to_mode
from swin_cli.data.transforms import random_resized_box

TV_MODE = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour waves plus mild noise (H, W, 3) uint8: JPEG sizes like a photo's (a
    2000x1500 one at quality 90 is ~570 KB), and detail at every scale for the filters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    waves = np.stack([128 + 100 * np.sin(x / (29.0 + 7 * c) + c) * np.cos(y / 23.0 - c) for c in range(3)], -1)
    return (waves + rng.normal(0, 4, waves.shape)).clip(0, 255).astype(np.uint8)


def encoded(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **options)
    return buf.getvalue()


def chw(im: Image.Image) -> np.ndarray:
    pixels = np.asarray(im)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma in Pillow's fixed point (what convert("L") computes), from numpy."""
    x = rgb.astype(np.int64)
    return ((x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def as_channels(grey_or_rgb: np.ndarray, channels: int) -> np.ndarray:
    """The reference 8-bit result as an (H, W[, 3]) array for `channels`."""
    if grey_or_rgb.ndim == 2:
        return grey_or_rgb if channels == 1 else np.repeat(grey_or_rgb[..., None], 3, axis=2)
    return luma(grey_or_rgb) if channels == 1 else grey_or_rgb


def scaled16(raw: np.ndarray) -> np.ndarray:
    """16-bit samples to 8 bits, rounded, in integers (65535 = 255 * 257: never a tie)."""
    return ((raw.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)


# ---------------------------------------------------------------- decode.to_mode, mode by mode

def saved(tmp_path, im: Image.Image, name: str) -> Image.Image:
    """The image written to disk and opened again, as a user's file reaches the decoder."""
    path = tmp_path / name
    im.save(path)
    return Image.open(path)


def mode_cases(tmp_path):
    """(name, opened image, its 8-bit reference as grey (H, W) or colour (H, W, 3))."""
    rng = np.random.default_rng(1)
    rgb = photo(40, 30, seed=1)
    rgba = np.dstack([rgb, rng.integers(0, 256, (30, 40), dtype=np.uint8)])
    grey = luma(rgb)
    cases = []

    bits = rng.random((30, 40)) > 0.5
    cases.append(("1", saved(tmp_path, Image.fromarray(bits), "bits.png"), np.where(bits, 255, 0).astype(np.uint8)))
    cases.append(("L", saved(tmp_path, Image.fromarray(grey), "grey.png"), grey))

    palette_im = Image.fromarray(rgb).quantize(64)
    index = np.asarray(palette_im)
    table = np.array(palette_im.getpalette(), dtype=np.uint8).reshape(-1, 3)
    cases.append(("P", saved(tmp_path, palette_im, "palette.png"), table[index]))
    see_through = palette_im.copy()
    see_through.info["transparency"] = int(index[0, 0])  # PNG writes a tRNS chunk for it
    reopened = saved(tmp_path, see_through, "palette-transparent.png")
    assert reopened.mode == "P" and "transparency" in reopened.info
    cases.append(("P+transparency", reopened, table[index]))  # the colour under the alpha

    cases.append(("LA", saved(tmp_path, Image.fromarray(np.dstack([grey, rgba[..., 3]]), "LA"), "la.png"), grey))
    cases.append(("RGB", saved(tmp_path, Image.fromarray(rgb), "rgb.png"), rgb))
    cases.append(("RGBA", saved(tmp_path, Image.fromarray(rgba), "rgba.png"), rgb))

    cmyk = saved(tmp_path, Image.fromarray(rgba, "CMYK"), "cmyk.tif")
    ink = np.asarray(cmyk).astype(np.int64)
    cases.append(("CMYK", cmyk, np.rint((255 - ink[..., :3]) * (255 - ink[..., 3:]) / 255).astype(np.uint8)))

    # 16-bit greyscale PNG, the all-white case: source mean ~121 of 255
    raw16 = np.clip(rng.normal(121 * 257, 40 * 257, (30, 40)), 0, 65535).astype(np.uint16)
    png16 = saved(tmp_path, Image.fromarray(raw16), "sixteen.png")
    assert png16.mode == "I;16"  # this Pillow; older ones open the same file as "I"
    cases.append(("I;16 png", png16, scaled16(raw16)))
    # The same file as older Pillow opens it: mode "I", format PNG, and dark (all values <= 255
    # would look like 8-bit values if only the values were asked)
    dark16 = (raw16 // 300).astype(np.uint16)
    old_pillow = Image.fromarray(dark16.astype(np.int32), "I")
    old_pillow.format = "PNG"
    cases.append(("I from 16-bit png (older Pillow)", old_pillow, scaled16(dark16)))
    pgm = tmp_path / "sixteen.pgm"
    pgm.write_bytes(b"P5 40 30 65535\n" + raw16.astype(">u2").tobytes())
    pgm16 = Image.open(pgm)
    assert pgm16.mode == "I"  # 16-bit PGM opens as 32-bit "I"
    cases.append(("I 16-bit pgm", pgm16, scaled16(raw16)))

    small = rng.integers(0, 256, (30, 40)).astype(np.int32)
    cases.append(("I 32-bit tif, 8-bit values", saved(tmp_path, Image.fromarray(small, "I"), "i8.tif"),
                  small.astype(np.uint8)))
    cases.append(("I 32-bit tif, 16-bit values",
                  saved(tmp_path, Image.fromarray(raw16.astype(np.int32), "I"), "i16.tif"), scaled16(raw16)))
    wide = rng.integers(0, 2**31 - 1, (30, 40)).astype(np.int64)
    cases.append(("I 32-bit tif, wide values", saved(tmp_path, Image.fromarray(wide.astype(np.int32), "I"), "i32.tif"),
                  np.rint(wide * 255 / wide.max()).astype(np.uint8)))

    unit = rng.random((30, 40)).astype(np.float32)
    cases.append(("F in [0, 1]", saved(tmp_path, Image.fromarray(unit, "F"), "unit.tif"),
                  np.rint(unit.astype(np.float64) * 255).astype(np.uint8)))
    levels = (rng.random((30, 40)) * 255).astype(np.float32)
    cases.append(("F in [0, 255]", saved(tmp_path, Image.fromarray(levels, "F"), "levels.tif"),
                  np.rint(levels).astype(np.uint8)))
    return cases


@pytest.mark.parametrize("channels", [1, 3])
def test_to_mode_matches_a_reference_for_every_mode(tmp_path, channels):
    for name, im, reference in mode_cases(tmp_path):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. PIL's palette-transparency warning
            out = to_mode(im, channels)
        assert out.mode == ("L" if channels == 1 else "RGB"), name
        expected = as_channels(reference, channels)
        got = np.asarray(out)
        # Colour references are numpy's, so a grey of a colour mode can only be its luma; greys
        # from grey modes are replicated exactly
        assert got.shape == expected.shape and np.array_equal(got, expected), \
            f"{name}: max diff {np.abs(got.astype(int) - expected).max()}"


def test_sixteen_bit_png_keeps_its_brightness(tmp_path):
    """The issue's case end to end: a 16-bit PNG averaging 121/255 decodes to ~121, not 255."""
    raw16 = np.clip(np.random.default_rng(2).normal(121 * 257, 40 * 257, (64, 64)), 0, 65535).astype(np.uint16)
    Image.fromarray(raw16).save(tmp_path / "scan.png")
    for channels in (1, 3):
        pixels = np.frombuffer(decode_image(str(tmp_path / "scan.png"), 64, channels), np.uint8)
        assert abs(pixels.mean() - raw16.mean() / 257) < 0.5 and (pixels == 255).mean() < 0.01


def test_8bit_modes_equal_pil_convert(tmp_path):
    """For the 8-bit modes PIL's own convert is the reference (alpha dropped as it drops it)."""
    for name, im, _ in mode_cases(tmp_path):
        if name.startswith(("I", "F")):
            continue
        for channels, mode in ((1, "L"), (3, "RGB")):
            expected = im.convert("RGBA").convert(mode) if name == "P+transparency" else im.convert(mode)
            assert np.array_equal(np.asarray(to_mode(im, channels)), np.asarray(expected)), (name, mode)
