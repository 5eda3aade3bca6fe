"""Experiment trackers: the `logger` config group, and what TensorBoard, MLflow and W&B receive."""

from __future__ import annotations

import glob
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from conftest import CONF, FAST, TINY_MODEL, make_config, run_cli

from swin_cli import checkpoint
from swin_cli.config import ConfigError, validate
from swin_cli.loggers import TRACKERS, MissingExtra, missing_library, open_trackers, selected

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e


def config(*overrides: str):
    return make_config(*FAST, *overrides)


def train(cfg, run_dir: Path, **kwargs):
    """A Trainer (imported here: the config tests need no training stack)."""
    from swin_cli.train import Trainer

    return Trainer(cfg, run_dir, **kwargs)


# ----------------------------------------------------------------------------- the config group

def test_logger_group_selects_one_several_or_no_tracker():
    # Every registered tracker has its option in conf/logger/, and selecting it selects it.
    options = {p.stem for p in (CONF / "logger").glob("*.yaml")}
    assert options == {"none", *TRACKERS}
    for name in TRACKERS:
        assert selected(config(f"logger={name}")) == [name], name
    assert selected(config()) == []
    assert selected(config("logger=wandb")) == ["wandb"]
    assert selected(config("logger=[tensorboard,mlflow]")) == ["tensorboard", "mlflow"]
    assert selected(config("logger=[none,wandb]")) == ["wandb"]
    assert selected(config("debug=fast")) == []  # debug=fast turns trackers off ...
    assert selected(config("debug=fast", "logger=tensorboard")) == ["tensorboard"]  # ... unless asked
    cfg = config("logger=[mlflow,wandb]", "logger.mlflow.experiment=x", "logger.wandb.tags=[a,b]")
    assert cfg.logger.mlflow.experiment == "x" and list(cfg.logger.wandb.tags) == ["a", "b"]
    assert cfg.logger.wandb.project == "swin-cli" and cfg.logger.wandb.dir is None


def composition_error(*overrides: str) -> str:
    """Hydra's error for a config, with its cause (swin-train prints both, on one line)."""
    from hydra.errors import HydraException

    with pytest.raises(HydraException) as info:
        config(*overrides)
    return f"{info.value} {info.value.__cause__}"


def test_logger_mistakes_fail_at_start_naming_the_fix():
    assert "Could not find 'logger/tensorbord'\n\nAvailable options in 'logger':\n\tmlflow\n\tnone\n\ttensorboard\n" \
           "\twandb" in composition_error("logger=tensorbord")
    assert "Key 'experimnt' not in 'MlflowSettings'" in composition_error("logger=mlflow", "logger.mlflow.experimnt=x")
    assert "expected one of [online, offline, disabled]" in composition_error("logger=wandb", "logger.wandb.mode=onlin")
    # A setting of a tracker that logger= did not select would silently do nothing.
    with pytest.raises(ConfigError, match=r"logger.wandb.project is set but logger= does not select wandb: "
                                          r"add logger=wandb"):
        validate(config("logger=mlflow", "logger.wandb.project=mine"))
    # The old spellings of the MLflow settings name the new ones.
    with pytest.raises(ConfigError, match=r"log.tracking_uri is now logger.mlflow.tracking_uri"):
        validate(config("logger=mlflow", "log.tracking_uri=sqlite:///x.db"))
    with pytest.raises(ConfigError, match=r"log.experiment is now logger.mlflow.experiment"):
        validate(config("log.experiment=x"))


def test_a_tracker_whose_extra_is_missing_fails_in_one_line_before_any_data(monkeypatch):
    import importlib.util
    import sys

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "wandb" else real_find_spec(name, *args))
    cfg = config("logger=[tensorboard,wandb]")
    assert missing_library(cfg) == 'logger=wandb needs wandb: pip install "swin-cli[wandb]"'
    with pytest.raises(ConfigError, match=r'pip install "swin-cli\[wandb\]"'):
        validate(cfg)  # main.run validates before anything is loaded
    validate(config("logger=wandb", "mode=eval", "ckpt=x.pt"))  # only training reports to trackers
    # Installed but broken (or hidden): the tracker's own import says the same.
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingExtra, match=r'logger=wandb needs wandb: pip install "swin-cli\[wandb\]"'):
        open_trackers(config("logger=wandb"), Path("unused"))


def test_runs_made_before_the_logger_group_still_resume(tmp_path):
    """Old checkpoints hold `logger: none` (a string) and log.tracking_uri/experiment; which
    trackers a run reports to does not change what it computes, so resume ignores it."""
    old_dir = tmp_path / "outputs" / "old"
    train(config("epochs=1"), old_dir).fit()
    state = torch.load(old_dir / "last.pt", map_location="cpu", weights_only=True)
    state["config"]["logger"] = "none"
    state["config"]["log"] = {"progress": True, "interval": 10, "tracking_uri": None, "experiment": None}
    torch.save(state, old_dir / "last.pt")

    from omegaconf import OmegaConf

    pytest.importorskip("tensorboard")
    cfg = config("epochs=2", "logger=tensorboard")
    wanted = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    found = checkpoint.resume_source("auto", wanted, tmp_path / "outputs" / "new", tmp_path / "outputs")
    assert found == old_dir / "last.pt"
    trainer = train(config("epochs=2", "logger=tensorboard", f"resume={old_dir}"), tmp_path / "resumed")
    trainer.fit()
    assert trainer.resumed_from is not None and [r["epoch"] for r in trainer.history] == [1, 2]
    assert list((tmp_path / "resumed" / "tb").iterdir())


# -------------------------------------------------------------------------- TensorBoard, MLflow

def test_tensorboard_logger_writes_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(config("epochs=2", "logger=tensorboard"), tmp_path).fit()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2]
    assert "train_loss" in events.Tags()["scalars"]


def test_mlflow_logger_records_params_metrics_and_artifacts_offline(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    results = train(config("epochs=2", "logger=[tensorboard,mlflow]"), tmp_path / "run").fit()
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("swin-cli").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["optimizer.lr"] == "0.002" and run.data.params["model.depths"] == "[1, 1]"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert run.data.metrics["test_acc"] == pytest.approx(results["test_acc"])
    assert {"results.json", "metrics.csv", "curves.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert list((tmp_path / "run" / "tb").iterdir())  # and TensorBoard beside it

    # A sweep is one experiment, named after its folder, with one run per job.
    sweep = tmp_path / "outputs" / "multirun" / "x"
    for job in ("0", "1"):
        train(config("epochs=1", "logger=mlflow"), sweep / job, sweep_dir=sweep).fit()
    runs = client.search_runs([client.get_experiment_by_name(f"swin-cli {sweep}").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["job 0", "job 1"]

    # The experiment is a setting of the mlflow tracker.
    train(config("epochs=1", "logger=mlflow", "logger.mlflow.experiment=mine"), tmp_path / "mine").fit()
    (run,) = client.search_runs([client.get_experiment_by_name("mine").experiment_id])
    assert run.info.run_name == "mine"


# ------------------------------------------------------------------------------ Weights & Biases

def read_offline_run(run_dir: Path) -> dict:
    """What an offline wandb run recorded, from its transaction log (<dir>/wandb/offline-run-*/
    run-*.wandb): LevelDB-style log blocks of 32 KiB after a 7-byte file header, each record a
    7-byte header (crc32c, length, kind: 1 full, 2 first, 3 middle, 4 last) and a protobuf
    `Record` of wandb's. wandb 0.31 ships no reader for it."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    run = {"config": {}, "history": [], "summary": {}, "files": set(), "tags": [], "exit_code": None}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            run.update(tags=list(record.run.tags), name=record.run.display_name, group=record.run.run_group)
        elif kind == "history":
            run["history"].append({i.key or ".".join(i.nested_key): json.loads(i.value_json)
                                   for i in record.history.item})
        elif kind == "summary":
            run["summary"].update({i.key or ".".join(i.nested_key): json.loads(i.value_json)
                                   for i in record.summary.update})
        elif kind == "files":
            run["files"] |= {f.path for f in record.files.files}
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def wandb_children() -> list[int]:
    """This process's child processes that wandb started (its service, wandb-core)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if int(rest[1]) == os.getpid() and "wandb" in name:
            found.append(int(Path(stat).parent.name))
    return found


def offline_wandb_env(home: Path) -> dict[str, str]:
    """wandb offline, keeping its logs and caches under `home` instead of the user's."""
    return {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CACHE_DIR": str(home / "cache"),
            "WANDB_DATA_DIR": str(home / "data"), "WANDB_CONFIG_DIR": str(home / "config")}


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for key, value in offline_wandb_env(tmp_path / "wandb-home").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_wandb_tracker_records_config_epochs_summary_and_files_offline(tmp_path, offline_wandb):
    cfg = config("epochs=2", "logger=wandb", "logger.wandb.tags=[nano,digits]")
    (tracker,) = open_trackers(cfg, tmp_path / "run")
    tracker.epoch({"epoch": 1, "train_loss": 2.0, "val_acc": 30.0, "ema_val_acc": None, "step": 4}, 1)
    tracker.epoch({"epoch": 2, "train_loss": 1.5, "val_acc": 45.5, "ema_val_acc": None, "step": 8}, 2)
    (tmp_path / "run" / "results.json").write_text('{"test_acc": 44.0}\n')
    tracker.finish({"test_acc": 44.0, "best_val_acc": 45.5, "classes": ["0", "1"], "model": "nano"}, tmp_path / "run")
    assert wandb_children() == []  # the service process ended with the run

    run = read_offline_run(tmp_path / "run")
    assert run["name"] == "run" and run["tags"] == ["nano", "digits"] and run["exit_code"] == 0
    assert run["config"]["optimizer"]["lr"] == 0.002 and run["config"]["epochs"] == 2
    assert run["config"]["logger"]["wandb"]["enabled"] is True
    assert [(h["_step"], h["val_acc"], h["train_loss"]) for h in run["history"]] == [(1, 30.0, 2.0), (2, 45.5, 1.5)]
    assert "ema_val_acc" not in run["history"][0]  # a missing value is left out, not logged as null
    assert run["summary"]["test_acc"] == 44.0 and run["summary"]["model"] == "nano"
    assert "classes" not in run["summary"]
    assert "results.json" in run["files"]
    tracker.abort()  # after finish: nothing left to close


def test_wandb_job_of_a_sweep_that_stops_is_marked_failed(tmp_path, offline_wandb, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")  # logger.wandb.mode alone makes it offline
    sweep = tmp_path / "multirun" / "x"
    (tracker,) = open_trackers(config("logger=wandb", "logger.wandb.mode=offline"), sweep / "3", sweep_dir=sweep)
    tracker.epoch({"epoch": 1, "val_acc": 10.0}, 1)
    tracker.abort()
    assert wandb_children() == []
    run = read_offline_run(sweep / "3")
    assert run["exit_code"] == 1 and run["name"] == "job 3" and run["group"] == str(sweep)


def test_swin_train_logger_wandb_end_to_end_offline(tmp_path):
    pytest.importorskip("wandb")
    env = {**os.environ, **offline_wandb_env(tmp_path / "wandb-home")}
    env.pop("WANDB_API_KEY", None)
    proc = run_cli(*TINY_MODEL, "data=digits", "epochs=1", "train.max_steps_per_epoch=3", "threads=1",
                   "logger=wandb", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    offline = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*"))
    assert len(offline) == 1 and f"wandb sync {offline[0]}" in proc.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    run = read_offline_run(tmp_path / "run")
    assert run["config"]["model"]["embed_dim"] == 8 and run["exit_code"] == 0
    assert [h["_step"] for h in run["history"]] == [1] and run["history"][0]["step"] == 3
    assert run["summary"]["test_acc"] == pytest.approx(results["test_acc"])
    assert {"results.json", "metrics.csv"} <= run["files"]
