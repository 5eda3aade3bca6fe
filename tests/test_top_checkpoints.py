"""checkpoint.keep_top and checkpoint.average: the best epochs' files, their ranking, their
average, and what a kill mid-write and a resume leave of them."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
import torch.nn as nn
from conftest import FAST, make_config

from swin_cli import checkpoint, top_checkpoints
from swin_cli.build import model_from_checkpoint
from swin_cli.config import ConfigError, validate
from swin_cli.top_checkpoints import average_state_dicts, ranked


def config(*overrides: str):
    return make_config(*FAST, *overrides)


# ----------------------------------------------------------------------------- the config


@pytest.mark.parametrize("overrides, message", [
    (["checkpoint.keep_top=0"], "checkpoint.keep_top must be >= 1 or null (got 0)"),
    (["checkpoint.average=0"], "checkpoint.average must be >= 1 or null (got 0)"),
    (["checkpoint.keep_top=2", "checkpoint.average=3"], "checkpoint.average must be <= checkpoint.keep_top"),
    (["checkpoint.average=2", "checkpoint.average_weights=ema"],
     "checkpoint.average_weights=ema needs train.ema.decay"),
])
def test_bad_checkpoint_keys_fail_in_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as caught:
        validate(config(*overrides))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_keys_are_off_by_default_and_average_alone_keeps_its_count():
    from swin_cli.config.checkpoint import kept_files

    assert kept_files(config()) is None
    assert kept_files(config("checkpoint.average=3")) == 3
    assert kept_files(config("checkpoint.keep_top=5", "checkpoint.average=3")) == 5
    validate(config("checkpoint.keep_top=2", "checkpoint.average=2", "train.ema.decay=0.9",
                    "checkpoint.average_weights=ema"))


# ------------------------------------------------------------------------ ranking, averaging


def test_ranking_keeps_the_best_and_an_earlier_epoch_wins_a_tie():
    entries = [{"epoch": e, "score": s} for e, s in [(1, 50.0), (2, 70.0), (3, 70.0), (4, 60.0)]]
    assert [e["epoch"] for e in ranked(entries, 2, higher_is_better=True)] == [2, 3]
    assert [e["epoch"] for e in ranked(entries, 3, higher_is_better=False)] == [1, 4, 2]


def test_the_average_equals_a_hand_average_and_takes_integer_buffers_from_the_best():
    torch.manual_seed(0)
    states = []
    for batches in (3, 5, 8):
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        net.train()
        for _ in range(batches):  # moves the running statistics and num_batches_tracked
            net(torch.randn(2, 3, 6, 6))
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    averaged = average_state_dicts(states)
    assert averaged.keys() == states[0].keys()
    for key, value in averaged.items():
        if key.endswith("num_batches_tracked"):
            assert value.dtype == torch.int64 and value.item() == 3  # the first (best) file's
        else:
            hand = (states[0][key] + states[1][key] + states[2][key]) / 3
            assert value.dtype == states[0][key].dtype
            torch.testing.assert_close(value, hand, rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------ in a run

# Validation scores by epoch (the fake evaluator's), as acc, balanced acc and macro-F1 alike.
SCORES = {1: 50.0, 2: 70.0, 3: 60.0, 4: 65.0}


def with_scores(trainer, scores=SCORES):
    """Score validation with the real evaluator, then put each epoch's number from `scores` in
    the selectable fields (a lower loss for a higher score); the final test stays real."""
    def evaluator(model, split, full):
        real = trainer._evaluate(model, split, full)
        if full:
            return real
        value = scores[trainer.epoch + 1]
        return dataclasses.replace(real, acc=value, balanced_acc=value, macro_f1=value, loss=(100 - value) / 100)

    trainer.evaluator = evaluator
    return trainer


def trainer_for(run_dir, *overrides):
    from swin_cli.train import Trainer

    return with_scores(Trainer(config(*overrides), run_dir))


def kept(run_dir):
    return sorted(p.name for p in run_dir.glob("top-e*.pt"))


@pytest.mark.e2e
def test_keep_top_keeps_exactly_the_best_epochs_files_ranked_in_top_json(tmp_path):
    trainer = trainer_for(tmp_path, "epochs=4", "checkpoint.keep_top=2")
    trainer.fit()
    assert kept(tmp_path) == ["top-e002.pt", "top-e004.pt"]
    index = json.loads((tmp_path / "top.json").read_text())
    assert [(e["epoch"], e["score"], e["file"]) for e in index["top"]] == [
        (2, 70.0, "top-e002.pt"), (4, 65.0, "top-e004.pt")]
    assert index["higher_is_better"] is True and index["metric"]
    assert [e["epoch"] for e in checkpoint.load(tmp_path / "last.pt")["top"]] == [2, 4]
    # Each is a checkpoint like best.pt: the weights without the optimizer, its own epoch.
    top2 = checkpoint.load(tmp_path / "top-e002.pt")
    assert top2["epoch"] == 2 and "optimizer" not in top2 and top2["top"]["score"] == 70.0
    assert not (tmp_path / "average.pt").exists()


@pytest.mark.e2e
def test_average_is_the_mean_of_the_top_files_loads_like_best_pt_and_is_tested(tmp_path):
    from swin_cli.evaluate import evaluate_checkpoint

    trainer = trainer_for(tmp_path, "epochs=4", "checkpoint.average=2", "model.stem=conv")
    results = trainer.fit()
    assert kept(tmp_path) == ["top-e002.pt", "top-e004.pt"]  # average=2 alone keeps 2
    average = checkpoint.load(tmp_path / "average.pt")
    files = [checkpoint.load(tmp_path / name) for name in ("top-e002.pt", "top-e004.pt")]
    assert average["averaged"]["epochs"] == [2, 4]
    for key, value in average["model"].items():
        if key.endswith("num_batches_tracked"):  # the conv stem's BatchNorm: the best file's count
            assert torch.equal(value, files[0]["model"][key])
        else:
            torch.testing.assert_close(value, (files[0]["model"][key] + files[1]["model"][key]) / 2,
                                       rtol=0, atol=1e-7)
    # It loads wherever best.pt does, and the run tested it.
    model = model_from_checkpoint(average)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in average["model"].items())
    assert set(results) >= {"test_acc_average", "test_loss_average", "test_balanced_acc_average"}
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["test_acc_average"] == results["test_acc_average"]
    cfg = make_config(*FAST, "mode=eval", f"ckpt={tmp_path / 'average.pt'}")
    (tmp_path / "eval").mkdir()
    evaluated = evaluate_checkpoint(cfg, tmp_path / "eval")
    assert evaluated["acc"] == pytest.approx(results["test_acc_average"])


@pytest.mark.e2e
def test_average_of_ema_weights_is_the_mean_of_the_files_ema(tmp_path):
    trainer = trainer_for(tmp_path, "epochs=3", "checkpoint.average=2", "train.ema.decay=0.5",
                          "checkpoint.average_weights=ema")
    trainer.fit()
    average = checkpoint.load(tmp_path / "average.pt")
    files = [checkpoint.load(tmp_path / e["file"]) for e in checkpoint.load(tmp_path / "last.pt")["top"]]
    key = next(k for k, v in average["model"].items() if v.is_floating_point())
    torch.testing.assert_close(average["model"][key], (files[0]["ema"][key] + files[1]["ema"][key]) / 2,
                               rtol=0, atol=1e-7)
    assert average["ema"] is None and average["averaged"]["weights"] == "ema"


@pytest.mark.e2e
def test_a_kill_mid_write_leaves_the_previous_files_loadable_and_resume_finishes_the_ranking(tmp_path, monkeypatch):
    real_write = checkpoint.write

    def dies_on_epoch_4(state, path):
        if path.name == "top-e004.pt":  # as a kill leaves it: a temporary file, the target untouched
            (path.parent / f".{path.name}.abc123.tmp").write_bytes(b"half a checkpoint")
            raise OSError("killed mid-write")
        real_write(state, path)

    monkeypatch.setattr(checkpoint, "write", dies_on_epoch_4)
    with pytest.raises(OSError, match="killed mid-write"):
        trainer_for(tmp_path, "epochs=4", "checkpoint.keep_top=2").fit()
    monkeypatch.setattr(checkpoint, "write", real_write)
    # The last complete epoch's files: last.pt names the top files on disk, each loads.
    last = checkpoint.load(tmp_path / "last.pt")
    assert last["epoch"] == 3 and [e["epoch"] for e in last["top"]] == [2, 3]
    assert kept(tmp_path) == ["top-e002.pt", "top-e003.pt"]
    for name in kept(tmp_path):
        checkpoint.load(tmp_path / name)
    trainer_for(tmp_path, "epochs=4", "checkpoint.keep_top=2", f"resume={tmp_path}").fit()
    assert kept(tmp_path) == ["top-e002.pt", "top-e004.pt"]  # the superseded one removed after
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.e2e
def test_resume_keeps_the_list_brings_the_files_and_drops_missing_ones_with_a_warning(tmp_path, caplog):
    first = tmp_path / "first"
    trainer_for(first, "epochs=3", "checkpoint.keep_top=2").fit()
    assert kept(first) == ["top-e002.pt", "top-e003.pt"]
    # Resumed into a new run dir: the list and its files come along.
    again = tmp_path / "again"
    trainer_for(again, "epochs=4", "checkpoint.keep_top=2", f"resume={first}").fit()
    assert kept(again) == ["top-e002.pt", "top-e004.pt"]
    assert [e["epoch"] for e in json.loads((again / "top.json").read_text())["top"]] == [2, 4]
    # A file gone missing is dropped from the list, with a warning naming it.
    (first / "top-e002.pt").unlink()
    third = tmp_path / "third"
    with caplog.at_level(logging.WARNING, logger="swin_cli"):
        trainer = trainer_for(third, "epochs=4", "checkpoint.keep_top=2", f"resume={first}")
    assert "top-e002.pt" in caplog.text and "missing" in caplog.text
    assert [e["epoch"] for e in trainer.loop.top] == [3]
    trainer.fit()
    assert kept(third) == ["top-e003.pt", "top-e004.pt"]


def test_the_command_averages_a_runs_top_files(tmp_path):
    states = []
    for epoch, value in ((2, 1.0), (4, 3.0)):
        state = {**checkpoint.header({}, {}, ["a"], [0.5], [0.5]), "model": {"w": torch.full((2,), value)},
                 "ema": None, "best_source": "model", "epoch": epoch}
        checkpoint.write(state, tmp_path / top_checkpoints.file_name(epoch))
        states.append(state)
    (tmp_path / "top.json").write_text(json.dumps({"metric": "acc", "higher_is_better": True, "top": [
        {"epoch": 2, "score": 70.0, "source": "model", "file": "top-e002.pt"},
        {"epoch": 4, "score": 65.0, "source": "model", "file": "top-e004.pt"}]}))
    assert top_checkpoints.main([str(tmp_path), "2", "model"]) == 0
    assert torch.equal(checkpoint.load(tmp_path / "average.pt")["model"]["w"], torch.full((2,), 2.0))
    assert top_checkpoints.main([str(tmp_path / "nowhere")]) == 1
