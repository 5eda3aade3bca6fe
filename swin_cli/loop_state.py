"""Where a training loop stands, and why it stopped.

`LoopState` is everything a checkpoint needs to continue the loop: the position (epoch, step),
the current epoch's running sums, the metrics so far, the best validation score and the
early-stopping count. Its fields are its checkpoint keys, flat at the top level of the
checkpoint as they always were, so checkpoints of earlier versions load unchanged.

`Stop` is the one value that says why a run ended, recorded in results.json; `TimeLimit` is
the clock behind one of the reasons.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from swin_cli import distributed
from swin_cli.text import plural

# Why a run ends. A run that reaches its last epoch, meets its plateau or its time limit tests
# its best weights and records the stop in results.json; the others end with an error exit
# (signal: 128 + its number, with a resumable checkpoint) and write no results.
STOP_REASONS = ("finished", "plateau", "time_limit", "signal", "nan_loss", "loader_died")

# What train.select_metric may choose best.pt (and early stopping) by, and which way is better.
HIGHER_IS_BETTER = {"acc": True, "balanced_acc": True, "macro_f1": True, "map": True, "loss": False}
METRIC_NAMES = {"acc": "accuracy", "balanced_acc": "balanced accuracy", "macro_f1": "macro-F1", "map": "mAP",
                "loss": "loss"}
# train.select_metric=auto takes balanced accuracy when the largest training class has this many
# times the images of the smallest: there plain accuracy rewards ignoring the rare classes.
IMBALANCED_RATIO = 3.0


def choose_select_metric(setting: str, class_counts: Optional[Sequence[int]],
                         multilabel: bool = False) -> tuple[str, str]:
    """The metric that picks best.pt (train.select_metric, `auto` resolved from the training
    split's class counts, or for multi-hot labels mAP), and why, in words for the start panel."""
    if setting != "auto":
        return setting, f"train.select_metric={setting}"
    if multilabel:
        return "map", "auto: multi-label data, ranked per class (macro mean average precision)"
    present = [count for count in class_counts or () if count > 0]
    if not present:
        return "acc", "auto: the class counts are unknown before reading the data"
    ratio = max(present) / min(present)
    if ratio >= IMBALANCED_RATIO:
        return "balanced_acc", (f"auto: the training classes are imbalanced ({ratio:.0f}x from the largest to the "
                                f"smallest), where plain accuracy rewards ignoring the rare ones")
    return "acc", f"auto: the training classes are balanced (at most {ratio:.1f}x apart)"


@dataclass(frozen=True)
class Stop:
    """Why a run stopped, at which epoch (the last one completed, or for a stop in the middle
    of an epoch the one under way), and the details in words."""
    reason: str
    epoch: int
    detail: str

    def __post_init__(self) -> None:
        assert self.reason in STOP_REASONS, self.reason

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fresh_running() -> dict[str, float]:
    """Sums over the current epoch's steps so far (saved in mid-epoch checkpoints)."""
    return {"loss": 0.0, "correct": 0, "seen": 0, "time": 0.0, "data_time": 0.0}


@dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0
    global_step: int = 0
    running: dict[str, float] = field(default_factory=fresh_running)
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics row per epoch
    best_val_acc: float = -1.0  # validation accuracy of the best epoch (chosen by the selected metric)
    best_val_score: Optional[float] = None  # the selected metric's value there (train.select_metric)
    best_epoch: int = 0
    best_source: str = "model"  # which weights scored best: "model" or "ema"
    # Early stopping: the best score that counted as progress (signed: higher is better), and
    # the epochs since.
    plateau: dict[str, float] = field(default_factory=lambda: {"best": float("-inf"), "epochs": 0})
    # checkpoint.keep_top: the kept epochs, best first (top_checkpoints.py); empty when off.
    top: list[dict[str, Any]] = field(default_factory=list)
    # Only a plateau is kept in checkpoints (as "stopped_early", its detail): a run resumed
    # after a time limit, a signal or a dead loader trains on.
    stop: Optional[Stop] = None

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's loop keys; containers are copied, so that a snapshot taken for a
        background write does not change as the loop goes on."""
        state = {f.name: copy.copy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "stop"}
        plateaued = self.stop is not None and self.stop.reason == "plateau"
        state["stopped_early"] = self.stop.detail if plateaued else None
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "LoopState":
        """The loop as a checkpoint left it; keys a checkpoint predates keep their defaults."""
        kept = {f.name: copy.copy(state[f.name]) for f in dataclasses.fields(cls) if f.name in state}
        loop = cls(**kept)
        if "best_val_score" not in state and loop.best_val_acc >= 0:  # chosen by accuracy before select_metric
            loop.best_val_score = loop.best_val_acc
        if state.get("stopped_early"):
            loop.stop = Stop("plateau", loop.epoch, state["stopped_early"])
        return loop

    def results(self) -> dict[str, Any]:
        """The loop's part of results.json."""
        rates = [row["train_img_per_s"] for row in self.history]
        return {"best_val_acc": self.best_val_acc if self.best_val_acc >= 0 else None,
                "best_val_score": self.best_val_score, "best_epoch": self.best_epoch,
                "best_weights": self.best_source, "epochs": self.epoch, "steps": self.global_step,
                "train_img_per_s": sum(rates) / len(rates) if rates else None,
                "stop": self.stop.to_dict() if self.stop else None}

    def add_to_running(self, loss_sum: float, correct: int, seen: int, seconds: float) -> None:
        """Fold a part of the epoch (all ranks' sums, the time it took) into the running sums."""
        self.running["loss"] += loss_sum
        self.running["correct"] += correct
        self.running["seen"] += seen
        self.running["time"] += seconds

    def close_epoch(self, row: dict[str, Any]) -> None:
        """The epoch under way is complete; `row` is its metrics."""
        self.epoch += 1
        self.history.append(row)
        self.step_in_epoch = 0
        self.running = fresh_running()

    def score_epoch(self, row: dict[str, Any], metric: str, patience: Optional[int], min_delta: float) -> bool:
        """Note the completed epoch's metrics row (its `val_<metric>`, None without a validation
        split, and its EMA's `ema_val_<metric>`), and count the plateau; True when the epoch is
        the best so far by `metric`. The better of the raw and EMA weights counts; without
        validation, the latest epoch is the best."""
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        raw, ema = row.get(f"val_{metric}"), row.get(f"ema_val_{metric}")
        better_ema = ema is not None and raw is not None and sign * ema > sign * raw
        source, score = ("ema", ema) if better_ema else ("model", raw)
        if score is None:
            self.best_epoch, self.best_source = self.epoch, source
            return True
        improved = self.best_val_score is None or sign * score > sign * self.best_val_score
        if improved:
            self.best_epoch, self.best_source, self.best_val_score = self.epoch, source, score
            accuracy = row.get("ema_val_acc") if better_ema else row.get("val_acc")
            if accuracy is not None:  # multi-label rows have none
                self.best_val_acc = accuracy
        self._watch_plateau(sign * score, metric, patience, min_delta)
        return improved

    def _watch_plateau(self, signed_score: float, metric: str, patience: Optional[int], min_delta: float) -> None:
        """Early stopping: count the epochs since the score last improved by more than
        min_delta; stop after `patience` of them."""
        if patience is None:
            return
        if signed_score > self.plateau["best"] + min_delta:
            self.plateau = {"best": signed_score, "epochs": 0}
            return
        self.plateau["epochs"] += 1
        if self.plateau["epochs"] >= patience:
            percent = metric != "loss"
            moved = f"risen by more than {min_delta:g} points" if percent else f"fallen by more than {min_delta:g}"
            best = f"{self.best_val_score:.2f}%" if percent else f"{self.best_val_score:.4f}"
            self.stop = Stop("plateau", self.epoch, (
                f"validation {METRIC_NAMES[metric]} has not {moved} for {plural(patience, 'epoch')} "
                f"(best {best} at epoch {self.best_epoch})"))


class TimeLimit:
    """train.time_limit_min: stop after an epoch when the next one, as long as the longest so far
    in this process (validation included), would end past the limit on any rank (each has its
    own clock, and a rank that went on alone would wait in DDP forever). Not in checkpoints: a
    run resumed in a new time slot starts a new clock."""

    def __init__(self, minutes: Optional[float], start: float):
        self.minutes, self.start = minutes, start
        self.epoch_ends: list[float] = []

    def check(self, now: float, device: torch.device) -> Optional[str]:
        """At an epoch's end (`now`, on every rank alike): why to stop here, or None."""
        if self.minutes is None:
            return None
        self.epoch_ends.append(now)
        starts = [self.start, *self.epoch_ends[:-1]]
        longest = max(end - start for start, end in zip(starts, self.epoch_ends))
        if not distributed.any_rank(now + longest > self.start + 60.0 * self.minutes, device):
            return None
        return (f"train.time_limit_min={self.minutes:g}: {(now - self.start) / 60:.1f} min so far, "
                f"and another epoch would take up to {longest / 60:.1f}")
