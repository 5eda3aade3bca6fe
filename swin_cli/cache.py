"""What swin-cli keeps under data.cache_dir (default ~/.cache/swin-cli), and mode=cache.

The cache holds, side by side:
- `imagefolder-<key>.pt`: a split decoded for memory storage (swin_cli/data/memory.py);
- `prepared-<key>/`: a prepared copy for stream storage (swin_cli/data/prepared.py);
- `webdataset-counts.json`: the sample counts of WebDataset shards (swin_cli/data/webdataset.py);
- `cifar10/`, `cifar100/`: torchvision's downloads.
Each decoded split and prepared copy is written with a `<name>.about.json` beside it that says
which folder its images came from, so that the listing can name it and `cache.clear=<folder>`
can find it. Entries written before those notes existed are listed as "origin not recorded".

`swin-train mode=cache` lists the entries (what, size, date); `cache.clear=all` removes them
all, `cache.clear=<folder>` those made from images in that folder (a data root or one of its
split folders), `cache.clear=<entry name>` one entry. It makes no run dir.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from swin_cli.config.errors import ConfigError
from swin_cli.data.cache_notes import ABOUT_SUFFIX, written_caches
from swin_cli.text import plural

# What each kind of entry is, by the start of its name.
KINDS = {"imagefolder-": "decoded images", "prepared-": "prepared copy", "webdataset-counts": "WebDataset shard counts",
         "cifar10": "CIFAR-10 download", "cifar100": "CIFAR-100 download"}


class CacheError(ConfigError):
    """A cache.clear value that names nothing in the cache (a bad config value: exit code 2)."""


@dataclass
class CacheEntry:
    path: Path
    what: str  # "decoded images of /data/pets train", "CIFAR-10 download"
    folder: Optional[str]  # the folder its images came from, when recorded
    nbytes: int
    modified: float  # seconds since the epoch

    @property
    def name(self) -> str:
        return self.path.name


def cache_root(cfg: Any) -> Path:
    """data.cache_dir as a path (`cfg` is the whole config or its data group)."""
    data = cfg.data if "data" in cfg else cfg
    return Path(os.path.expanduser(str(data.cache_dir)))


def written_cache_line() -> Optional[str]:
    """The start panel's cache line: the size of each cache this process wrote to, or None."""
    roots = written_caches()
    if not roots:
        return None
    parts = []
    for root in roots:
        entries = cache_entries(root)
        parts.append(f"{root}: {size_text(sum(e.nbytes for e in entries))} in {plural(len(entries), 'entry')}")
    return "; ".join(parts) + " (swin-train mode=cache lists and clears it)"


def size_text(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return plural(nbytes, "byte")


def _bytes_in(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _describe(path: Path) -> tuple[str, Optional[str]]:
    kind = next((what for start, what in sorted(KINDS.items(), key=lambda kv: -len(kv[0]))
                 if path.name.startswith(start)), "other file")
    try:
        note = json.loads(Path(f"{path}{ABOUT_SUFFIX}").read_text())
    except (OSError, ValueError):
        note = None
    if kind in ("decoded images", "prepared copy"):
        if not isinstance(note, dict):
            return f"{kind}, origin not recorded", None
        return f"{kind} of {note.get('where')}", note.get("folder")
    return kind, None


def cache_entries(root: Path) -> list[CacheEntry]:
    """The entries of the cache at `root`, oldest first (none when it does not exist)."""
    if not root.is_dir():
        return []
    entries = []
    for path in root.iterdir():
        if path.name.endswith(ABOUT_SUFFIX) or path.name.startswith("."):
            continue  # notes belong to their entry; dot files are atomic writes in progress
        what, folder = _describe(path)
        entries.append(CacheEntry(path, what, folder, _bytes_in(path), path.stat().st_mtime))
    return sorted(entries, key=lambda e: (e.modified, e.name))


def listing(root: Path, entries: list[CacheEntry]) -> str:
    """The table mode=cache prints: one line per entry, then the total."""
    if not entries:
        return f"cache {root}: empty"
    lines = [f"cache {root}: {size_text(sum(e.nbytes for e in entries))} in "
             f"{plural(len(entries), 'entry')}"]
    for e in entries:
        date = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.modified))
        lines.append(f"  {size_text(e.nbytes):>9}  {date}  {e.name}  {e.what}")
    return "\n".join(lines)


def _is_within(folder: Optional[str], target: Path) -> bool:
    return folder is not None and Path(folder).resolve().is_relative_to(target)


def chosen(entries: list[CacheEntry], which: str) -> list[CacheEntry]:
    """The entries cache.clear=`which` names: all, those from images in a folder, or one by name."""
    if which == "all":
        return entries
    by_name = [e for e in entries if e.name == which]
    if by_name:
        return by_name
    target = Path(os.path.expanduser(which)).resolve()
    # A data root, one of its split folders, or a download folder inside the cache itself.
    from_folder = [e for e in entries if _is_within(e.folder, target) or _is_within(str(e.path), target)]
    if not from_folder and not target.is_dir():
        raise CacheError(f"cache.clear={which} is neither all, an entry of the cache, nor a folder "
                         f"(mode=cache lists the entries)")
    return from_folder


def remove(entries: list[CacheEntry]) -> int:
    """Delete `entries` and their notes; the bytes freed."""
    for e in entries:
        if e.path.is_dir():
            shutil.rmtree(e.path)
        else:
            e.path.unlink(missing_ok=True)
        Path(f"{e.path}{ABOUT_SUFFIX}").unlink(missing_ok=True)
    return sum(e.nbytes for e in entries)


def run_cache_mode(cfg: Any) -> str:
    """mode=cache: the listing of data.cache_dir, after clearing what cache.clear names."""
    root = cache_root(cfg)
    entries = cache_entries(root)
    which = cfg.cache["clear"]
    if which is None:
        return listing(root, entries)
    gone = chosen(entries, str(which))
    freed = remove(gone)
    left = cache_entries(root)
    return (f"removed {plural(len(gone), 'entry')} ({size_text(freed)}) from {root}\n"
            + listing(root, left))
