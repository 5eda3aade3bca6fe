"""What the data code tells the cache listing (swin_cli/cache.py) as it writes into data.cache_dir:
which folder a decoded split or prepared copy came from (a `<entry>.about.json` beside it),
and which caches this process wrote to (the start panel shows their size)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Optional

ABOUT_SUFFIX = ".about.json"

_written: set[Path] = set()


def note_written(entry: Path, where: Optional[str] = None, paths: Optional[Iterable[str]] = None) -> None:
    """Record that this process wrote `entry` into its cache; with `where` (the log's name of
    the split) and `paths` (its image files), also write the entry's about-note."""
    _written.add(Path(entry).parent)
    if where is None:
        return
    # Images lie in <folder>/<class>/: the folder above the class folders, even when a held-out
    # split happens to hold a single class.
    folders = {os.path.dirname(os.path.dirname(os.path.abspath(p))) for p in paths or []}
    note = {"where": where, "folder": os.path.commonpath(sorted(folders)) if folders else None, "written": time.time()}
    try:
        Path(f"{entry}{ABOUT_SUFFIX}").write_text(json.dumps(note))
    except (OSError, ValueError):  # a note only names the entry; the entry works without it
        pass


def written_caches() -> list[Path]:
    """The cache folders this process wrote to, sorted."""
    return sorted(_written)
