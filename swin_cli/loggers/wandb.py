"""logger=wandb: one Weights & Biases run per swin-train run (the optional `wandb` extra).

The run gets the resolved config, a row of metrics per epoch (step = epoch), the scalar results
as its summary, and copies of results.json, metrics.csv and the plots as files. By default it
lives in <run dir>/wandb, so an offline run travels with its run dir (`wandb sync` uploads it).

Mode: what logger.wandb.mode says; unset, what WANDB_MODE says; neither, online when wandb holds
credentials (WANDB_API_KEY, or a `wandb login`) and offline otherwise. A run never stops to ask
for a login. wandb's service process is shut down when the run ends or stops, so that nothing
outlives it (a sweep's jobs in one process, a test suite).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from swin_cli.errors import SwinCliError
from swin_cli.loggers.base import ARTIFACTS, Tracker, TrackerSettings, import_library, numbers, plain_config, run_name

log = logging.getLogger("swin_cli")

WandbMode = Enum("WandbMode", [(m, m) for m in ("online", "offline", "disabled")], type=str)  # type: ignore[misc]


@dataclass
class WandbSettings(TrackerSettings):
    project: str = "swin-cli"
    # The team or user the run belongs to; null: the login's default entity.
    entity: Optional[str] = None
    # Runs shown together; null: a sweep's jobs are grouped under the sweep's folder.
    group: Optional[str] = None
    # online, offline or disabled; null: WANDB_MODE, else online with a login, offline without.
    mode: Optional[WandbMode] = None
    # null: the run dir's name ("job <n>" in a sweep).
    name: Optional[str] = None
    # The folder wandb writes its run into (under wandb/); null: the run dir.
    dir: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    # Copy results.json, metrics.csv and the plots into the run's files at the end.
    save_files: bool = True


class WandbTracker(Tracker):
    Settings = WandbSettings
    library = "wandb"
    extra = "wandb"

    def __init__(self, settings: Any, cfg: Any, run_dir: Path, sweep_dir: Optional[Path] = None):
        super().__init__(settings, cfg, run_dir, sweep_dir)
        self.wandb = wandb = import_library(WandbTracker, "wandb")
        mode = choose_mode(wandb, getattr(settings.mode, "value", settings.mode))
        where = Path(settings.dir).expanduser() if settings.dir else self.run_dir
        where.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=settings.project, entity=settings.entity, mode=mode,
                group=settings.group or (str(sweep_dir) if sweep_dir else None),
                name=settings.name or run_name(self.run_dir, sweep_dir), tags=list(settings.tags),
                dir=str(where), config=plain_config(cfg),
                # console=off: no capture of stdout, which the progress bar and the log own.
                # silent: the run's lines below say where it went, instead of wandb's banner.
                settings=wandb.Settings(console="off", silent=True))
        except wandb.errors.Error as exc:
            wandb.teardown()
            raise SwinCliError(f"logger=wandb could not start a run: {first_line(exc)}") from None
        self.open = True
        if self.run.offline:
            offline_dir = Path(self.run.dir).parent
            log.info(f"wandb: offline run in {offline_dir}; upload it with: wandb sync {offline_dir}")
        elif not self.run.disabled and self.run.url:
            log.info(f"wandb: {self.run.url}")

    def epoch(self, row: dict[str, Any], epoch: int) -> None:
        self.run.log(numbers(row), step=epoch)

    def finish(self, results: dict[str, Any], run_dir: Path) -> None:
        self.run.summary.update(summary_values(results))
        if self.settings.save_files and not self.run.disabled:
            self.save_files(run_dir)
        self.close(exit_code=0)

    def save_files(self, run_dir: Path) -> None:
        """Copies, not wandb's default links: the files stay right if the run dir moves, and an
        offline run holds all that `wandb sync` uploads."""
        files_dir = Path(self.run.dir)
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, files_dir / name)
                self.run.save(str(files_dir / name), base_path=str(files_dir), policy="now")

    def abort(self) -> None:
        # The error that stopped the run is the one to report, not a failure to close.
        try:
            self.close(exit_code=1)
        except Exception as exc:
            log.warning(f"wandb: the run could not be closed: {first_line(exc)}")

    def close(self, exit_code: int) -> None:
        """Finish the run (exit_code 1 marks it failed) and end wandb's service process; once."""
        if not self.open:
            return
        self.open = False
        try:
            self.run.finish(exit_code=exit_code)
        finally:
            self.wandb.teardown()


def choose_mode(wandb: Any, mode: Optional[str]) -> Optional[str]:
    """The mode to start the run in, without ever asking for a login (None: WANDB_MODE's)."""
    if mode:
        return mode
    if os.environ.get("WANDB_MODE"):
        return None  # wandb reads it, with the spellings it accepts
    return "online" if wandb.login(prompt=False, verify=False) else "offline"


def summary_values(results: dict[str, Any]) -> dict[str, Any]:
    """The scalar entries of results.json (accuracies, losses, times, counts, names): the run's
    summary. Lists (classes, the confusion matrix) stay in results.json."""
    return {k: v for k, v in results.items() if isinstance(v, (int, float, str, bool))}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
