"""best.pt holds what evaluation, export and fine-tuning need, and nothing a resume needs; the
epoch-end checkpoints are written while the next epoch trains, in order, errors surfacing."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST, TINY_MODEL, make_config

from swin_cli import checkpoint
from swin_cli.atomic_io import WriteError
from swin_cli.build import build_model, model_from_checkpoint
from swin_cli.errors import SwinCliError
from swin_cli.loop_state import LoopState, Stop
from swin_cli.train import Trainer
from swin_cli.weights import read_weights

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e


def test_best_pt_keeps_the_weights_without_the_training_state_and_every_reader_works(tmp_path):
    cfg = make_config(*TINY_MODEL, "data=digits", "epochs=1", "train.max_steps_per_epoch=2", "threads=1",
                      "train.ema.decay=0.5")
    results = Trainer(cfg, tmp_path / "run").fit()
    best_path, last_path = tmp_path / "run" / "best.pt", tmp_path / "run" / "last.pt"
    best, last = checkpoint.load(best_path), checkpoint.load(last_path)
    for key in ("optimizer", "scheduler", "scaler", "rng", "running", "history"):
        assert key in last and key not in best, key
    for key in ("config", "signature", "classes", "mean", "std", "model", "ema", "best_source", "format_version"):
        assert key in best, key
    assert best_path.stat().st_size < 0.8 * last_path.stat().st_size  # AdamW's two moments are gone

    # swin-eval / mode=predict / swin-export rebuild the model from it, with the best weights ...
    model = model_from_checkpoint(best)
    assert all(torch.equal(v, checkpoint.best_weights(best)[k]) for k, v in model.state_dict().items())
    assert results["best_weights"] == best["best_source"]
    # ... and model.pretrained= takes it as a starting point.
    weights, _ = read_weights(str(best_path))
    fresh = build_model(cfg.model, cfg.data.image_size, 1, 10, pretrained=False)
    fresh.load_state_dict(weights)

    # Resuming reads last.pt; pointed at best.pt it says so in one line.
    with pytest.raises(SwinCliError, match=r"best.pt holds only the best weights.*resume from .*last.pt"):
        Trainer(make_config(*TINY_MODEL, "data=digits", "epochs=2", f"resume={best_path}"), tmp_path / "again")


def slow_writes(monkeypatch, seconds: float, fail_on: int = 0) -> list[dict]:
    """Make every checkpoint write off the main thread take `seconds` (and the `fail_on`-th
    write, counting from 1, fail with a full disk); returns what each write saved, with the
    thread that saved it."""
    import errno
    import threading
    import time

    real_save, saved = checkpoint.write, []

    def save(state, path):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(seconds)
        saved.append({"path": path.name, "thread": threading.current_thread().name,
                      "state": checkpoint.cpu_copy(state)})
        if len(saved) == fail_on:
            raise WriteError(f"could not write checkpoint {path}: {errno.errorcode[errno.ENOSPC]}; "
                             f"the previous checkpoint there is untouched")
        real_save(state, path)

    monkeypatch.setattr(checkpoint, "write", save)
    return saved


def test_epoch_end_checkpoints_are_written_while_training_goes_on_and_hold_the_epoch_s_own_state(
        tmp_path, monkeypatch):
    saved = slow_writes(monkeypatch, 0.3)
    trainer = Trainer(make_config(*FAST, "epochs=3"), tmp_path / "run")
    at_epoch_end = {}

    def on_step(t: Trainer) -> None:  # the weights as the last step of each epoch left them
        if t.step_in_epoch == t.steps_per_epoch:
            at_epoch_end[t.epoch + 1] = {k: v.clone() for k, v in t.model.state_dict().items()}

    trainer.on_step = on_step
    trainer.fit()
    lasts = [s for s in saved if s["path"] == "last.pt"]
    assert [s["state"]["epoch"] for s in lasts] == [1, 2, 3]
    assert all(s["thread"].startswith("swin-cli-checkpoint") for s in saved)
    # Written 0.3 s after its epoch ended, while the next one trained: still that epoch's weights.
    for s in lasts:
        weights = at_epoch_end[s["state"]["epoch"]]
        assert all(torch.equal(s["state"]["model"][k], weights[k]) for k in weights)
    assert not all(torch.equal(at_epoch_end[1][k], at_epoch_end[2][k]) for k in at_epoch_end[1])
    # Everything is on disk when fit returns: last.pt is the final epoch's.
    assert checkpoint.load(tmp_path / "run" / "last.pt")["epoch"] == 3


def test_a_stop_request_during_a_pending_write_leaves_its_own_checkpoint_last(tmp_path, monkeypatch):
    import signal

    from swin_cli.interrupt import TrainingInterrupted

    saved = slow_writes(monkeypatch, 1.5)  # longer than epoch 2's first steps and first curves.png
    trainer = Trainer(make_config(*FAST, "epochs=3"), tmp_path / "run")
    trainer.on_step = lambda t: signal.raise_signal(signal.SIGTERM) if t.global_step == 6 else None
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    last = checkpoint.load(tmp_path / "run" / "last.pt")
    assert (last["epoch"], last["step_in_epoch"]) == (1, 2)  # the interrupt's, not epoch 1's late write
    assert [s["state"]["step_in_epoch"] for s in saved if s["path"] == "last.pt"] == [0, 2]


def test_a_failed_background_write_stops_the_run_with_its_one_line_error(tmp_path, monkeypatch):
    slow_writes(monkeypatch, 0.0, fail_on=3)  # epoch 1: last.pt, best.pt; epoch 2: last.pt fails
    trainer = Trainer(make_config(*FAST, "epochs=4"), tmp_path / "run")
    with pytest.raises(WriteError, match=r"could not write checkpoint .*last.pt: ENOSPC"):
        trainer.fit()
    assert trainer.epoch <= 3  # found at the next epoch's end at the latest, not after the run
    assert checkpoint.load(tmp_path / "run" / "last.pt")["epoch"] == 1  # the previous one, untouched


# What Trainer.state() listed by hand before LoopState: a checkpoint's keys, flat, as they were.
LOOP_KEYS = {"epoch", "step_in_epoch", "global_step", "running", "history", "best_val_acc", "best_epoch",
             "best_source", "plateau", "stopped_early", "best_val_score", "top"}
CHECKPOINT_KEYS = {"format", "format_version", "version", "config", "signature", "classes", "mean", "std", "model",
                   "optimizer", "scheduler", "scaler", "ema", *LOOP_KEYS, "wall_time_s", "rng",
                   "class_counts", "calibration"}


def test_a_checkpoint_keeps_the_keys_it_always_had(tmp_path):
    Trainer(make_config(*FAST, "epochs=1"), tmp_path / "run").fit()
    assert set(torch.load(tmp_path / "run" / "last.pt", weights_only=True)) == CHECKPOINT_KEYS
    assert set(LoopState().to_dict()) == LOOP_KEYS


def test_the_loop_state_round_trips_and_reads_checkpoints_from_before_early_stopping():
    loop = LoopState(epoch=3, step_in_epoch=2, global_step=14, history=[{"epoch": 1}, {"epoch": 2}, {"epoch": 3}],
                     best_val_acc=55.0, best_epoch=2, best_source="ema", plateau={"best": 55.0, "epochs": 1})
    loop.running["loss"] = 1.5
    snapshot = loop.to_dict()
    assert LoopState.from_dict(snapshot) == loop
    loop.running["loss"] += 1.0  # a snapshot for a background write does not move with the loop
    loop.history.append({"epoch": 4})
    assert snapshot["running"]["loss"] == 1.5 and len(snapshot["history"]) == 3
    # A checkpoint from before early stopping: no plateau, no stop.
    old = LoopState.from_dict({k: v for k, v in snapshot.items() if k not in ("plateau", "stopped_early")})
    assert old.plateau == {"best": float("-inf"), "epochs": 0} and old.stop is None and old.global_step == 14
    # Only a plateau carries over to a resumed run; a time limit belongs to its process.
    loop.stop = Stop("time_limit", 3, "train.time_limit_min=9: ...")
    assert loop.to_dict()["stopped_early"] is None
    loop.stop = Stop("plateau", 3, "validation accuracy has not risen ...")
    assert loop.to_dict()["stopped_early"] == "validation accuracy has not risen ..."
    assert LoopState.from_dict(loop.to_dict()).stop == loop.stop


def test_a_finished_run_has_nothing_left_unless_it_died_before_its_results(tmp_path):
    Trainer(make_config(*FAST, "epochs=1"), tmp_path / "run").fit()
    with pytest.raises(checkpoint.NothingLeftToTrain, match=r"nothing left to train: .*run finished all 1 epoch; "
                                                            r"test acc \d+\.\d\d%") as info:
        Trainer(make_config(*FAST, "epochs=1", f"resume={tmp_path / 'run'}"), tmp_path / "again")
    assert info.value.results["epochs"] == 1
    # Killed while testing: last.pt is complete but results.json was never written, so the
    # resume runs the final test as it always did.
    (tmp_path / "run" / "results.json").unlink()
    again = Trainer(make_config(*FAST, "epochs=1", f"resume={tmp_path / 'run'}"), tmp_path / "again")
    assert again.fit()["epochs"] == 1 and (tmp_path / "again" / "results.json").is_file()
