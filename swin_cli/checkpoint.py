"""Checkpoints: their format and version, loads that explain what is wrong, which weights are
best, the background writer, and where a run resumes from. Every checkpoint is written
atomically (atomic_io): a crash leaves the previous complete file, never a truncated one.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from swin_cli import __version__, atomic_io

# Re-exported until export.py and tests/test_cli.py import them from atomic_io.
from swin_cli.config import ConfigError, plain
from swin_cli.errors import SwinCliError
from swin_cli.sizes import json_size
from swin_cli.text import plural

log = logging.getLogger("swin_cli")

# Bumped when the checkpoint layout changes incompatibly.
FORMAT_VERSION = 1
# Config keys that decide the model's parameter shapes; a checkpoint that differs in any of
# them cannot be loaded into this run's model.
SHAPE_KEYS = ("model.version", "model.patch_size", "model.embed_dim", "model.depths", "model.num_heads",
              "model.window_size", "model.mlp_ratio", "model.qkv_bias", "model.patch_norm",
              "model.stem", "model.stem_convs", "data.image_size", "in_chans", "num_classes")

SIGNATURE_DEFAULTS = {"model.version": 1, "model.stem": "patch", "model.stem_convs": 1}

# What best.pt keeps: everything evaluation, export and fine-tuning read (the weights, raw and
# EMA, which of them scored best, and how to rebuild and feed the model). The optimizer,
# scheduler and scaler state and the loop's position are for resuming, which reads last.pt;
# with AdamW they are twice the size of the weights (best.pt: a third of last.pt without EMA).
BEST_KEYS = ("format", "format_version", "version", "config", "signature", "classes", "mean", "std",
             "model", "ema", "best_source", "best_val_acc", "best_epoch", "epoch", "wall_time_s",
             "class_counts", "calibration", "best_val_score", "thresholds", "label_counts")


class CheckpointError(SwinCliError):
    pass


def header(config: dict[str, Any], signature: dict[str, Any], classes: list[str], mean: list[float],
           std: list[float], class_counts: Optional[list[int]] = None) -> dict[str, Any]:
    """What marks a checkpoint as ours and rebuilds and feeds its model: the format and versions,
    the run's resolved config, its shape signature, the class names and the normalisation; and
    the training split's images per class (the prior of post-hoc logit adjustment; None when
    unknown, and absent from checkpoints older than it: read it with .get)."""
    return {"format": "swin-cli", "format_version": FORMAT_VERSION, "version": __version__, "config": config,
            "signature": signature, "classes": classes, "mean": mean, "std": std, "class_counts": class_counts}


def write(state: dict[str, Any], path: Path) -> None:
    """Save a checkpoint to `path` atomically; a full disk is a one-line error and leaves the
    previous checkpoint there."""
    atomic_io.save_atomic(state, path, what="checkpoint")


def cpu_copy(state: Any) -> Any:
    """`state` with every tensor copied to the CPU, sharing no memory with the live ones: what a
    background write saves cannot change while training goes on."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {key: cpu_copy(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_copy(value) for value in state)
    return state


class BackgroundWriter:
    """Writes a run's checkpoints on a thread of their own, so that training does not wait for
    serialising and fsyncing them (torch.save releases the GIL for most of it). One write at a
    time: `submit` first waits for the write before it, so files land in order, at most one
    snapshot is held, and an error of that write (a full disk) is raised in the training thread.
    A crash mid-write leaves the previous file, as every atomic write does."""

    def __init__(self) -> None:
        self.pool: Optional[ThreadPoolExecutor] = None
        self.pending: Optional[Future] = None

    def submit(self, write: Callable[[], None]) -> None:
        self.wait()
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swin-cli-checkpoint")
        self.pending = self.pool.submit(write)

    def wait(self) -> None:
        """Block until the last submitted write is on disk; raise its error if it failed."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self, quietly: bool = False) -> None:
        """Wait for the last write (its error raised) and end the thread. `quietly`: an error is
        only logged, so that it does not hide the one being reported."""
        try:
            self.wait()
        except Exception as exc:
            if not quietly:
                raise
            log.warning(f"the last epoch-end checkpoint could not be written: {exc}")
        finally:
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None

    def save_epoch_end(self, state: dict[str, Any], run_dir: Path, best: bool,
                       first: Sequence[tuple[Path, dict[str, Any]]] = (),
                       then: Optional[Callable[[], None]] = None) -> None:
        """Write an epoch's checkpoint to last.pt and, when it scored `best`, its weights alone
        to best.pt (resuming reads last.pt). `state` must not change while the write runs:
        a cpu_copy. `first`: (path, checkpoint) pairs written before last.pt, which may name
        them (a top-k file); `then`: run once every file is on disk (removing superseded ones)."""
        def write_all() -> None:
            for path, extra in first:
                write(extra, path)
            write(state, run_dir / "last.pt")
            if best:
                write(best_state(state), run_dir / "best.pt")
            if then is not None:
                then()

        self.submit(write_all)


def resolve(path_or_dir: str | Path) -> Path:
    """A checkpoint path, or a run dir meaning its last.pt."""
    path = Path(os.path.expanduser(str(path_or_dir)))
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load(path_or_dir: str | Path) -> dict[str, Any]:
    path = resolve(path_or_dir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != "swin-cli":
        raise CheckpointError(f"{path} is not a swin-cli checkpoint (for torchvision weights use model.pretrained=)")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state.get('format_version')}, "
                              f"this swin-cli reads format {FORMAT_VERSION}")
    state["path"] = str(path)
    return state


def best_state(state: dict[str, Any]) -> dict[str, Any]:
    """The part of a full training state (Trainer.state) that best.pt keeps: BEST_KEYS."""
    return {key: state[key] for key in BEST_KEYS if key in state}


def best_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The model weights of a checkpoint that scored best on validation: the EMA's when they
    were the better ones, the raw weights otherwise."""
    return state["ema"] if state.get("best_source") == "ema" and state.get("ema") else state["model"]


def shape_signature(cfg: Any, in_chans: int, num_classes: int) -> dict[str, Any]:
    """The values of SHAPE_KEYS for a run, stored in its checkpoints."""
    values = {}
    for key in SHAPE_KEYS:
        if key == "in_chans":
            values[key] = in_chans
        elif key == "num_classes":
            values[key] = num_classes
        elif key == "data.image_size":  # 32 and [32, 32] are one size; a box is stored as [H, W]
            values[key] = json_size(cfg.data.image_size)
        else:
            group, name = key.split(".")
            value = plain(cfg[group][name])
            values[key] = list(value) if not isinstance(value, (int, float, bool, str)) else value
    return values


def check_compatible(state: dict[str, Any], signature: dict[str, Any]) -> None:
    """Raise a one-line error naming every shape-deciding value that differs."""
    # Checkpoints from before a key existed were made with that key's only former value.
    saved = {**SIGNATURE_DEFAULTS, **state.get("signature", {})}
    diffs = [f"{k}={saved.get(k)!r} in the checkpoint vs {v!r} here"
             for k, v in signature.items() if saved.get(k) != v]
    if diffs:
        raise CheckpointError(f"checkpoint {state['path']} does not fit this model: " + "; ".join(diffs))


def check_resumable(state: dict[str, Any], signature: dict[str, Any], epochs: int) -> None:
    """Raise a one-line error when a run of `epochs` epochs with this `signature` cannot continue
    from `state`; say so when it continues to a different number of epochs."""
    check_compatible(state, signature)
    if "optimizer" not in state:  # a best.pt: weights without the optimizer's state
        raise CheckpointError(f"{state['path']} holds only the best weights, not the training state a run "
                              f"resumes from; resume from {Path(state['path']).with_name('last.pt')}")
    if state["epoch"] > epochs:
        raise ConfigError(f"the run in {Path(state['path']).parent} is already complete at epoch {state['epoch']}; "
                          f"to train it further, resume it with epochs greater than {state['epoch']}")
    saved_epochs = state["config"]["epochs"]
    if saved_epochs != epochs:
        log.info(f"note: the checkpoint's run had epochs={saved_epochs}; continuing to epochs={epochs}")


def restore(state: dict[str, Any], model: Any, optimizer: Any, scheduler: Any, scaler: Any, ema: Any) -> None:
    """Load a checkpoint's training state into the run's objects (ema: the EMA module or None;
    a checkpoint without EMA weights starts the EMA from the model's)."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"] if state.get("ema") else state["model"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {state['path']} does not fit this run: {str(exc).splitlines()[0]}") from None


def rng_state() -> dict[str, Any]:
    """The global RNGs, as a checkpoint keeps them."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])


# ------------------------------------------------------------------------ where to resume from

# Keys that do not change what a run computes, so resume=auto may differ in them.
_NOT_COMPARED = ("resume", "epochs", "threads", "device", "log", "logger", "checkpoint")


def resume_source(resume: Optional[str], config: dict[str, Any], run_dir: Path,
                  outputs: Path = Path("outputs")) -> Optional[Path]:
    """The checkpoint a run continues from, or None for a fresh start: the path or run dir the
    user named; for resume=auto the newest last.pt under `outputs` whose run had the same
    `config` (the resolved config as a dict); and, with no resume asked, the run dir's own last.pt
    when SLURM requeued this job after preemption."""
    if resume == "auto":
        found = _find_same_config(config, run_dir, outputs)
        if found is None:
            log.info(f"resume=auto: no earlier run with this config under {outputs}/; starting fresh")
        return found
    if resume:
        return resolve(resume)
    requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    own = Path(run_dir) / "last.pt"
    return own if requeued and own.is_file() else None


class NothingLeftToTrain(Exception):
    """resume= named a run that already trained every epoch asked for and tested its best
    weights: not an error (exit 0); the message gives the run's test result."""

    def __init__(self, message: str, results: dict[str, Any]):
        super().__init__(message)
        self.results = results


def check_not_finished(state: dict[str, Any], epochs: int) -> None:
    """Raise NothingLeftToTrain when `state` is the last checkpoint of a run that trained all
    `epochs` epochs and wrote its results.json. A run that died while testing (no results.json)
    resumes as before and runs its final test."""
    run_dir = Path(state["path"]).parent
    results_path = run_dir / "results.json"
    if state["epoch"] < epochs or state.get("step_in_epoch") or not results_path.is_file():
        return
    try:
        results = json.loads(results_path.read_text())
    except (OSError, ValueError):
        return  # unreadable results: resume as before, which tests again and rewrites them
    # A single-label run's test accuracy, else a multi-label run's test mAP.
    scored = [(name, results.get(f"test_{key}")) for key, name in (("acc", "acc"), ("map", "mAP"))]
    name, test = next(((name, value) for name, value in scored if isinstance(value, (int, float))), (None, None))
    shown = f"test {name} {test:.2f}%" if name else "no test accuracy recorded"
    raise NothingLeftToTrain(f"nothing left to train: {run_dir} finished all {plural(epochs, 'epoch')}; {shown} "
                             f"(from {results_path}); to train it further, resume it with epochs greater "
                             f"than {state['epoch']}", results)


def _find_same_config(config: dict[str, Any], run_dir: Path, outputs: Path) -> Optional[Path]:
    wanted = _comparable(config)
    candidates = sorted(outputs.glob("**/last.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        if path.parent.resolve() == Path(run_dir).resolve():
            continue
        try:
            saved = load(path)["config"]
        except CheckpointError:
            continue
        if _comparable(saved) == wanted:
            return path
    return None


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _NOT_COMPARED}


def resume_command(overrides: Sequence[str], run_dir: Path) -> str:
    """The command line that continues the run in `run_dir` (what the user typed, plus resume=)."""
    kept = [shlex.quote(o) for o in overrides if not o.startswith(("resume=", "hydra."))]
    return " ".join(["swin-train", *kept, f"resume={shlex.quote(str(run_dir))}"])
