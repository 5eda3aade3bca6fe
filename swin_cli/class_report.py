"""The per-class table of a test (precision, recall, F1, support per class) as people read it:
per_class.csv, and the line under a run's closing line (and swin-eval's) that names the worst
classes by recall and, when the data is imbalanced, the rarest class."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional, Sequence

from swin_cli.atomic_io import write_text_atomic

CSV_NAME = "per_class.csv"
CSV_FIELDS = ("class", "precision", "recall", "f1", "support")
# A multi-label table (multilabel_metrics.py) adds each class's average precision and threshold.
MULTILABEL_FIELDS = (*CSV_FIELDS, "ap", "threshold")
# The data counts as imbalanced when its commonest class has this many times the images of its
# rarest, or when a class's recall is under this share of the mean recall.
IMBALANCE_RATIO = 3.0
FAR_BELOW_MEAN = 0.5
WORST_SHOWN = 3


def named(per_class: Sequence[dict[str, Any]], classes: Sequence[str]) -> list[dict[str, Any]]:
    """Scores.per_class with each class's name instead of its index."""
    return [{**row, "class": classes[row["class"]] if row["class"] < len(classes) else str(row["class"])}
            for row in per_class]


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    multilabel = bool(rows) and "ap" in rows[0]
    fields = MULTILABEL_FIELDS if multilabel else CSV_FIELDS
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        # An empty cell for a class without positives, which has no AP.
        writer.writerow({**row, **{k: f"{row[k]:.4f}" for k in ("precision", "recall", "f1", "ap", "threshold")
                                   if row.get(k) is not None}})
    return buffer.getvalue()


def write_csv(rows: Sequence[dict[str, Any]], run_dir: Path) -> Path:
    path = Path(run_dir) / CSV_NAME
    write_text_atomic(path, to_csv(rows))
    return path


def summary_line(rows: Sequence[dict[str, Any]], train_counts: Optional[Sequence[int]] = None,
                 classes: Sequence[str] = ()) -> str:
    """One line: the worst classes by recall (multi-label: by average precision) and the best
    one; when the data is imbalanced, its ratio and rarest class (by the training counts when
    known, else the test support)."""
    score = "ap" if rows and "ap" in rows[0] else "recall"
    scored = sorted((r for r in rows if r["support"] > 0), key=lambda r: (r[score], str(r["class"])))
    if not scored:
        return f"per class: no labelled images; table in {CSV_NAME}"
    worst = ", ".join(f"{r['class']} ({100 * r[score]:.1f}%)" for r in scored[:WORST_SHOWN])
    best = scored[-1]
    named_score = "AP" if score == "ap" else score
    line = f"per class {named_score}: worst {worst}; best {best['class']} ({100 * best[score]:.1f}%)"
    note = imbalance(rows, train_counts, classes)
    return line + (f" | {note}" if note else "") + f" | table in {CSV_NAME}"


def imbalance(rows: Sequence[dict[str, Any]], train_counts: Optional[Sequence[int]] = None,
              classes: Sequence[str] = ()) -> Optional[str]:
    """What makes the data imbalanced, in words, or None when it is not: a class ratio of
    IMBALANCE_RATIO or more, or a class whose recall is far below the mean."""
    if train_counts is not None and len(classes) == len(train_counts):
        counts, where = dict(zip(classes, train_counts)), "train"
    else:
        counts, where = {r["class"]: r["support"] for r in rows}, "test"
    held = {name: n for name, n in counts.items() if n > 0}
    recalls = [r["recall"] for r in rows if r["support"] > 0]
    mean_recall = sum(recalls) / len(recalls) if recalls else 0.0
    uneven = bool(recalls) and min(recalls) < FAR_BELOW_MEAN * mean_recall
    if not held:
        return None
    rarest = min(held, key=lambda name: (held[name], str(name)))
    ratio = max(held.values()) / held[rarest]
    if ratio >= IMBALANCE_RATIO:
        return f"imbalanced {ratio:.0f}:1 ({where}), rarest class {rarest} ({held[rarest]} {where} images)"
    if uneven:
        return f"uneven recall (mean {100 * mean_recall:.1f}%), rarest class {rarest} ({held[rarest]} {where} images)"
    return None
