"""Where a run's files go, and when its run dir is not worth keeping.

Hydra makes the run dir (`.hydra/` and `swin-train.log`) before any of our code runs, so every
attempt would leave one behind. A run that fails before its first training step keeps its dir
only when something in it is worth having (a checkpoint, results); mode=summary keeps none;
mode=eval and mode=predict write beside the checkpoint they score (`<run dir>/eval/<time>`)
rather than into a new dated dir under outputs/.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

# What Hydra puts in a run dir before our code runs.
HYDRA_ONLY = frozenset({".hydra", "swin-train.log"})
# Files a failed attempt may have left that are worth keeping: checkpoints (a resumed run's
# copied best.pt too), results and the outputs of the non-training modes.
KEEPSAKES = ("*.pt", "results.json", "metrics.csv", "eval.json", "predictions.csv", "benchmark.json",
             "trace.json", "augment_preview.png")
# The modes whose output belongs with the checkpoint they read.
CHECKPOINT_MODES = ("eval", "predict")


def keepsakes(run_dir: Path) -> list[str]:
    """Names of the files in `run_dir` worth keeping, sorted."""
    return sorted({p.name for pattern in KEEPSAKES for p in Path(run_dir).glob(pattern) if p.is_file()})


def _close_logs_in(run_dir: Path) -> None:
    # A closed FileHandler still attached reopens its file on the next record, so it is detached.
    root = logging.getLogger()
    for handler in list(root.handlers):
        filename = getattr(handler, "baseFilename", None)
        if filename and Path(filename).resolve().is_relative_to(run_dir.resolve()):
            root.removeHandler(handler)
            handler.close()


def remove_run_dir(run_dir: Path) -> None:
    """Delete `run_dir` (its log handler first) and its parent folder if that is left empty:
    the date folder under outputs/, or a checkpoint's eval/ folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    _close_logs_in(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        run_dir.parent.rmdir()  # only succeeds when empty
    except OSError:
        pass


class RunDir:
    """A run's dir, and whether this run may remove it: only a dir that held nothing but what
    Hydra made for this run when the run began (never a folder the user pointed
    hydra.run.dir at that already had files, nor the working directory or one above it)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        cwd = Path.cwd().resolve()
        self.ours = (self.path.is_dir() and set(os.listdir(self.path)) <= HYDRA_ONLY
                     and self.path.resolve() not in (cwd, *cwd.parents))

    def remove_if_unstarted(self) -> bool:
        """Remove the dir if it still holds only Hydra's files (a config that failed validation,
        or mode=summary); True when it was removed."""
        if self.ours and self.path.is_dir() and set(os.listdir(self.path)) <= HYDRA_ONLY:
            remove_run_dir(self.path)
            return True
        return False

    def tidy_after_failure(self, stepped: bool) -> Optional[str]:
        """After a run failed: remove the dir unless the run trained a step or left something
        worth keeping. The line that says which, or None when the dir stays as it always did
        (the run had trained, or the dir was not made for this run)."""
        if stepped or not self.ours or not self.path.is_dir():
            return None
        kept = keepsakes(self.path)
        if kept:
            return f"kept the run dir {self.path}: it holds {', '.join(kept)}"
        remove_run_dir(self.path)
        return f"removed the run dir {self.path}: the run failed before writing anything worth keeping"


def checkpoint_run_dir(ckpt: Optional[str]) -> Optional[Path]:
    """The swin-train run dir a checkpoint (or a run dir) belongs to, when it is one we may write
    in: it has Hydra's `.hydra/` and takes files. None otherwise."""
    if not ckpt:
        return None
    path = Path(str(ckpt)).expanduser()
    folder = path if path.is_dir() else path.parent
    if (folder / ".hydra").is_dir() and os.access(folder, os.W_OK):
        return folder
    return None


def run_dir_for(mode: Any, ckpt: Optional[str], stamp: str) -> str:
    """hydra.run.dir (the `swin_run_dir` resolver in conf/hydra/default.yaml): for mode=eval and
    mode=predict on a checkpoint in a run dir, `<that run dir>/eval/<date>_<time>`; otherwise
    `outputs/<date>/<time>`. `stamp` is `<date>/<time>`, the same on every torchrun rank."""
    mode_name = str(getattr(mode, "value", mode))
    beside = checkpoint_run_dir(ckpt) if mode_name in CHECKPOINT_MODES else None
    if beside is not None:
        return str(beside / "eval" / stamp.replace("/", "_"))
    return f"outputs/{stamp}"


def register_resolver() -> None:
    """Make `${swin_run_dir:...}` available to Hydra's config (before it composes one)."""
    if not OmegaConf.has_resolver("swin_run_dir"):
        OmegaConf.register_new_resolver("swin_run_dir", run_dir_for)
