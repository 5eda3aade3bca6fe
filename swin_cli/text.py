"""Small helpers for the text a user reads."""

from __future__ import annotations


def plural(count: float, word: str, many: str | None = None) -> str:
    """`count word`, in the plural unless count is 1: "1 epoch", "3 epochs", "0.5 epochs",
    "2 classes", "4 entries". `many` spells a plural the English rules here do not make."""
    shown = f"{count:,}" if isinstance(count, int) else f"{count:g}"
    return f"{shown} {word if count == 1 else (many or plural_of(word))}"


def plural_of(word: str) -> str:
    """The regular English plural of the last word of `word`: steps, classes, batches, entries."""
    if word.endswith(("s", "x", "sh", "tch")):  # not "ch" alone: epochs
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u", ""):
        return word[:-1] + "ies"
    return word + "s"
