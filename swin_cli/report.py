"""Tables of finished runs, and `swin-report DIR...` to compare them without writing code.

Each run dir holds results.json (or error.txt when it failed). A table reads them back, best
validation accuracy first; a sweep's table is printed and written as summary.csv/summary.md
when the sweep ends (swin_cli/sweep.py). swin-report takes run dirs or sweep dirs, prints
their table and writes val_acc_comparison.png (their validation-accuracy curves) into the
first DIR. Reading from disk keeps the tables right for launchers that run jobs elsewhere.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from swin_cli import plots
from swin_cli.atomic_io import write_text_atomic
from swin_cli.text import plural

ERROR_FILE = "error.txt"
COLUMNS = ["job", "overrides", "status", "best_val_acc", "test_acc", "test_balanced_acc", "test_macro_f1",
           "test_top5_acc", "epochs", "wall_time_s", "params", "error"]
# What a row takes from results.json.
RESULT_KEYS = ["best_val_acc", "test_acc", "test_balanced_acc", "test_macro_f1", "test_top5_acc", "epochs",
               "wall_time_s", "params", "select_metric", "best_val_score", "test_map", "test_f1"]
# The metric that chose each run's best checkpoint (train.select_metric) and its best value:
# shown when any run recorded one.
SELECTED = ["select_metric", "best_val_score"]
# A multi-label run's test scores (it has no accuracy): shown when any run has them.
MULTILABEL = ["test_map", "test_f1"]


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
            row.update(status="ok", **{k: data.get(k) for k in RESULT_KEYS})
        elif error.is_file():
            row.update(status="failed", error=error.read_text().strip())
        else:
            row.update(status="unfinished")
        rows.append(row)
    return sorted(rows, key=lambda r: (r["status"] != "ok", _rank(r)))


def _rank(row: dict[str, Any]) -> float:
    """Best first: by the score that chose the run's best.pt (lower first for loss), else by
    validation accuracy (results from before train.select_metric)."""
    score = row.get("best_val_score")
    if score is None:
        score = row.get("best_val_acc")
    if score is None:
        return float("inf")
    return score if row.get("select_metric") == "loss" else -score


def _overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    return (yaml.safe_load(path.read_text()) or []) if path.is_file() else []


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The table's columns: COLUMNS, and the selected metric's after the status when a run has one."""
    shown = list(COLUMNS)
    if any(row.get("test_map") is not None for row in rows):
        at = shown.index("test_top5_acc") + 1
        shown = shown[:at] + MULTILABEL + shown[at:]
    if any(row.get("select_metric") is not None for row in rows):
        at = shown.index("status") + 1
        shown = shown[:at] + SELECTED + shown[at:]
    return shown


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(rows), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(rows: list[dict[str, Any]]) -> str:
    shown = columns(rows)
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)).replace("|", "\\|") for c in shown) + " |")
    return "\n".join(lines) + "\n"


# The printed table's headers, short so that a sweep's row fits a line (the CSV and Markdown
# files keep the full names).
SHORT_HEADERS = {"select_metric": "selected by", "best_val_score": "best val", "best_val_acc": "val acc",
                 "test_acc": "test acc", "test_balanced_acc": "test bal", "test_macro_f1": "test F1",
                 "test_top5_acc": "test top5", "test_map": "test mAP", "wall_time_s": "time s"}


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    shown = columns(rows)
    for column in shown:
        left = column in ("overrides", "status", "error", "select_metric")
        table.add_column(SHORT_HEADERS.get(column, column), justify="left" if left else "right",
                         no_wrap=column == "overrides")
    for row in rows:
        style = None if row["status"] == "ok" else "red"
        table.add_row(*(_cell(row.get(c)) for c in shown), style=style)
    # Off a terminal rich assumes 80 columns; a log file is better served by whole rows.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = job_rows(sweep_dir)
    write_text_atomic(sweep_dir / "summary.csv", to_csv(rows))
    write_text_atomic(sweep_dir / "summary.md", to_markdown(rows))
    print_table(rows, f"sweep {sweep_dir} ({plural(len(rows), 'job')}, best validation accuracy first)")
    print(f"summary written to {sweep_dir / 'summary.csv'} and {sweep_dir / 'summary.md'}")
    return rows



USAGE = "usage: swin-report RUN_OR_SWEEP_DIR [MORE_DIRS ...]"


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def collect(paths: list[Path]) -> list[Path]:
    runs: list[Path] = []
    for path in paths:
        jobs = job_dirs(path)
        if jobs:
            runs += jobs
        elif (path / "metrics.csv").is_file() or (path / ERROR_FILE).is_file():
            runs.append(path)
        else:
            raise SystemExit(f"swin-report: error: {path} is neither a run dir nor a sweep dir")
    return runs


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + (__doc__ or "").strip())
        raise SystemExit(0 if args else 2)
    paths = [Path(a) for a in args]
    for path in paths:
        if not path.is_dir():
            raise SystemExit(f"swin-report: error: {path} is not a folder")
    runs = collect(paths)
    rows = run_rows(runs)
    print_table(rows, f"{plural(len(rows), 'run')}, best validation accuracy first")
    labels = {row["run_dir"]: row["overrides"] or row["job"] for row in rows}
    curves = {labels[str(r)]: h for r in runs if (h := _history(r))}
    out = plots.plot_comparison(curves, paths[0] / "val_acc_comparison.png")
    if out is not None:
        print(f"comparison plot written to {out}")


if __name__ == "__main__":
    main()
