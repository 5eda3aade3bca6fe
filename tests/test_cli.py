"""End to end through the real `swin-train` console script, as a user runs it."""

from __future__ import annotations

import csv
import json
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, ROOT, SHARED_CIFAR, TINY_MODEL, run_cli, run_cli_together
from PIL import Image

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e


def test_digits_nano_trains_end_to_end(tmp_path):
    proc = run_cli("data=digits", "model=nano", "epochs=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1 | train loss" in proc.stdout and "val loss" in proc.stdout and "test acc" in proc.stdout
    run_dirs = [p.parent for p in (tmp_path / "outputs").glob("*/*/results.json")]
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    for name in ("metrics.csv", "metrics.jsonl", "results.json", "last.pt", "best.pt", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs"] == 1 and results["params"] > 100_000 and 0 <= results["test_acc"] <= 100

    # swin-eval (mode=eval) on the run dir's best checkpoint reproduces the run's test accuracy.
    exe = Path(sys.executable).with_name("swin-eval")
    proc = subprocess.run([str(exe), f"ckpt={run_dir}", "data=digits", f"hydra.run.dir={tmp_path / 'eval'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert evaluated["acc"] == pytest.approx(results["test_acc"])

    # mode=predict labels a folder of images into predictions.csv.
    images = tmp_path / "new"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(images / f"{i}.png")
    (images / "bad.png").write_bytes(b"junk")
    proc = run_cli("mode=predict", f"ckpt={run_dir / 'best.pt'}", f"predict_dir={images}",
                   f"hydra.run.dir={tmp_path / 'pred'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "pred" / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,prediction,confidence,top1") and len(rows) == 4
    assert all(r.split(",")[1] in [str(d) for d in range(10)] for r in rows[1:])
    assert "1 unreadable skipped" in proc.stdout
    assert "bad.png" in proc.stdout + proc.stderr  # the skipped file is named


def test_mode_preview_writes_the_augmented_batch_and_trains_nothing(tmp_path):
    proc = run_cli("mode=preview", "data=digits", "aug=crop", "aug.auto_augment=trivialaugment",
                   "aug.random_erasing=0.25", "aug.mixup_alpha=0.8", "aug.cutmix_alpha=1.0",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / "run" / "augment_preview.png"
    assert f"wrote {png}" in proc.stdout
    image = Image.open(png)
    assert image.format == "PNG" and image.width > 600 and image.height > 300
    assert not list((tmp_path / "run").glob("*.pt"))


def test_mode_summary_shows_stages_without_training(tmp_path):
    proc = run_cli("mode=summary", "model=tiny", "data=digits", "data.image_size=64", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "MFLOPs/image forward" in proc.stdout and "16x16" in proc.stdout and "2x2" in proc.stdout
    assert not re.search(r"^epoch\s+\d+/", proc.stdout, re.MULTILINE)  # no training happened
    assert "resolved config" in proc.stdout and "window_size=7" in proc.stdout
    assert not list(tmp_path.glob("outputs/*"))  # a summary writes no run dir


def test_python_dash_m_and_cfg_job(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "swin_cli", "--cfg", "job", "model=tiny", "optimizer.lr=3e-4"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "embed_dim: 96" in proc.stdout and "lr: 0.0003" in proc.stdout


def test_multirun_makes_one_run_dir_per_job_and_a_summary(tmp_path):
    # Four jobs, two of which fail validation: the others still finish and all four are reported.
    proc = run_cli("-m", "model=nano", "model.window_size=4,0", "optimizer.lr=1e-3,3e-4", "epochs=1", "data=digits",
                   "train.max_steps_per_epoch=3", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 1 and "2 sweep jobs failed" in proc.stderr
    results = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert [p.parent.name for p in results] == ["0", "1"]
    configs = [(p.parent / ".hydra" / "config.yaml").read_text() for p in results]
    assert "lr: 0.001\n" in configs[0] and "lr: 0.0003\n" in configs[1]

    with open(tmp_path / "sweep" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]
    assert float(rows[0]["best_val_acc"]) >= float(rows[1]["best_val_acc"])
    assert rows[2]["error"] == "model.window_size must be >= 1 (got 0)"
    assert all("model=nano" not in r["overrides"] for r in rows)  # shared overrides left out
    assert "model.window_size=0 optimizer.lr=0.0003" in {r["overrides"] for r in rows}
    assert (tmp_path / "sweep" / "summary.md").read_text().count("\n") == 6
    assert "best validation accuracy first" in proc.stdout

    # swin-report reads the sweep back: the same table, and a comparison plot of the curves.
    report = subprocess.run([str(Path(sys.executable).with_name("swin-report")), str(tmp_path / "sweep")],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    assert "4 runs" in report.stdout and "model.window_size=0 optimizer.lr=0.0003" in report.stdout
    with Image.open(tmp_path / "sweep" / "val_acc_comparison.png") as png:
        assert png.size[0] > 300 and png.size[1] > 200


@pytest.mark.parametrize("args, message", [
    (["model=huge"], "Could not find 'model/huge'; Available options in 'model': base, large, nano, small, tiny"),
    (["model.window_size=0"], "model.window_size must be >= 1 (got 0)"),
    (["data=imagefolder", "data.root=/nope"], "data.root=/nope does not exist"),
    (["model.windowsize=4"], "Key 'windowsize' not in 'ModelConfig'"),
    (["optimizer.name=lion"], "expected one of [adamw, adam, sgd]"),
    (["data.image_size=30", "model.patch_size=4"], "data.image_size=30 is not divisible by model.patch_size=4"),
    (["device=cuda"], "device=cuda was requested but no CUDA GPU is available"),
    (["data.root=/data/dáta"], """token recognition error at: 'á' (a value with non-ASCII characters must be """
                               """quoted twice, in double quotes for Hydra inside single quotes for the shell: """
                               """'data.root="..."' with the whole value between the double quotes)"""),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    if args == ["device=cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    proc = run_cli(*args, "epochs=1", cwd=tmp_path, timeout=120)
    runtime = args[0] in ("device=cuda", "data=imagefolder")  # 1: the environment; 2: a bad config
    assert proc.returncode == (1 if runtime else 2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("swin-train: error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    # Neither a config that never ran nor a run that failed before its first step, with nothing
    # worth keeping, leaves a run dir behind; the runtime failure says so.
    assert not list(tmp_path.glob("outputs/*")), list(tmp_path.glob("outputs/**/*"))
    assert ("removed the run dir" in proc.stdout) == runtime, proc.stdout


def test_swin_eval_names_itself_and_a_missing_ckpt_is_a_config_error(tmp_path):
    exe = Path(sys.executable).with_name("swin-eval")
    proc = subprocess.run([str(exe), "data=digits"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("swin-eval: error: mode=eval needs ckpt=/path/to/checkpoint.pt "
                                   "(or a run dir: its best.pt)")


def test_runtime_faults_are_one_line_with_exit_code_1(tmp_path):
    """Data, checkpoint, NaN and disk problems: one line naming the problem, exit code 1."""
    empty = tmp_path / "empty"
    empty.mkdir()
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    mismatch = tmp_path / "mismatch"
    for split, classes in (("train", ("cat", "dog")), ("test", ("cat", "cow"))):
        for name in classes:
            (mismatch / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(mismatch / split / name / "0.png")
    # A checkpoint of a wider model than the one asked for.
    from conftest import make_config

    from swin_cli import checkpoint
    from swin_cli.atomic_io import save_atomic

    signature = checkpoint.shape_signature(make_config(*TINY_MODEL, "model.embed_dim=16"), 1, 10)
    other = tmp_path / "other.pt"
    save_atomic({"format": "swin-cli", "format_version": checkpoint.FORMAT_VERSION,
                 "signature": signature}, other)
    cases = [
        (["data=imagefolder", f"data.root={empty}"], "has no train/ folder"),
        (["data=imagefolder", f"data.root={mismatch}", f"data.cache_dir={tmp_path / 'cache'}"],
         "have different classes (missing ['dog'])"),
        ([f"resume={other}"], "does not fit this model: model.embed_dim=16 in the checkpoint vs 8 here"),
        ([f"resume={truncated}"], "is truncated or corrupt"),
        ([f"resume={tmp_path / 'missing'}"], "checkpoint not found"),
        (["optimizer.lr=1e30"], "the loss became nan at step"),
        (["hydra.run.dir=/dev/null/run"], "cannot write /dev/null/run"),
    ]
    runs = [[*args, *TINY_MODEL, "epochs=1", "threads=1",
             *([] if any(a.startswith("hydra.run.dir=") for a in args) else [f"hydra.run.dir={tmp_path / str(i)}"])]
            for i, (args, _) in enumerate(cases)]
    for (args, message), proc in zip(cases, run_cli_together(runs, cwd=tmp_path, timeout=180)):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1, (args, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("swin-train: error: ") and message in lines[0], proc.stderr


def test_sigterm_saves_then_resume_finishes(tmp_path):
    # Six epochs of ~0.5 s: the signal, sent once epoch 1 is reported, lands well before the end.
    args = [*TINY_MODEL, "data=digits", "data.batch_size=16", "epochs=6", "threads=1", "log.interval=1"]
    run_dir = tmp_path / "run"
    exe = Path(sys.executable).with_name("swin-train")
    proc = subprocess.Popen([str(exe), *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("epoch 1/6"):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert f"resume with: swin-train {shlex.join(args)} resume={run_dir}" in out
    assert (run_dir / "last.pt").is_file()

    resumed = run_cli(*args, f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'resumed'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "epoch 6/6" in resumed.stdout
    assert (tmp_path / "resumed" / "metrics.csv").read_text().count("\n") == 7


def test_resuming_a_finished_run_says_nothing_is_left_and_exits_0(tmp_path):
    args = [*FAST, "epochs=2"]
    done = run_cli(*args, "hydra.run.dir=outputs/done", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    test_acc = json.loads((tmp_path / "outputs" / "done" / "results.json").read_text())["test_acc"]
    auto, named = run_cli_together([[*args, "resume=auto", "hydra.run.dir=outputs/again"],
                                    [*args, "resume=outputs/done", "hydra.run.dir=outputs/named"]], cwd=tmp_path)
    for proc in (auto, named):
        assert proc.returncode == 0, proc.stderr
        assert (f"nothing left to train: outputs/done finished all 2 epochs; test acc {test_acc:.2f}% "
                f"(from outputs/done/results.json)") in proc.stdout, proc.stdout
        assert "resumed from" not in proc.stdout and "epoch 3" not in proc.stdout and "Traceback" not in proc.stderr
    # Nothing was trained, so nothing new is left under outputs/.
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["done"]


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="../shared/data/cifar10-jpg is not present")
def test_one_epoch_of_real_cifar10_beats_chance(tmp_path):
    proc = run_cli("data=imagefolder", f"data.root={SHARED_CIFAR}", "model=nano", "epochs=1",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test_acc"] >= 35.0


def test_help_is_fast_imports_no_torch_and_shows_defaults_and_keys(tmp_path):
    import dataclasses

    from swin_cli.config import Config
    from swin_cli.help import GROUP_KEYS, TOP_LEVEL_KEYS

    probe = ("import sys, io, contextlib; sys.argv = ['swin-train', '--help']; from swin_cli import main as m\n"
             "out = io.StringIO()\nwith contextlib.redirect_stdout(out): m.main()\n"
             "print('torch' in sys.modules); print(out.getvalue())")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported_torch, text = proc.stdout.split("\n", 1)
    assert imported_torch == "False"
    assert "model:          base, large, nano*, small, tiny" in text and "experiment:" in text
    assert "epochs=10 " in text and "device=auto " in text and "--cfg job" in text and "--hydra-help" in text
    # Every key of the schema is either explained on its own line or a group of keys.
    assert set(TOP_LEVEL_KEYS) | set(GROUP_KEYS) == {f.name for f in dataclasses.fields(Config)}
    assert not list(tmp_path.iterdir())  # help makes no run dir

    exe = Path(sys.executable).with_name("swin-eval")
    proc = subprocess.run([str(exe), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("swin-eval: ")


@pytest.mark.slow
def test_finetune_experiment_starts_from_the_cached_imagenet_weights(tmp_path):
    """The README's fine-tune command, offline: torchvision-layout weights placed in the torch hub
    cache where model.pretrained=imagenet looks for them."""
    import os

    import torch
    import torchvision

    torch.manual_seed(0)
    weights = torchvision.models.swin_t().state_dict()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(weights, cache / os.path.basename(torchvision.models.Swin_T_Weights.IMAGENET1K_V1.url))
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / "folder" / split / name).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                    tmp_path / "folder" / split / name / f"{i}.png")
    proc = run_cli("experiment=finetune", f"data.root={tmp_path / 'folder'}", "epochs=1", "data.batch_size=4",
                   "data.val_fraction=0", f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path, timeout=600, env={**os.environ, "TORCH_HOME": str(tmp_path / "torch")})
    assert proc.returncode == 0, proc.stderr
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    # Started from the cached weights (one small step at lr 1e-4 x 0.9^12 moves them little) ...
    assert (saved["model"]["patch_embed.proj.weight"] - weights["features.0.0.weight"]).abs().max() < 1e-3
    # ... with a new two-class head, and the recipe's layer-wise decay.
    assert saved["model"]["head.weight"].shape == (2, 768)
    lrs = [g["initial_lr"] for g in saved["optimizer"]["param_groups"]]
    assert lrs[0] == pytest.approx(1e-4) and min(lrs) == pytest.approx(1e-4 * 0.9 ** 13)


def test_the_cifar10_swin_recipe_runs_end_to_end_on_a_cpu(tmp_path):
    """The headline recipe as a user proves it on a CPU (fp32, not compiled, two steps): its
    AutoAugment policy, repeated augmentation, mixing, EMA and the depths 2-6-4 model, on a small
    folder of 32 px images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 4)):
        for name in ("cat", "dog", "ship"):
            (tmp_path / "folder" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "folder" / split / name / f"{i}.png")
    proc = run_cli("experiment=cifar10_swin", "data=imagefolder", f"data.root={tmp_path / 'folder'}",
                   "train.precision=fp32", "train.compile=false", "epochs=1", "train.max_steps_per_epoch=2",
                   "data.batch_size=12", "data.val_fraction=0.25", f"data.cache_dir={tmp_path / 'cache'}",
                   f"hydra.run.dir={tmp_path / 'run'}", "threads=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "autoaugment cifar10" in proc.stdout and "repeated x3" in proc.stdout, proc.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 2 and results["test_acc"] is not None and results["params"] == 7_084_413
