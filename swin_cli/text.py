"""Small helpers for the text a user reads."""

from __future__ import annotations


def plural(count: float, word: str, many: str | None = None) -> str:
    """`count word`, in the plural unless count is 1: "1 epoch", "3 epochs", "0.5 epochs"."""
    shown = f"{count:,}" if isinstance(count, int) else f"{count:g}"
    return f"{shown} {word if count == 1 else (many or word + 's')}"
