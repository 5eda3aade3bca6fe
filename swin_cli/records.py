"""What a run writes and shows as it goes: metrics.csv/jsonl, the epoch line, results.json,
the trackers (TensorBoard, MLflow), the plots, and the run dir's own upkeep."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch

from swin_cli import atomic_io, class_report, plots, summary
from swin_cli.build import lr_factor
from swin_cli.choices import plain
from swin_cli.errors import SwinCliError
from swin_cli.loggers import open_trackers
from swin_cli.metrics import Scores
from swin_cli.multilabel_metrics import MultiLabelScores
from swin_cli.sizes import size_text
from swin_cli.text import plural

log = logging.getLogger("swin_cli")

METRIC_FIELDS = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "ema_val_loss", "ema_val_acc", "lr",
                 "epoch_time_s", "data_time_s", "train_img_per_s", "skipped_images",
                 # Added with issue 27, after the older columns so that those keep their places.
                 "val_balanced_acc", "val_macro_f1", "val_top5_acc",
                 "ema_val_balanced_acc", "ema_val_macro_f1", "ema_val_top5_acc"]
# A data.task=multilabel run's columns: per-label training accuracy at 0.5, and the validation
# scores of multilabel_metrics.py (its F1 at 0.5 until the thresholds are chosen after training).
MULTILABEL_METRIC_FIELDS = ["epoch", "step", "train_loss", "train_label_acc", "val_loss", "val_map", "val_map_micro",
                            "val_f1", "ema_val_loss", "ema_val_map", "ema_val_map_micro", "ema_val_f1", "lr",
                            "epoch_time_s", "data_time_s", "train_img_per_s", "skipped_images"]
# Fields that depend on wall-clock time; everything else is reproducible bit for bit on CPU.
TIMING_FIELDS = ("epoch_time_s", "data_time_s", "train_img_per_s")
# curves.png is redrawn after an epoch at most this often, and always at the end: drawing it
# took 0.15 s on the CPU, which for epochs of a few seconds (cifar10_swin on a GPU) is ~3% of a run.
CURVES_EVERY_S = 30.0


class RunRecords:
    """The files and trackers of one run. Under torchrun only rank 0 writes (active=True); the
    other ranks hold an inactive one, so the loop calls it the same way on every rank."""

    def __init__(self, cfg: Any, run_dir: Path, sweep_dir: Optional[Path] = None, active: bool = True):
        self.cfg, self.run_dir, self.active = cfg, Path(run_dir), active
        self.trackers = open_trackers(cfg, self.run_dir, sweep_dir) if active else []
        self.fields = MULTILABEL_METRIC_FIELDS if plain(cfg.data.task) == "multilabel" else METRIC_FIELDS
        self.curves_drawn: Optional[tuple[int, float]] = None  # (rows, monotonic time) of the last drawing

    def start(self, model: Any, data: Any, device: torch.device, steps_per_epoch: int, batch_size: int,
              processes: int) -> None:
        """The start panel (its FLOP count runs a forward pass: once, on rank 0 only)."""
        if self.active:
            log.info(summary.start_panel(self.cfg, model, data, self.run_dir, summary.device_name(device),
                                         steps_per_epoch, batch_size, processes))

    def metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite metrics.csv and metrics.jsonl whole (a resumed run carries the earlier rows)."""
        if not self.active:
            return
        buffer = io.StringIO()
        # Keys only some runs have (train_size, of train.resolution_schedule) stay in metrics.jsonl,
        # so metrics.csv keeps the same columns for every run.
        writer = csv.DictWriter(buffer, fieldnames=self.fields, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
        atomic_io.write_text_atomic(self.run_dir / "metrics.csv", buffer.getvalue())
        atomic_io.write_text_atomic(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))

    def epoch(self, history: list[dict[str, Any]], improved: bool) -> None:
        """After an epoch: its row (the last of `history`) everywhere, and its line on screen;
        `improved` marks a new best validation accuracy with `*`."""
        if not self.active:
            return
        row = history[-1]
        self.metrics(history)
        for tracker in self.trackers:
            tracker.epoch(row, row["epoch"])
        if self.curves_drawn is None or time.monotonic() - self.curves_drawn[1] >= CURVES_EVERY_S:
            self.draw_curves(history)
        log.info(epoch_line(row, self.cfg.epochs) + ("  *" if improved else ""))

    def draw_curves(self, history: list[dict[str, Any]]) -> None:
        plots.plot_curves(history, self.run_dir / "curves.png")
        self.curves_drawn = (len(history), time.monotonic())

    def finish(self, results: dict[str, Any], history: list[dict[str, Any]], test: Scores | MultiLabelScores,
               total_steps: int, steps_per_epoch: int) -> None:
        """At the end: the plots, per_class.csv, results.json, the trackers' final values."""
        if not self.active:
            return
        if self.curves_drawn is None or self.curves_drawn[0] != len(history):
            self.draw_curves(history)
        lrs = [self.cfg.optimizer.lr * lr_factor(s, self.cfg.scheduler, total_steps, steps_per_epoch)
               for s in range(total_steps)]
        plots.plot_lr(lrs, steps_per_epoch, self.run_dir / "lr.png")
        if not isinstance(test, MultiLabelScores):  # a confusion matrix and confidence bins need one class per image
            plots.plot_confusion(test.confusion.tolist(), results["classes"], self.run_dir / "confusion.png")
            plots.plot_reliability(test.bins, test.ece, self.run_dir / "reliability.png")
        class_report.write_csv(results["test_per_class"], self.run_dir)
        atomic_io.write_text_atomic(self.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
        for tracker in self.trackers:
            tracker.finish(results, self.run_dir)

    def final_line(self, results: dict[str, Any]) -> None:
        multilabel = "test_map" in results
        if multilabel:
            test = (f"test mAP {results['test_map']:.2f}% (micro {results['test_map_micro']:.2f}%) "
                    f"F1 {results['test_f1']:.2f}% (loss {results['test_loss']:.4f})")
        else:
            ece = f", ECE {results['test_ece']:.2f}%" if results.get("test_ece") is not None else ""
            test = (f"test acc {results['test_acc']:.2f}%{closing_scores(results)} "
                    f"(loss {results['test_loss']:.4f}{ece})")
        log.info(f"{best_val_text(results)} | {test} | {results['wall_time_s']:.1f}s | {self.run_dir}")
        if results.get("test_per_class") is not None:
            counts = results.get("train_label_counts" if multilabel else "train_class_counts")
            log.info(class_report.summary_line(results["test_per_class"], counts, results["classes"]))
        if self.active:
            log.info(summary.end_panel(self.run_dir))

    def abort(self) -> None:
        for tracker in self.trackers:
            tracker.abort()


# How the closing line names the metric that chose best.pt (train.select_metric).
SHORT_METRIC_NAMES = {"acc": "acc", "balanced_acc": "bal", "macro_f1": "macro-F1", "map": "mAP", "loss": "loss"}


def best_val_text(results: dict[str, Any]) -> str:
    """'best val acc 83.33% (epoch 8)', naming the metric that chose best.pt."""
    metric = results.get("select_metric") or "acc"
    score = results["best_val_acc"] if metric == "acc" else results.get("best_val_score")
    if score is None:
        return f"best val {SHORT_METRIC_NAMES.get(metric, metric)} n/a"
    value = f"{score:.4f}" if metric == "loss" else f"{score:.2f}%"
    return f"best val {SHORT_METRIC_NAMES.get(metric, metric)} {value} (epoch {results['best_epoch']})"


def closing_scores(results: dict[str, Any]) -> str:
    """The closing line's scores beside test accuracy: balanced accuracy, top-5 when there is one."""
    text = ""
    if results.get("test_balanced_acc") is not None:
        text += f" bal {results['test_balanced_acc']:.2f}%"
    if results.get("test_top5_acc") is not None:
        text += f" top5 {results['test_top5_acc']:.2f}%"
    return text


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    width = len(str(epochs))
    data_share = row["data_time_s"] / max(row["epoch_time_s"], 1e-9)
    train, val = multilabel_scores_text(row) if "val_map" in row else single_label_scores_text(row)
    return (f"epoch {row['epoch']:>{width}}/{epochs} | {train} | {val} | lr {row['lr']:.2e} | "
            f"{row['epoch_time_s']:.1f}s (data {data_share:.0%}) {row['train_img_per_s']:.0f} img/s"
            + (f" | size {size_text(row['train_size'], unit='')}" if row.get("train_size") else "")
            + (f" | {row['skipped_images']} unreadable skipped" if row.get("skipped_images") else ""))


def multilabel_scores_text(row: dict[str, Any]) -> tuple[str, str]:
    """The epoch line's train and val parts of a multi-label run's row."""
    train = f"train loss {row['train_loss']:.4f} label acc {row['train_label_acc']:6.2f}%"
    if row["val_map"] is None:
        return train, "val n/a"
    val = f"val loss {row['val_loss']:.4f} map {row['val_map']:5.2f}% f1 {row['val_f1']:5.2f}%"
    if row.get("ema_val_map") is not None:
        val += f" (ema map {row['ema_val_map']:5.2f}%)"
    return train, val


def single_label_scores_text(row: dict[str, Any]) -> tuple[str, str]:
    """The epoch line's train and val parts of a row with one class per image."""
    val = (f"val loss {row['val_loss']:.4f} acc {row['val_acc']:6.2f}%" if row["val_acc"] is not None
           else "val n/a")
    # Rows from before issue 27 (a resumed run's) have no balanced or top-5 accuracy.
    if row.get("val_balanced_acc") is not None:
        val += f" bal {row['val_balanced_acc']:6.2f}%"
    if row.get("val_top5_acc") is not None:
        val += f" top5 {row['val_top5_acc']:6.2f}%"
    if row["ema_val_acc"] is not None:
        val += f" (ema {row['ema_val_acc']:6.2f}%)"
    return f"train loss {row['train_loss']:.4f} acc {row['train_acc']:6.2f}%", val


def mean(values: list[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def prepare_run_dir(run_dir: Path) -> None:
    """Before a run writes anything: fail now if the run dir cannot take files (read-only, full
    disk), and remove what a killed write left there."""
    probe = run_dir / ".write-test"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        probe.unlink(missing_ok=True) if run_dir.is_dir() else None
        raise SwinCliError(f"cannot write to the run dir {run_dir}: {exc.strerror or exc}") from None
    clean_up_after_a_kill(run_dir)


def clean_up_after_a_kill(run_dir: Path) -> None:
    """Remove what a killed checkpoint write left in `run_dir`, and say so."""
    removed = atomic_io.remove_stale_temp_files(run_dir)
    if removed:
        names = ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else "")
        log.info(f"removed {plural(len(removed), 'temporary file')} an interrupted write left in {run_dir}: {names}")


class EpochProgress:
    """A live rich bar on a terminal; nothing on a pipe (the epoch line says it all there)."""

    def __init__(self, enabled: bool, epoch: int, epochs: int, total_steps: int, done_steps: int,
                 decisions_per_image: int = 1):
        self.bar = None
        self.decisions_per_image = decisions_per_image  # multi-hot labels: one per class
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=True)
        self.task = self.bar.add_task("train", total=total_steps, completed=done_steps, stats="")
        self.bar.start()

    def update(self, done_steps: int, running: dict[str, float], sums: torch.Tensor, seconds: float) -> None:
        """Show the epoch's loss, accuracy and speed so far: `running` from before a resume,
        `sums` ([loss sum, correct, images] on the device) since this part of the epoch began."""
        if self.bar is None:
            return
        loss_sum, correct, images = sums.tolist()
        seen = max(1, running["seen"] + images)
        accuracy = 100 * (running["correct"] + correct) / (seen * self.decisions_per_image)
        stats = (f"loss {(running['loss'] + loss_sum) / seen:.4f} acc {accuracy:5.2f}% "
                 f"{images / max(seconds, 1e-9):.0f} img/s")
        self.bar.update(self.task, completed=done_steps, stats=stats)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class PrepTimer:
    """Time spent preparing batches (copy, augmentation, normalisation, mixing).

    On a CPU that is host wall time. On a GPU the host only queues the kernels, so a pair of
    CUDA events brackets them in the stream and the time between the events is read at the log
    interval, when the loop synchronises anyway: reading it every step would stall the queue.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[Any, Any]] = []
        self.seconds = 0.0
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pending.append((self._start, end))
        else:
            self.seconds += time.perf_counter() - self._start

    def collect(self) -> float:
        """Seconds measured since the last call (waits for the last bracketed kernels on a GPU)."""
        if self.pending:
            self.pending[-1][1].synchronize()
            self.seconds += sum(start.elapsed_time(end) for start, end in self.pending) / 1000.0
            self.pending.clear()
        seconds, self.seconds = self.seconds, 0.0
        return seconds
