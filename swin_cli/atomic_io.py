"""Atomic writes: every file swin-cli writes (checkpoints, metrics, results.json, plots, caches,
exports) goes through here.

Each write goes to a hidden temporary file in the same folder, is fsynced, then renamed over
the old one, so at every instant the path holds either the previous complete file or the new
complete one, never a truncated mix, whatever kills the process. A `kill -9` mid-write can
leave the temporary file behind; `remove_stale_temp_files` clears it at the next start.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import torch

from swin_cli.errors import SwinCliError


class WriteError(SwinCliError):
    """A file could not be written (a full disk, no permission); the previous one is untouched."""


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A hidden temporary path beside `path` for a writer that takes a file name; on leaving the
    block the file is fsynced and renamed over `path`. On an error (a failed check, a full disk)
    the temporary file is removed and `path` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """`atomic_path` for a writer that takes an open file."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def save_atomic(obj: Any, path: Path, what: str = "file") -> None:
    """torch.save `obj` to `path` atomically. An OS error (a full disk) becomes a one-line
    WriteError that names `what` was being written."""
    try:
        with atomic_file(path) as f:
            torch.save(obj, f)
    except OSError as exc:
        raise WriteError(f"could not write {what} {path}: {os_error_reason(exc)}; "
                         f"the previous {what} there is untouched") from None


def copy_atomic(source: Path, target: Path) -> None:
    with open(source, "rb") as src, atomic_file(target) as dst:
        shutil.copyfileobj(src, dst)


def write_text_atomic(path: Path, text: str) -> None:
    """Small text files (metrics, results): a reader never sees a half-written one."""
    with atomic_file(path, "w") as f:
        f.write(text)


def os_error_reason(exc: OSError) -> str:
    """An OS error in a few words: a full disk said plainly, anything else as the OS puts it."""
    return "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files that atomic writes leave when a process is killed mid-write
    (`.last.pt.<random>.tmp` is as big as a checkpoint). Only hidden `.*.tmp` files."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
