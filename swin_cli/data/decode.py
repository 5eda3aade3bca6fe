"""From an image file (or its bytes) to uint8 pixels: the one decoder every source and storage
uses, so that memory, stream, predict and export see the same pixels for the same file."""

from __future__ import annotations

import io
from typing import Any, Union

import numpy as np

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")

ImageInput = Union[str, bytes, Any]  # a path, encoded bytes, or an open PIL image


def open_image(source: ImageInput) -> Any:
    """A PIL image from a path, encoded bytes or a PIL image (returned as it is)."""
    from PIL import Image

    if isinstance(source, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(source))
    if isinstance(source, str):
        return Image.open(source)
    return source


# Formats whose integer samples never exceed 16 bits: a mode "I" image from them holds 16-bit
# values (16-bit PGM/PPM open as "I" here, 16-bit PNG as "I" in older Pillow and "I;16" now).
SIXTEEN_BIT_FORMATS = ("PNG", "PPM")


def _integer_to_8bit(im: Any) -> np.ndarray:
    """8-bit values for an I;16* or I image, scaled from the range its samples were stored in."""
    pixels = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16") or getattr(im, "format", None) in SIXTEEN_BIT_FORMATS:
        return pixels / 257.0  # 65535 -> 255 exactly
    # 32-bit TIFFs and in-memory "I" images carry no range: go by the values
    low, top = pixels.min(initial=0.0), pixels.max(initial=0.0)
    if low >= 0 and top <= 255:
        return pixels  # 8-bit values in an int container (e.g. L.convert("I"))
    if low >= 0 and top <= 65535:
        return pixels / 257.0
    return pixels * (255.0 / top) if top > 0 else pixels


def to_mode(im: Any, channels: int) -> Any:
    """The image as 8-bit "L" (channels=1) or "RGB" (channels=3), the image itself when it is
    already in that mode.

    PIL's own convert() clips 16-bit and 32-bit integer images to 255 (a 16-bit PNG comes out
    white) and truncates floats in [0, 1] to 0; those are scaled instead: I;16 by 1/257, I by
    1/257 when it comes from a 16-bit format (else by its values: as is within 0..255, 1/257
    within 0..65535, its own maximum beyond), F from [0, 1] when it lies there, else as 0..255.
    Alpha is dropped the way convert() drops it (the colour under it is kept)."""
    from PIL import Image

    target = "L" if channels == 1 else "RGB"
    if im.mode == target:
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        if im.mode == "F":
            pixels = np.nan_to_num(np.asarray(im, dtype=np.float64))
            pixels = pixels * 255.0 if pixels.max(initial=0.0) <= 1.0 else pixels
        else:
            pixels = _integer_to_8bit(im)
        im = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    if im.mode in ("P", "PA") and "transparency" in im.info:
        im = im.convert("RGBA")  # what PIL asks for: P + transparency straight to RGB warns
    return im.convert(target)


def guess_channels(first: ImageInput) -> int:
    """1 for a greyscale first image, else 3."""
    try:
        with open_image(first) as im:
            return 1 if im.mode in GREY_MODES else 3
    except OSError:
        return 3
