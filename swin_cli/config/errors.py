"""ConfigError, and `check`: how every group's check function reports the first problem it finds."""

from __future__ import annotations

from typing import Optional

from swin_cli.errors import SwinCliError


class ConfigError(SwinCliError):
    """A config value that cannot work; the message is one line naming the key."""


def check(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ok."""
    if not ok:
        raise ConfigError(message)


def check_problem(problem: Optional[str]) -> None:
    """Raise ConfigError(problem) when a package's own check found one (a line, or None)."""
    if problem is not None:
        raise ConfigError(problem)
