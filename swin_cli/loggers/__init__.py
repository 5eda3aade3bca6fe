"""Experiment trackers a run reports to besides its own files, chosen with `logger=`.

`logger` is a config group (conf/logger/): `logger=wandb` selects one tracker,
`logger=[tensorboard,mlflow]` several (Hydra merges their files), `logger=none` none. Every
tracker's settings sit under its own key (logger.mlflow.tracking_uri, logger.wandb.project, ...),
typed by the tracker's `Settings` dataclass so that a misspelt key fails at start naming it; the
file of a selected tracker sets its `enabled: true`. (Settings that are null until selected would
read better, but Hydra crashes on `logger.mlflow.experiment=x` when logger.mlflow is null.)

A new tracker is a module here (a `Tracker` subclass and its `Settings`, a TrackerSettings), a
conf/logger/<name>.yaml setting `<name>: {enabled: true}`, and its line in TRACKERS.
Importing this package imports none of the trackers' libraries: each imports its own when a run
opens it, and `missing_library` checks that they are installed before the data is loaded.
"""

from __future__ import annotations

import importlib.util
from dataclasses import field, make_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from swin_cli.loggers.base import ARTIFACTS, MissingExtra, Tracker, TrackerSettings, missing_message
from swin_cli.loggers.mlflow import MlflowTracker
from swin_cli.loggers.tensorboard import TensorBoardTracker
from swin_cli.loggers.wandb import WandbTracker

__all__ = ["ARTIFACTS", "LoggerConfig", "MissingExtra", "TRACKERS", "Tracker", "TrackerSettings", "missing_library",
           "open_trackers", "selected", "settings_problem"]

# `logger=` name -> tracker. Its settings live under logger.<name>.
TRACKERS: dict[str, type[Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MlflowTracker,
    "wandb": WandbTracker,
}

# `selected` reads every tracker's `enabled`.
assert all(issubclass(tracker.Settings, TrackerSettings) for tracker in TRACKERS.values())

# The schema of the `logger` key: one field per tracker, its settings. Built from TRACKERS, so
# that registering a tracker is all it takes to type its settings.
LoggerConfig = make_dataclass(
    "LoggerConfig", [(name, tracker.Settings, field(default_factory=tracker.Settings))
                     for name, tracker in TRACKERS.items()])


def selected(cfg: Any) -> list[str]:
    """The trackers `logger=` selected, in TRACKERS' order."""
    return [name for name in TRACKERS if cfg.logger[name].enabled]


def settings_problem(cfg: Any) -> Optional[str]:
    """A one-line error when a tracker that `logger=` did not select has a setting changed
    (`logger.wandb.project=x` without logger=wandb would otherwise do nothing), else None."""
    for name in TRACKERS:
        settings = cfg.logger[name]
        if settings.enabled:
            continue
        defaults = OmegaConf.structured(TRACKERS[name].Settings)
        changed = next((key for key in defaults if settings[key] != defaults[key]), None)
        if changed is not None:
            return (f"logger.{name}.{changed} is set but logger= does not select {name}: add logger={name}, "
                    f"or list it with the others: logger=[...,{name}]")
    return None


def missing_library(cfg: Any) -> Optional[str]:
    """A one-line error for the first selected tracker whose library is not installed, else None.
    Found without importing it (wandb and mlflow take seconds to import)."""
    for name in selected(cfg):
        tracker = TRACKERS[name]
        if importlib.util.find_spec(tracker.library) is None:
            return missing_message(tracker, name)
    return None


def open_trackers(cfg: Any, run_dir: Path, sweep_dir: Optional[Path] = None) -> list[Tracker]:
    """Start the trackers `logger=` selected. In a sweep each reports the sweep as one
    experiment (or group), a run per job. If one fails to start, those already started are
    closed as aborted before the error goes on."""
    trackers: list[Tracker] = []
    try:
        for name in selected(cfg):
            trackers.append(TRACKERS[name](cfg.logger[name], cfg, Path(run_dir), sweep_dir))
    except BaseException:
        for tracker in trackers:
            tracker.abort()
        raise
    return trackers
