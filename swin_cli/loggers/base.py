"""What every experiment tracker does, and the small helpers the trackers share.

A tracker takes the config once (when it is made), a row per epoch and, at the end, the results
and the files a run leaves behind; or, when the run stops early, an abort. The loop calls these
four whatever `logger=` names (swin_cli/records.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Optional

from omegaconf import OmegaConf

from swin_cli.errors import SwinCliError

# What a run leaves behind that a tracker should keep, besides the checkpoints.
ARTIFACTS = ("results.json", "metrics.csv", "per_class.csv", "curves.png", "lr.png", "confusion.png",
             "reliability.png")
# results.json's scalar scores a tracker logs at the end (the epoch rows' val_* come with each epoch).
FINAL_SCORES = ("test_acc", "test_loss", "test_balanced_acc", "test_macro_f1", "test_top5_acc", "test_ece",
                "test_nll", "best_val_acc", "best_val_score", "test_map", "test_map_micro", "test_f1", "best_val_map")


class MissingExtra(SwinCliError):
    """A tracker's library is not installed; the message names the pip extra that brings it."""


@dataclass
class TrackerSettings:
    """What every tracker's settings hold: whether `logger=` selected it (its conf/logger file
    sets enabled: true). A tracker's own settings dataclass adds its keys to these."""

    enabled: bool = False


class Tracker:
    """One run reporting to one experiment tracker.

    A subclass names the dataclass its `logger.<name>` keys fill (`Settings`, a
    TrackerSettings), the module it
    imports (`library`, checked at start so a missing one fails before the data is loaded) and
    the pip extra that installs it (`extra`). It is made with its settings, the whole config,
    the run dir and, for a job of a sweep, the sweep's folder.
    """

    Settings: ClassVar[type]
    library: ClassVar[str]
    extra: ClassVar[str]

    def __init__(self, settings: Any, cfg: Any, run_dir: Path, sweep_dir: Optional[Path] = None):
        self.settings, self.run_dir, self.sweep_dir = settings, Path(run_dir), sweep_dir

    def epoch(self, row: dict[str, Any], epoch: int) -> None:
        """One epoch's row of metrics.csv."""

    def finish(self, results: dict[str, Any], run_dir: Path) -> None:
        """The run ended: results.json's values, and the files in `run_dir` worth keeping."""

    def abort(self) -> None:
        """The run stopped without finishing (interrupted, failed). May follow finish()."""


def import_library(tracker: type[Tracker], name: str) -> ModuleType:
    """Import a tracker's library, or fail in one line with the pip command that installs it."""
    try:
        return importlib.import_module(tracker.library)
    except ImportError:
        raise MissingExtra(missing_message(tracker, name)) from None


def missing_message(tracker: type[Tracker], name: str) -> str:
    return f'logger={name} needs {tracker.library}: pip install "swin-cli[{tracker.extra}]"'


def run_name(run_dir: Path, sweep_dir: Optional[Path]) -> str:
    """The name a tracker shows for a run: its run dir's name, "job <n>" for a sweep's job."""
    return run_dir.name if sweep_dir is None else f"job {run_dir.name}"


def plain_config(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain dicts, lists and strings (enums by their value)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def final_scores(results: dict[str, Any]) -> dict[str, float]:
    """The FINAL_SCORES a run has (top-5 is None with 5 classes or fewer, for instance)."""
    return {k: float(results[k]) for k in FINAL_SCORES
            if isinstance(results.get(k), (int, float)) and not isinstance(results.get(k), bool)}


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The numeric values of an epoch row, without the epoch itself (trackers take it as the step)."""
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}
