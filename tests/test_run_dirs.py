"""Run dirs are left only where they hold something: a failed start, a summary, an eval or a
prediction does not add a dated dir under outputs/ (swin_cli/run_dirs.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CONF, FAST, run_cli
from PIL import Image

from swin_cli.run_dirs import RunDir, keepsakes, register_resolver, run_dir_for

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e


def hydra_run_dir(tmp_path: Path, *overrides: str) -> str:
    """hydra.run.dir as Hydra composes it for these overrides, from `tmp_path`."""
    from hydra import compose, initialize_config_dir

    from swin_cli.config import register_configs

    register_configs()
    register_resolver()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=True).hydra.run.dir
    finally:
        os.chdir(cwd)


def a_run_dir(path: Path, *files: str) -> Path:
    """A folder laid out as Hydra leaves a run dir, plus `files`."""
    (path / ".hydra").mkdir(parents=True)
    (path / "swin-train.log").write_text("log\n")
    for name in files:
        (path / name).write_bytes(b"x")
    return path


def test_eval_and_predict_write_beside_the_checkpoints_run_dir(tmp_path):
    run = a_run_dir(tmp_path / "outputs" / "run", "best.pt")
    assert run_dir_for("eval", str(run), "2026-01-02/03-04-05") == f"{run}/eval/2026-01-02_03-04-05"
    assert run_dir_for("predict", str(run / "best.pt"), "d/t") == f"{run}/eval/d_t"
    loose = tmp_path / "loose.pt"  # not in a run dir: a dated dir under outputs/ as before
    assert run_dir_for("eval", str(loose), "d/t") == "outputs/d/t"
    assert run_dir_for("train", str(run), "d/t") == "outputs/d/t"
    assert hydra_run_dir(tmp_path, "mode=eval", f"ckpt={run}").startswith(f"{run}/eval/20")
    assert hydra_run_dir(tmp_path).startswith("outputs/20")


def test_a_failed_start_removes_its_run_dir_unless_it_holds_something(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    empty = RunDir(a_run_dir(tmp_path / "outputs" / "day" / "empty"))
    (empty.path / "split.json").write_text("{}")  # written at start-up: not worth a run dir
    assert "removed the run dir" in empty.tidy_after_failure(stepped=False)
    assert not (tmp_path / "outputs" / "day").exists()  # nor its date folder, now empty

    resumed = RunDir(a_run_dir(tmp_path / "outputs" / "resumed"))
    (resumed.path / "best.pt").write_bytes(b"x")  # copied from the run it resumed
    assert resumed.tidy_after_failure(stepped=False) == f"kept the run dir {resumed.path}: it holds best.pt"
    assert keepsakes(resumed.path) == ["best.pt"]

    trained = RunDir(a_run_dir(tmp_path / "outputs" / "trained"))
    assert trained.tidy_after_failure(stepped=True) is None and trained.path.is_dir()


def test_a_folder_that_was_not_made_for_the_run_is_never_removed(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    a_run_dir(mine, "notes.txt")  # hydra.run.dir pointed at a folder with the user's files
    assert not RunDir(mine).ours
    assert RunDir(mine).tidy_after_failure(stepped=False) is None and (mine / "notes.txt").is_file()
    here = a_run_dir(tmp_path / "here")
    monkeypatch.chdir(here)  # hydra.run.dir=.
    assert not RunDir(Path(".")).ours and not RunDir(here).remove_if_unstarted()


def test_swin_eval_and_predict_add_no_dated_dir_and_a_bad_start_leaves_nothing(tmp_path):
    trained = run_cli(*FAST, "epochs=1", "hydra.run.dir=outputs/run", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "outputs" / "run"
    images = tmp_path / "new"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(images / "0.png")
    exe = Path(sys.executable).with_name("swin-eval")
    evaluated = subprocess.run([str(exe), "ckpt=outputs/run", "data=digits"], cwd=tmp_path, capture_output=True,
                               text=True, timeout=120)
    predicted = run_cli("mode=predict", "ckpt=outputs/run/best.pt", f"predict_dir={images}", cwd=tmp_path)
    assert evaluated.returncode == 0 and predicted.returncode == 0, evaluated.stderr + predicted.stderr
    [eval_json] = run.glob("eval/*/eval.json")
    assert f"wrote {eval_json}" in evaluated.stdout
    assert json.loads(eval_json.read_text())["split"] == "test"
    assert len(list(run.glob("eval/*/predictions.csv"))) == 1
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["run"]  # no dated dirs

    # A bad checkpoint fails before the first step: its run dir is removed, and it says so.
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    failed = run_cli(*FAST, "epochs=1", "resume=cut.pt", cwd=tmp_path)
    assert failed.returncode == 1 and "is truncated or corrupt" in failed.stderr
    assert "removed the run dir" in failed.stdout
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["run"]
