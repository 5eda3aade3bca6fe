"""swin-export: ONNX (and TorchScript) files that give torch's logits under ONNX Runtime."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, run_cli
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from swin_cli import export as ex  # noqa: E402
from swin_cli.errors import SwinCliError  # noqa: E402
from swin_cli.export_config import KEYS, export_args, register  # noqa: E402
from swin_cli.model import SwinTransformer  # noqa: E402
from swin_cli.onnx_runtime import OnnxClassifier, missing_extra_message  # noqa: E402

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e

# swin-export's keys, as its errors list them.
ALL_KEYS = ("ckpt, format, out, batch, opset, exporter, quantize, quantize_mode, calibration_images, check_images, "
            "weight_bits")
# Image 20, patch 2: a 10x10 map, padded to 12 for window 4, shifted by 2 with a mask; after
# merging a 5x5 map, padded to 8, shifted and masked again.
SMALL = dict(image_size=20, patch_size=2, in_chans=3, num_classes=5, embed_dim=8, depths=[2, 2],
             num_heads=[2, 2], window_size=4)


def _small_model(version: int, attn_impl: str) -> SwinTransformer:
    kwargs = dict(SMALL, attn_impl=attn_impl)
    if version != 1:
        try:
            SwinTransformer(**kwargs, version=version)
        except (TypeError, ValueError) as exc:
            pytest.skip(f"SwinTransformer(version={version}) is not in swin_cli/model.py yet ({exc})")
        kwargs["version"] = version
    torch.manual_seed(0)
    model = SwinTransformer(**kwargs).eval()
    # Weights of order one (the init's are 0.02), so a mask, roll or pad done wrong would move
    # the logits by far more than the tolerance.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model


def _exercised(model: SwinTransformer) -> None:
    """The model pads, shifts and masks in both stages, and the mask changes its output."""
    attns = [b.attn for s in model.stages for b in s.blocks]
    assert all(a.geometry[0] > 0 for a in attns)  # padded
    assert sum(a.attn_mask is not None for a in attns) == 2  # one shifted, masked block per stage
    x = torch.randn(3, 3, 20, 20)
    with torch.no_grad():
        with_mask = model(x)
        saved = [a.attn_mask for a in attns]
        for a in attns:
            if a.attn_mask is not None:
                a.attn_mask = torch.zeros_like(a.attn_mask)
        without_mask = model(x)
        for a, m in zip(attns, saved):
            a.attn_mask = m
    assert (with_mask - without_mask).abs().max() > 100 * ex.TOLERANCE


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("exporter,attn_impl", [
    ("dynamo", "math"),
    # The deprecated TorchScript-based exporter (exporter=legacy), with the SDPA kernel.
    pytest.param("legacy", "sdpa", marks=pytest.mark.slow),
])
def test_onnx_matches_torch_with_shift_mask_padding_and_dynamic_batch(tmp_path, version, exporter, attn_impl):
    model = _small_model(version, attn_impl)
    _exercised(model)
    path = tmp_path / "m.onnx"
    ex.export_onnx(model, torch.randn(ex.EXAMPLE_BATCH, 3, 20, 20), path, exporter)
    runner = OnnxClassifier(path, sidecar=False)
    assert runner.input_name == "images" and runner.output_name == "logits"
    assert isinstance(runner.input_shape[0], str) and runner.input_shape[1:] == [3, 20, 20]  # dynamic batch
    inputs = torch.randn(7, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    diffs = ex.max_differences(model, runner, inputs, [7, 1])
    assert max(diffs) <= ex.TOLERANCE, diffs


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny digits run whose model shifts (depth 2) and pads (image 20: a 10x10 map, window 4)."""
    tmp = tmp_path_factory.mktemp("export")
    overrides = [a for a in TINY_MODEL if not a.startswith(("model.depths=", "data.image_size="))]
    overrides += ["model.depths=[2,1]", "data.image_size=20"]
    proc = run_cli("data=digits", "epochs=1", "train.max_steps_per_epoch=2", *overrides,
                   f"hydra.run.dir={tmp / 'run'}", cwd=tmp, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return tmp / "run"


def _swin_export(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("swin-export")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "swin_cli.export"]
    return subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def composed_args(*overrides: str) -> dict:
    """swin-export's arguments as its command line composes them (conf/export.yaml)."""
    from hydra import compose, initialize_config_module

    register()
    with initialize_config_module("swin_cli.conf", version_base="1.3"):
        return export_args(compose("export", list(overrides)))


def test_swin_export_console_script_on_a_run_dir(trained_run):
    before = sorted(os.listdir(trained_run.parent))
    proc = _swin_export(f"ckpt={trained_run}", "batch=6", cwd=trained_run.parent)
    assert proc.returncode == 0, proc.stderr
    # Hydra composed the arguments and left nothing in the folder it ran in (no run dir, .hydra, log).
    assert sorted(os.listdir(trained_run.parent)) == before
    match = re.search(r"ONNX Runtime \(CPU\) vs torch on test images of data=digits: max abs diff (\S+)",
                      proc.stdout)
    assert match and float(match.group(1)) <= 1e-4, proc.stdout
    assert "at batch 6" in proc.stdout and "at batch 1" in proc.stdout
    onnx_file, sidecar = trained_run / "best.onnx", trained_run / "best.onnx.json"
    assert onnx_file.is_file() and sidecar.is_file()
    assert not list(trained_run.glob(".*.tmp"))
    meta = json.loads(sidecar.read_text())
    assert meta["classes"] == [str(d) for d in range(10)] and meta["image_size"] == 20 and meta["channels"] == 1
    assert meta["input"]["name"] == "images" and meta["output"]["name"] == "logits"
    assert meta["checkpoint"] == str((trained_run / "best.pt").resolve())
    assert meta["check"]["max_abs_diff"] <= 1e-4 and meta["check"]["batch_sizes"] == [6, 1]
    assert len(meta["mean"]) == 1 and len(meta["std"]) == 1 and meta["swin_cli_version"]

    # OnnxClassifier (the predict_backend=onnx runner) with the sidecar: torch's predictions.
    from swin_cli import checkpoint
    from swin_cli.augment import Normalize
    from swin_cli.build import model_from_checkpoint

    clf = OnnxClassifier(onnx_file)
    assert clf.classes == meta["classes"] and clf.mean == meta["mean"] and clf.image_size == 20
    state = checkpoint.load(trained_run / "best.pt")
    images, where = ex.sample_images(state, 5)
    assert where == "test images of data=digits"
    x = Normalize(clf.mean, clf.std, torch.device("cpu"))(images)
    with torch.no_grad():
        expected = model_from_checkpoint(state)(x)
    got = clf(x)
    assert got.shape == (5, 10) and (got - expected).abs().max() <= 1e-4
    with pytest.raises(SwinCliError, match="takes images of shape"):
        clf(torch.zeros(2, 3, 20, 20))


def test_torchscript_export_and_a_failed_check_writes_nothing(trained_run, tmp_path, monkeypatch, capsys):
    meta = ex.export(composed_args(f"ckpt={trained_run / 'best.pt'}", "format=torchscript", f"out={tmp_path}"))
    out = tmp_path / "best.torchscript.pt"
    assert meta["check"]["max_abs_diff"] <= 1e-4 and out.is_file()
    assert json.loads((tmp_path / "best.torchscript.pt.json").read_text())["format"] == "torchscript"
    assert "max abs diff" in capsys.readouterr().out

    monkeypatch.setattr(ex, "TOLERANCE", -1.0)  # no difference can pass
    with pytest.raises(SwinCliError, match="nothing written"):
        ex.export(composed_args(f"ckpt={trained_run}", "format=torchscript", f"out={tmp_path / 'bad.pt'}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.torchscript.pt", "best.torchscript.pt.json"]


def test_missing_extra_is_one_line_naming_it(trained_run, tmp_path):
    fake = tmp_path / "fake" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('simulated: not installed')\n")
    proc = _swin_export(f"ckpt={trained_run}", cwd=tmp_path, env={"PYTHONPATH": str(fake.parent)})
    assert proc.returncode == 1
    assert proc.stderr.strip() == ('swin-export: error: ONNX export needs onnxruntime, which is not installed: '
                                   'pip install "swin-cli[export]"')
    assert "swin-cli[export]" in missing_extra_message(["onnx", "onnxruntime"])


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("argv,message", [
    (["ckpt=x", "foo=1"], "Key 'foo' not in 'ExportConfig' (keys: " + ALL_KEYS + ")"),
    (["ckpt=x", "+foo=1"], "unknown key 'foo' (keys: " + ALL_KEYS + ")"),
    (["ckpt=x", "format=tflite"], "format=tflite; Invalid value 'tflite', expected one of [onnx, torchscript]"),
    (["ckpt=x", "batch=0"], "batch must be a positive integer (got 0)"),
    (["ckpt=x", "opset=0"], "opset must be a positive integer (got 0)"),
    (["ckpt=x", "opset=x"], "opset=x; Value 'x' of type 'str' could not be converted to Integer"),
    (["ckpt=x", "exporter=jit"], "exporter=jit; Invalid value 'jit', expected one of [dynamo, legacy]"),
    (["ckpt=x", "format=torchscript", "opset=17"], "opset= applies only to format=onnx"),
    (["ckpt=x", "format=torchscript", "exporter=legacy", "opset=17"], "opset= and exporter= apply only to format=onnx"),
    (["format=onnx"], "ckpt=<run dir or .pt> is required"),
    (["ckpt="], "ckpt=<run dir or .pt> is required"),
    (["ckpt"], "Error parsing override 'ckpt'"),
])
def test_bad_arguments_exit_2_with_one_line_and_leave_nothing(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # the one line, not the trace; set back afterwards
    with pytest.raises(SystemExit) as exit_info:
        ex.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("swin-export: error: ") and message in err and err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []


def test_arguments_have_the_old_defaults_and_the_help_names_every_key():
    int8_defaults = {"quantize": "none", "quantize_mode": "static", "calibration_images": 64, "check_images": 1000,
                     "weight_bits": None}
    assert composed_args("ckpt=run") == {"ckpt": "run", "format": "onnx", "out": None, "batch": 8, "opset": None,
                                         "exporter": "dynamo", **int8_defaults}
    assert composed_args("ckpt=run/best.pt", "out=model.onnx", "batch=32", "opset=18", "exporter=legacy") == \
        {"ckpt": "run/best.pt", "format": "onnx", "out": "model.onnx", "batch": 32, "opset": 18, "exporter": "legacy",
         **int8_defaults}
    assert composed_args("ckpt=run", "format=torchscript")["format"] == "torchscript"
    for key in KEYS:
        assert f"\n  {key} " in ex.USAGE


def test_help_and_missing_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    ex.main(["--help"])
    assert "usage: swin-export ckpt=" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        ex.main([f"ckpt={tmp_path / 'none.pt'}", "format=torchscript"])
    assert exit_info.value.code == 1 and "checkpoint not found" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("probe", [
    "import io, contextlib\nfrom swin_cli import export\nwith contextlib.redirect_stdout(io.StringIO()) as out:\n"
    "    export.main(['--help'])\nassert 'usage: swin-export' in out.getvalue()",
    # What predict_backend=onnx runs an export with.
    "from swin_cli.onnx_runtime import OnnxClassifier",
], ids=["help", "onnx_runtime"])
def test_help_and_the_onnx_runner_import_neither_torch_nor_the_exporter(probe):
    check = "\nimport sys\nassert not {'torch', 'swin_cli.export'} & set(sys.modules), 'imported'"
    if "onnx_runtime" not in probe:
        check = "\nimport sys\nassert 'torch' not in sys.modules, 'imported torch'"
    proc = subprocess.run([sys.executable, "-c", probe + check], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_unloadable_data_falls_back_to_random_inputs_and_says_so(tmp_path):
    state = {"signature": {"data.image_size": 8, "in_chans": 3}, "mean": [0.5] * 3, "std": [0.25] * 3,
             "config": {"data": {"name": "imagefolder", "root": str(tmp_path / "gone")}}}
    inputs, where = ex.check_inputs(state, 4)
    assert inputs.shape == (4, 3, 8, 8) and where.startswith("random inputs (data=imagefolder could not be loaded")


def test_predict_with_the_onnx_backend_gives_the_torch_backends_answers(trained_run, tmp_path):
    if not (trained_run / "best.onnx").is_file():
        assert _swin_export(f"ckpt={trained_run}", cwd=trained_run.parent).returncode == 0
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), "L").save(images / f"{i}.png")
    tables = {}
    for backend in ("torch", "onnx"):
        proc = run_cli("mode=predict", f"ckpt={trained_run}", f"predict_dir={images}", f"predict_backend={backend}",
                       f"hydra.run.dir={tmp_path / backend}", cwd=tmp_path, timeout=120)
        assert proc.returncode == 0, proc.stderr
        tables[backend] = list(csv.reader((tmp_path / backend / "predictions.csv").open()))
    assert len(tables["torch"]) == 7
    for row_torch, row_onnx in zip(tables["torch"], tables["onnx"]):
        assert row_torch[:2] == row_onnx[:2] and row_torch[3:] == row_onnx[3:]
        if row_torch[2] != "confidence":
            assert abs(float(row_torch[2]) - float(row_onnx[2])) <= 1e-3
    proc = run_cli("mode=predict", f"ckpt={trained_run / 'last.pt'}", f"predict_dir={images}", "predict_backend=onnx",
                   f"hydra.run.dir={tmp_path / 'none'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 1 and "predict_backend=onnx needs" in proc.stderr and "swin-export ckpt=" in proc.stderr
