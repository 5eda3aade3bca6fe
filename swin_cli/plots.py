"""PNG plots of a run (curves, lr schedule, confusion matrix, reliability diagram) and of several
runs side by side.

matplotlib is an optional extra (`pip install -e ".[plots]"`); without it every function here
is a no-op that says once how to get the plots, and training is unaffected.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from swin_cli.atomic_io import atomic_file

log = logging.getLogger("swin_cli")
_warned = False


def _pyplot() -> Optional[Any]:
    global _warned
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed, none opened
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        if not _warned:
            log.info('plots skipped: matplotlib is not installed (pip install "swin-cli[plots]")')
            _warned = True
        return None


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=110)


def plot_curves(history: Sequence[dict[str, Any]], path: Path) -> Optional[Path]:
    """Loss and accuracy per epoch, train and validation (and EMA when present)."""
    plt = _pyplot()
    if plt is None or not history:
        return None
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    # A multi-label run's rows score validation by mAP, which training has no counterpart of.
    score = ("map", "mAP (%)") if "val_map" in history[0] else ("acc", "accuracy (%)")
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, *score)):
        if f"train_{key}" in history[0]:
            ax.plot(epochs, [r[f"train_{key}"] for r in history], marker="o", label="train")
        for prefix, name in (("val", "val"), ("ema_val", "val (EMA)")):
            values = [r.get(f"{prefix}_{key}") for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [float("nan") if v is None else v for v in values], marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_lr(lrs: Sequence[float], steps_per_epoch: int, path: Path) -> Optional[Path]:
    plt = _pyplot()
    if plt is None or not lrs:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s / steps_per_epoch for s in range(len(lrs))], lrs)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("learning-rate schedule (per step)")
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> Optional[Path]:
    """Rows: true class, columns: predicted; cells show counts, colour shows the row share."""
    plt = _pyplot()
    if plt is None:
        return None
    import numpy as np

    counts = np.asarray(matrix)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:
        ticks = range(len(classes))
        ax.set_xticks(ticks, classes, rotation=45, ha="right")
        ax.set_yticks(ticks, classes)
        for i in ticks:
            for j in ticks:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"test confusion matrix ({counts.trace() / max(counts.sum(), 1):.1%} correct)")
    _save(fig, path)
    plt.close(fig)
    return path


def plot_reliability(bins: Sequence[dict[str, Any]], ece: float, path: Path) -> Optional[Path]:
    """The reliability diagram of the test: per equal-width confidence bin (metrics.py's), the
    accuracy of its images against their mean confidence; a calibrated model's bars meet the
    diagonal. The bars' shading is the share of images in the bin."""
    plt = _pyplot()
    if plt is None or not bins:
        return None
    width = 1.0 / len(bins)
    total = max(1, sum(b["count"] for b in bins))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="calibrated")
    for i, b in enumerate(bins):
        if not b["count"]:
            continue
        ax.bar(i * width, b["accuracy"], width=width, align="edge", edgecolor="black", linewidth=0.5,
               color="tab:blue", alpha=0.25 + 0.75 * b["count"] / total)
        ax.plot(i * width + width / 2, b["confidence"], marker="_", color="tab:red", markersize=10)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"test reliability (ECE {ece:.2f}%; red: mean confidence)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    _save(fig, path)
    plt.close(fig)
    return path


def plot_comparison(runs: dict[str, Sequence[dict[str, Any]]], path: Path) -> Optional[Path]:
    """Validation accuracy per epoch of several runs in one plot."""
    plt = _pyplot()
    if plt is None or not runs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    from matplotlib.ticker import MaxNLocator

    for label, history in runs.items():
        ax.plot([r["epoch"] for r in history], [r.get("val_acc") for r in history], marker="o", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_image_grid(images: Any, titles: Sequence[str], path: Path, heading: str) -> Optional[Path]:
    """A grid of (N, C, H, W) images in [0, 1], eight to a row, each with its title."""
    plt = _pyplot()
    if plt is None:
        return None
    columns = min(8, len(images))
    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        pixels = image.permute(1, 2, 0).numpy()
        ax.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray", vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        ax.set_title(title, fontsize=7)
    fig.suptitle(heading, fontsize=9)
    _save(fig, path)
    plt.close(fig)
    return path
