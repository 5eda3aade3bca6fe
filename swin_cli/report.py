"""`swin-report DIR...`: compare finished runs without writing code.

Each DIR is a run dir or a sweep dir (whose job dirs are then read). Prints the table of runs,
best validation accuracy first, and writes val_acc_comparison.png (their validation-accuracy
curves) into the first DIR.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from swin_cli import plots, sweep

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
        jobs = sweep.job_dirs(path)
        if jobs:
            runs += jobs
        elif (path / "metrics.csv").is_file() or (path / sweep.ERROR_FILE).is_file():
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
    rows = sweep.run_rows(runs)
    sweep.print_table(rows, f"{len(rows)} run(s), best validation accuracy first")
    labels = {row["run_dir"]: row["overrides"] or row["job"] for row in rows}
    curves = {labels[str(r)]: h for r in runs if (h := _history(r))}
    out = plots.plot_comparison(curves, paths[0] / "val_acc_comparison.png")
    if out is not None:
        print(f"comparison plot written to {out}")


if __name__ == "__main__":
    main()
