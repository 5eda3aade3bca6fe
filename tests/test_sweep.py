"""Sweeps through Hydra's plugins (optional `sweep` extra): Optuna search and parallel jobs."""

from __future__ import annotations

import csv
import json
import os

import pytest
from conftest import TINY_MODEL, run_cli

from swin_cli.main import one_line
from swin_cli.text import plural

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e


def read_summary(sweep_dir):
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_optuna_runs_three_trials_and_maximises_val_acc(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = run_cli("hparams_search=cifar10_optuna", "hydra.sweeper.n_trials=3", "data=digits", "epochs=1",
                   "train.max_steps_per_epoch=3", f"hydra.sweep.dir={tmp_path / 'opt'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = read_summary(tmp_path / "opt")
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert all("optimizer.lr=" in r["overrides"] and "data.batch_size=" in r["overrides"] for r in rows)
    # Optuna's best trial is the one with the highest validation accuracy the jobs returned.
    reported = float(proc.stdout.split("Best value: ")[1].split()[0])
    assert reported == pytest.approx(max(float(r["best_val_acc"]) for r in rows), abs=0.01)


def test_joblib_runs_jobs_in_parallel_with_a_share_of_the_cores(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    proc = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY_MODEL, "data=digits", "epochs=1",
                   "train.max_steps_per_epoch=2", "model.window_size=4,0", f"hydra.sweep.dir={tmp_path / 'jl'}",
                   cwd=tmp_path)
    assert proc.returncode == 1  # one job fails validation; it is reported, the other finishes
    rows = read_summary(tmp_path / "jl")
    assert sorted(r["status"] for r in rows) == ["failed", "ok"]
    ok = next(r for r in rows if r["status"] == "ok")
    log = (tmp_path / "jl" / ok["job"] / "swin-train.log").read_text()
    assert f"cpu, {plural(max(1, (os.cpu_count() or 1) // 2), 'thread')}" in log
    assert json.loads((tmp_path / "jl" / ok["job"] / "results.json").read_text())["epochs"] == 1


def test_submitit_local_runs_a_tiny_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = run_cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *TINY_MODEL,
                   "data=digits", "epochs=1", "train.max_steps_per_epoch=2", f"hydra.sweep.dir={tmp_path / 'sl'}",
                   cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in read_summary(tmp_path / "sl")] == ["ok"]


def test_missing_plugin_names_the_extra():
    message = "In 'config': Could not find 'hydra/launcher/joblib'\n\nAvailable options in 'hydra/launcher':\n\tbasic"
    assert one_line(message).endswith('(a Hydra plugin from an optional extra: pip install "swin-cli[sweep]")')


def test_slurm_launcher_config_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = run_cli("--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    launcher = proc.stdout.split("launcher:")[1]
    assert "SlurmLauncher" in launcher and "partition: gpu" in launcher and "max_num_timeout: 5" in launcher


def test_failed_job_raises_for_optuna_and_returns_for_the_basic_sweeper(tmp_path):
    from omegaconf import OmegaConf

    from swin_cli import sweep

    error = ValueError("model.window_size must be >= 1 (got 0)")
    basic = OmegaConf.create({"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}})
    assert sweep.failed_job(tmp_path, str(error), basic, error) is None
    assert (tmp_path / "error.txt").read_text() == "model.window_size must be >= 1 (got 0)\n"
    target = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    optuna = OmegaConf.create({"sweeper": {"_target_": target}})
    with pytest.raises(ValueError):  # Optuna records the trial as FAIL and carries on
        sweep.failed_job(tmp_path, str(error), optuna, error)
