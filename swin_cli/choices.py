"""A config key's allowed values as a str Enum (`choices`), and a value back as its string (`plain`).

The one copy both the config package and the data package's schema use. It lives outside
swin_cli/config/ because that package imports swin_cli.data.schema, which could then not import
it back; it imports only the standard library, so `swin-train --help` stays free of torch.
"""

from __future__ import annotations

import sys
from enum import Enum
from typing import Any


def choices(name: str, *values: str) -> type[Enum]:
    """A str Enum of the allowed values of a key: Hydra rejects any other value at start-up and
    names the allowed ones."""
    # The Enum belongs to the module that names it, not to this one, so that pickle (a config
    # sent to a worker process) finds it there by name.
    module = sys._getframe(1).f_globals["__name__"]
    return Enum(name, [(v, v) for v in values], type=str, module=module)  # type: ignore[return-value]


def plain(value: Any) -> Any:
    """A config value with enums turned into their string (`cfg.optimizer.name` -> "adamw")."""
    return getattr(value, "value", value)
