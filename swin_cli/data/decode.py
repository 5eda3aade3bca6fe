"""From an image file (or its bytes) to uint8 pixels: the one decoder every source and storage
uses, so that memory, stream, predict and export see the same pixels for the same file."""

from __future__ import annotations

import io
from typing import Any, Optional, Union

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


def to_mode(im: Any, channels: int) -> Any:
    """The image as 8-bit "L" (channels=1) or "RGB" (channels=3).

    PIL's own convert() clips 16-bit and 32-bit integer images to 255 (a 16-bit PNG comes out
    white) and float images too; those are scaled from their type's range instead: I;16 by
    1/257, I (32-bit) by its own maximum when over 255, F from [0, 1] when it lies there."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        pixels = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16"):
            pixels = pixels / 257.0
        elif im.mode == "I":
            top = pixels.max(initial=0.0)
            pixels = pixels * (255.0 / top) if top > 255 else pixels
        else:  # F: [0, 1] floats (the usual), else taken as 0..255 values
            pixels = pixels * 255.0 if pixels.max(initial=0.0) <= 1.0 else pixels
        im = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    if im.mode in ("P", "PA") and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("L" if channels == 1 else "RGB")


def decode_image(source: ImageInput, size: int, channels: int) -> Optional[bytes]:
    """Decode one image, squashed to size x size x channels uint8 bytes (HWC); None when it
    cannot be read. The memory storage's train decode, kept from the first version."""
    from PIL import Image

    try:
        with open_image(source) as im:
            im = to_mode(im, channels)
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return im.tobytes()
    except Exception:  # PIL raises many types for truncated/corrupt files
        return None


def guess_channels(first: ImageInput) -> int:
    """1 for a greyscale first image, else 3."""
    try:
        with open_image(first) as im:
            return 1 if im.mode in GREY_MODES else 3
    except OSError:
        return 3
