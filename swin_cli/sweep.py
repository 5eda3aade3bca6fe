"""What a sweep (`swin-train -m ...`) starts and ends with, as a Hydra callback: at the start,
a check that the launcher can run here; at the end, the table of every job (swin_cli/report.py),
and exit code 1 when any job failed. A failed job leaves its error line in error.txt in its run
dir, where the table finds it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from swin_cli import report
from swin_cli.atomic_io import write_text_atomic
from swin_cli.text import plural


def failed_job(run_dir: Path, message: str, hydra_cfg: Any, exc: Exception) -> None:
    """Leave the job's error line where the summary will find it, then end the job the way
    the sweeper copes with: Optuna records a raised trial as FAIL and goes on, whereas
    Hydra's basic sweeper would stop the whole sweep, so there the job just returns None."""
    try:
        write_text_atomic(run_dir / report.ERROR_FILE, message + "\n")
    except OSError:
        pass
    if "optuna" in str(hydra_cfg.sweeper.get("_target_", "")).lower():
        raise exc
    return None


def launcher_problem(config: DictConfig) -> str | None:
    """Why the sweep's launcher cannot run on this machine, or None. submitit's SLURM launcher
    needs srun; without it submitit raises a 38-line traceback mid-launch."""
    target = str(config.hydra.launcher.get("_target_", ""))
    if target.endswith("SlurmLauncher") and shutil.which("srun") is None:
        return ("hydra/launcher=slurm submits jobs to SLURM, but there is no SLURM here (no srun on PATH); "
                "use hydra/launcher=submitit_local to run the same jobs on this machine")
    return None


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem = launcher_problem(config)
        if problem is not None:
            print(f"{config.hydra.job.name}: error: {problem}", file=sys.stderr, flush=True)
            raise SystemExit(1)  # before any job or sweep dir exists

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        # Jobs may have run in other processes (joblib, submitit): count failures from disk.
        failed = [r for r in report.write_summary(sweep_dir) if r["status"] == "failed"]
        if failed:
            print(f"{config.hydra.job.name}: error: {plural(len(failed), 'sweep job')} failed (see the summary above)",
                  file=sys.stderr, flush=True)
            # SystemExit, not an Exception: Hydra turns a callback's exceptions into warnings.
            raise SystemExit(1)
