"""Validation accuracy per epoch on CIFAR-10: the reference notebook vs swin-cli's runs.

    python benchmarks/plot_learning_curves.py      # writes benchmarks/learning_curves.png

Reads the metrics.csv files copied into benchmarks/runs/ from the runs recorded in
RESULTS.md; the notebook's numbers are its published per-epoch table.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
NOTEBOOK_VAL = [33.9, 37.8, 40.5, 43.0, 44.3, 47.0, 47.7, 48.1, 48.4, 50.0]
RUNS = {
    "swin-cli experiment=cifar10_seed (the notebook's recipe)": "cifar10_seed_metrics.csv",
    "swin-cli experiment=cifar10_nano (our recipe: conv stem, same budget)": "cifar10_nano_metrics.csv",
}


def main() -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.plot(range(1, 11), NOTEBOOK_VAL, marker="o", label="reference notebook (simplified Swin)")
    for label, name in RUNS.items():
        path = HERE / "runs" / name
        if path.is_file():
            with open(path) as f:
                rows = list(csv.DictReader(f))
            ax.plot([int(r["epoch"]) for r in rows], [float(r["val_acc"]) for r in rows], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("CIFAR-10 validation accuracy (%)")
    ax.set_xticks(range(1, 11))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "learning_curves.png", dpi=110)
    print(f"wrote {HERE / 'learning_curves.png'}")


if __name__ == "__main__":
    main()
