"""What a sweep (`swin-train -m ...`) ends with: one table of every job, best first.

Each job leaves results.json (or error.txt when it failed) in its run dir; at the end of the
multirun, Hydra calls SweepSummary, which reads them back, prints a rich table, and writes it
as summary.csv and summary.md in the sweep dir. Reading from disk rather than from Hydra's
in-memory returns keeps the summary right for launchers that run jobs in other processes.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Optional

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

ERROR_FILE = "error.txt"
COLUMNS = ["job", "overrides", "status", "best_val_acc", "test_acc", "epochs", "wall_time_s", "params", "error"]

# Set when a sweep had failed jobs, so the command can exit non-zero after the summary.
failed_jobs: list[str] = []


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The run dirs of a sweep (each holds .hydra/overrides.yaml), in job order."""
    return sorted((p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")),
                  key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else p.name))


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    return run_rows(job_dirs(sweep_dir))


def run_rows(jobs: list[Path]) -> list[dict[str, Any]]:
    """One row per run dir, best validation accuracy first, failed and unfinished runs last."""
    overrides = {job: _overrides(job) for job in jobs}
    # Only what tells the jobs apart: overrides shared by every job are left out.
    shared = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job.name, "overrides": " ".join(o for o in overrides[job] if o not in shared),
                               "run_dir": str(job)}
        results, error = job / "results.json", job / ERROR_FILE
        if results.is_file():
            data = json.loads(results.read_text())
            row.update(status="ok", **{k: data.get(k) for k in COLUMNS[3:8]})
        elif error.is_file():
            row.update(status="failed", error=error.read_text().strip())
        else:
            row.update(status="unfinished")
        rows.append(row)
    return sorted(rows, key=lambda r: (r["status"] != "ok", -(r.get("best_val_acc") or -1.0)))


def _overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    return (yaml.safe_load(path.read_text()) or []) if path.is_file() else []


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)).replace("|", "\\|") for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="right" if column not in ("overrides", "status", "error") else "left")
    for row in rows:
        style = None if row["status"] == "ok" else "red"
        table.add_row(*(_cell(row.get(c)) for c in COLUMNS), style=style)
    # Off a terminal rich assumes 80 columns; a log file is better served by whole rows.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = job_rows(sweep_dir)
    (sweep_dir / "summary.csv").write_text(to_csv(rows))
    (sweep_dir / "summary.md").write_text(to_markdown(rows))
    print_table(rows, f"sweep {sweep_dir} ({len(rows)} jobs, best validation accuracy first)")
    print(f"summary written to {sweep_dir / 'summary.csv'} and {sweep_dir / 'summary.md'}")
    return rows


def failed_job(run_dir: Path, message: str, hydra_cfg: Any, exc: Exception) -> None:
    """Leave the job's error line where the summary will find it, then end the job the way
    the sweeper copes with: Optuna records a raised trial as FAIL and goes on, whereas
    Hydra's basic sweeper would stop the whole sweep, so there the job just returns None."""
    try:
        (run_dir / ERROR_FILE).write_text(message + "\n")
    except OSError:
        pass
    failed_jobs.append(str(run_dir))
    if "optuna" in str(hydra_cfg.sweeper.get("_target_", "")).lower():
        raise exc
    return None


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            rows = write_summary(sweep_dir)
            # Jobs may have run in other processes (joblib, submitit): count failures from disk.
            failed_jobs[:] = [r["run_dir"] for r in rows if r["status"] == "failed"]


def exit_code_after_sweep() -> Optional[int]:
    return 1 if failed_jobs else None
