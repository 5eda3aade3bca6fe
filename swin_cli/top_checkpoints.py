"""The best k epochs' weights, kept beside last.pt and best.pt (checkpoint.keep_top), and their
average (checkpoint.average).

The ranking is a list of plain dicts (epoch, score, metric, source, file), best first, held in the
loop state (`LoopState.top`), so it is in every checkpoint and a resumed run goes on with it.
At an epoch's end the Trainer hands the epoch's score here; when the epoch enters the top k,
its weights are written as `top-e<epoch>.pt` (what best.pt holds: it loads wherever best.pt
does). The files are written by the background writer, in this order: the new top file, then
last.pt (whose list names it), best.pt, and last `top.json` (the ranking, for people and
scripts) and the removal of the files that dropped out. A kill at any point leaves every file the
latest last.pt names on disk and loadable; a leftover file of a dropped epoch is removed at the
next epoch's end.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from swin_cli import atomic_io, checkpoint
from swin_cli.evaluate import NEW_SCORES
from swin_cli.multilabel_metrics import RESULT_SCORES as MULTILABEL_SCORES
from swin_cli.multilabel_metrics import MultiLabelScores
from swin_cli.text import plural

log = logging.getLogger("swin_cli")

INDEX = "top.json"
AVERAGE = "average.pt"
_TOP_FILE = re.compile(r"top-e\d+\.pt")


def file_name(epoch: int) -> str:
    """The kept file of an epoch: top-e007.pt (zero-padded so that a folder listing sorts)."""
    return f"top-e{epoch:03d}.pt"


def ranked(entries: Sequence[dict[str, Any]], keep: int, higher_is_better: bool) -> list[dict[str, Any]]:
    """The best `keep` entries, best first; of equal scores the earlier epoch ranks higher (a
    later epoch must beat a kept one to displace it, as best.pt is chosen)."""
    sign = -1.0 if higher_is_better else 1.0
    return sorted(entries, key=lambda e: (sign * e["score"], e["epoch"]))[:keep]


def top_state(state: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A kept epoch's checkpoint: what best.pt keeps (header, raw and EMA weights), with this
    epoch's own choice of weights and score. `state` is a training state (Trainer.state)."""
    return {**checkpoint.best_state(state), "best_source": entry["source"],
            "top": {key: entry[key] for key in ("epoch", "score", "metric", "source")}}


@dataclass
class EpochFiles:
    """What an epoch's end writes for the top k, in the background writer's order: `first` (the
    new top file, before last.pt names it), `then` (the index and the removals, after)."""
    first: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    then: Optional[Callable[[], None]] = None


class TopCheckpoints:
    """checkpoint.keep_top for one run: ranks each epoch and says which files to write and drop.
    `keep` None: off (nothing is ranked or written)."""

    def __init__(self, keep: Optional[int], run_dir: Path):
        self.keep, self.run_dir = keep, Path(run_dir)

    def note(self, top: list[dict[str, Any]], epoch: int, score: Optional[float], higher_is_better: bool,
             source: str, metric: str) -> tuple[list[dict[str, Any]], Optional[dict[str, Any]]]:
        """The ranking after `epoch` scored `score` (by `metric`, its weights `source`: model or
        ema), and the epoch's entry when it made the top k (else None). Without a validation
        split (`score` None) the latest epochs are kept."""
        if self.keep is None:
            return top, None
        if score is None:
            score, higher_is_better, metric = float(epoch), True, "epoch (no validation split)"
        entry = {"epoch": epoch, "score": float(score), "metric": metric, "source": source,
                 "file": file_name(epoch), "higher_is_better": higher_is_better}
        # An entry of the same epoch is an earlier attempt at it (a run resumed from a checkpoint
        # before that epoch's end): the new one replaces it.
        new_top = ranked([e for e in top if e["epoch"] != epoch] + [entry], self.keep, higher_is_better)
        return new_top, (entry if entry in new_top else None)

    def epoch_files(self, state: dict[str, Any], top: list[dict[str, Any]],
                    entry: Optional[dict[str, Any]]) -> EpochFiles:
        """The writes of an epoch's end: the new top file (`entry`, from the snapshot `state`),
        then the index of `top` and the removal of every top file not in it."""
        if self.keep is None:
            return EpochFiles()
        first = [(self.run_dir / entry["file"], top_state(state, entry))] if entry is not None else []
        kept = [dict(e) for e in top]
        return EpochFiles(first, lambda: self.write_index(kept))

    def write_index(self, top: list[dict[str, Any]]) -> None:
        """top.json (the ranking), then remove the top files that are not in it."""
        index = {"metric": top[0]["metric"] if top else None,
                 "higher_is_better": top[0]["higher_is_better"] if top else None,
                 "top": [{key: e[key] for key in ("epoch", "score", "source", "file")} for e in top]}
        atomic_io.write_text_atomic(self.run_dir / INDEX, json.dumps(index, indent=2) + "\n")
        wanted = {e["file"] for e in top}
        for path in self.run_dir.glob("top-e*.pt"):
            if _TOP_FILE.fullmatch(path.name) and path.name not in wanted:
                path.unlink(missing_ok=True)

    def resumed(self, top: list[dict[str, Any]], source_dir: Path, copy: bool) -> list[dict[str, Any]]:
        """The ranking a resumed run goes on with: entries whose file is gone are dropped with a
        warning. `copy`: bring the files from `source_dir` (a run resumed into a new dir). A run
        resumed without checkpoint.keep_top keeps none."""
        if self.keep is None:
            return []
        kept = []
        for entry in top:
            source = Path(source_dir) / entry["file"]
            if not source.is_file():
                log.warning(f"warning: {source} (epoch {entry['epoch']}, one of the top {self.keep}) "
                            f"is missing; dropped from the top checkpoints")
                continue
            if copy:
                atomic_io.copy_atomic(source, self.run_dir / entry["file"])
            kept.append(entry)
        return kept


# ------------------------------------------------------------------------------ averaging

def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts with the same keys and shapes. Floating tensors
    (weights, BatchNorm running statistics) are summed in float64 and cast back to their dtype;
    integer tensors (BatchNorm's num_batches_tracked, index buffers) are taken from the first,
    the best-ranked."""
    if not states:
        raise ValueError("nothing to average")
    averaged = {}
    for key, first in states[0].items():
        if not torch.is_floating_point(first):
            averaged[key] = first.clone()
            continue
        total = torch.zeros_like(first, dtype=torch.float64)
        for state in states:
            total += state[key].to(torch.float64)
        averaged[key] = (total / len(states)).to(first.dtype)
    return averaged


def chosen_weights(state: dict[str, Any], weights: str) -> dict[str, torch.Tensor]:
    """The weights of a kept file that `checkpoint.average_weights` picks: model (raw), ema, or
    best (whichever of the two scored that epoch)."""
    if weights == "model":
        return state["model"]
    if weights == "ema":
        if not state.get("ema"):
            raise checkpoint.CheckpointError(f"{state['path']} has no EMA weights to average "
                                             f"(checkpoint.average_weights=ema needs train.ema.decay)")
        return state["ema"]
    return checkpoint.best_weights(state)


def average_checkpoint(paths: Sequence[Path], weights: str) -> dict[str, Any]:
    """A checkpoint like best.pt whose weights are the average of the `weights` of `paths`
    (best first): the best file's header, config and signature, the averaged weights as its raw
    weights, no EMA, and which files went in."""
    states = [checkpoint.load(path) for path in paths]
    best = states[0]
    averaged = average_state_dicts([chosen_weights(state, weights) for state in states])
    kept = {key: value for key, value in best.items() if key in checkpoint.BEST_KEYS}
    return {**kept, "model": averaged, "ema": None, "best_source": "model",
            "averaged": {"weights": weights, "files": [Path(p).name for p in paths],
                         "epochs": [state.get("epoch") for state in states]}}


def write_average(run_dir: Path, top: Sequence[dict[str, Any]], count: int, weights: str) -> Optional[Path]:
    """Average the best `count` kept files of `run_dir` into average.pt; None when none is kept."""
    chosen = list(top)[:count]
    if not chosen:
        log.warning("warning: checkpoint.average: no top checkpoints were kept; nothing to average")
        return None
    if len(chosen) < count:
        log.info(f"checkpoint.average={count}: only {plural(len(chosen), 'epoch')} kept; averaging those")
    path = Path(run_dir) / AVERAGE
    checkpoint.write(average_checkpoint([Path(run_dir) / e["file"] for e in chosen], weights), path)
    epochs = ", ".join(str(e["epoch"]) for e in chosen)
    log.info(f"averaged the {weights} weights of epochs {epochs} into {path}")
    return path


def average_results(scores: Any) -> dict[str, Any]:
    """The test scores of average.pt (a metrics.Scores, or a MultiLabelScores, as the Trainer's
    evaluator returns it) as results.json keys: test_<metric>_average beside the best weights'
    test_<metric>."""
    multilabel = isinstance(scores, MultiLabelScores)
    names = ("loss", *MULTILABEL_SCORES) if multilabel else ("acc", "loss", *NEW_SCORES)
    return {f"test_{name}_average": getattr(scores, name) for name in names}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """python -m swin_cli.top_checkpoints RUN_DIR [K] [model|ema|best]: average a finished (or
    running) run's best K kept files into RUN_DIR/average.pt, as checkpoint.average does."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 3 or args[0] in ("-h", "--help"):
        print("usage: python -m swin_cli.top_checkpoints RUN_DIR [K] [model|ema|best]", file=sys.stderr)
        return 2
    run_dir = Path(args[0])
    try:
        index = json.loads((run_dir / INDEX).read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {run_dir / INDEX} (was the run trained with checkpoint.keep_top?): {exc}",
              file=sys.stderr)
        return 1
    top = index["top"]
    count = int(args[1]) if len(args) > 1 else len(top)
    weights = args[2] if len(args) > 2 else "best"
    if count < 1 or weights not in ("model", "ema", "best"):
        print("error: K must be >= 1 and the weights one of model, ema, best", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        write_average(run_dir, top, count, weights)
    except checkpoint.CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
