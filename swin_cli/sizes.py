"""Image sizes as the config writes them and as code uses them.

A size in the config (data.image_size, an entry of eval.image_sizes or of a resolution schedule)
is one number for a square or [H, W] for any box. Code asks for (H, W) through `hw` and names a
size to people through `size_text`, so a square stays "224 px" and a box reads "384x512 px".
Importing this module imports neither torch nor the data package.
"""

from __future__ import annotations

from typing import Any, Optional, Union

Size = Union[int, tuple[int, int]]


class SizeError(ValueError):
    """A size that is neither a positive int nor [H, W] of positive ints."""


def hw(size: Any, key: str = "data.image_size") -> tuple[int, int]:
    """(H, W) of a size given as one int or a two-item list/tuple (OmegaConf's ListConfig too)."""
    if isinstance(size, bool):
        raise SizeError(f"{key} must be a number or [H, W] (got {size!r})")
    if isinstance(size, int):
        pair = (size, size)
    else:
        try:
            items = list(size)
        except TypeError:
            raise SizeError(f"{key} must be a number or [H, W] (got {size!r})") from None
        if len(items) == 1:
            items = items * 2
        if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise SizeError(f"{key} must be a number or [H, W] of two whole numbers (got {items})")
        pair = (items[0], items[1])
    if min(pair) < 1:
        raise SizeError(f"{key} must be >= 1 (got {size_text(pair, unit='')})")
    return pair


def plain_size(size: Any) -> Size:
    """The config's value as an int for a square and a tuple for a box: what checkpoints and
    sidecars store, so a square run stays readable by code that knows only ints."""
    h, w = hw(size)
    return h if h == w else (h, w)


def json_size(size: Any) -> Any:
    """A size as JSON writes it back: an int for a square, [H, W] for a box (never a tuple, so a
    row read from metrics.jsonl equals the one written)."""
    h, w = hw(size)
    return h if h == w else [h, w]


def size_text(size: Any, unit: str = " px") -> str:
    """"224 px" for a square, "384x512 px" for H x W."""
    h, w = size if isinstance(size, tuple) else hw(size)
    return f"{h}{unit}" if h == w else f"{h}x{w}{unit}"


def size_problem(size: Any, key: str = "data.image_size") -> Optional[str]:
    """Why `size` is not a size, in one line naming `key`, or None."""
    try:
        hw(size, key)
    except SizeError as error:
        return str(error)
    return None


def longer_side(size: Any) -> int:
    """The longer side of a size; 0 for null or a bad size (its own check names it)."""
    if size is None or size_problem(size) is not None:
        return 0
    return max(hw(size))


def area(size: Any) -> int:
    h, w = hw(size)
    return h * w
