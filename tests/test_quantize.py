"""swin-export quantize=int8: an int8 ONNX file beside the fp32 one, checked against it, that
mode=predict can run; and benchmarks/inference.py's smoke run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_MODEL, run_cli
from PIL import Image
from test_export import _swin_export, composed_args

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")
pytest.importorskip("onnxscript")

from swin_cli import quantize  # noqa: E402
from swin_cli.errors import SwinCliError  # noqa: E402
from swin_cli.onnx_runtime import OnnxClassifier  # noqa: E402

# Runs swin-train and swin-export in subprocesses: the end-to-end tier, as tests/test_export.py.
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny digits run that shifts and pads its windows, trained long enough to beat chance."""
    tmp = tmp_path_factory.mktemp("quantize")
    overrides = [a for a in TINY_MODEL if not a.startswith(("model.depths=", "data.image_size="))]
    overrides += ["model.depths=[2,1]", "data.image_size=20"]
    proc = run_cli("data=digits", "epochs=3", "data.batch_size=32", "optimizer.lr=5e-3", "threads=1", *overrides,
                   f"hydra.run.dir={tmp / 'run'}", cwd=tmp, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return tmp / "run"


def test_swin_export_quantize_int8_writes_a_checked_int8_file(trained_run):
    proc = _swin_export(f"ckpt={trained_run}", "quantize=int8", cwd=trained_run.parent)
    assert proc.returncode == 0, proc.stderr
    line = re.search(r"int8 vs fp32 on (\d+) test images of data=digits: top-1 (\S+)% int8 vs (\S+)% fp32, "
                     r"top class agrees on (\S+)%, max abs diff of the logits (\S+)", proc.stdout)
    assert line, proc.stdout
    images, acc8, acc32, agree = int(line.group(1)), float(line.group(2)), float(line.group(3)), float(line.group(4))
    assert images > 100 and acc32 > 15  # the fixture's model beats chance (10%), so the comparison means something
    # A barely trained model: many near-ties between its top classes, so some flip.
    assert abs(acc8 - acc32) <= 2 and agree >= 90
    fp32_meta = json.loads((trained_run / "best.onnx.json").read_text())
    meta = json.loads((trained_run / "best.int8.onnx.json").read_text())
    assert fp32_meta["precision"] == "fp32" and meta["precision"] == "int8" and meta["file"] == "best.int8.onnx"
    assert meta["quantization"]["mode"] == quantize.DEFAULT_MODE == "static"
    assert meta["quantization"]["calibration"] == "64 training images of data=digits"
    # 7 bits where this CPU would saturate 8-bit weights (the check above failed on such a CPU
    # before: 66.9% agreement).
    bits, why = quantize.default_weight_bits()
    assert meta["quantization"]["weight_bits"] == bits and meta["quantization"]["weight_bits_why"] == why
    assert f"; {bits}-bit weights: {why})" in proc.stdout
    assert meta["check"]["images"] == images and meta["classes"] == fp32_meta["classes"]
    assert not list(trained_run.glob(".*.tmp"))
    clf = OnnxClassifier(trained_run / "best.int8.onnx")
    assert clf.precision == "int8" and OnnxClassifier(trained_run / "best.onnx").precision == "fp32"
    ops = {node.op_type for node in __import__("onnx").load(str(trained_run / "best.int8.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_dynamic_mode_agrees_with_fp32_too(trained_run, tmp_path):
    """The other mode, on the fixture's fp32 file and the images swin-export's check uses."""
    from swin_cli import checkpoint
    from swin_cli import export as ex

    if not (trained_run / "best.onnx").is_file():
        assert _swin_export(f"ckpt={trained_run}", cwd=trained_run.parent).returncode == 0
    state = checkpoint.load(trained_run / "best.pt")
    args = composed_args(f"ckpt={trained_run}", "quantize=int8", "quantize_mode=dynamic", "check_images=200")
    inputs, where = ex.check_inputs(state, 8)
    _, _, test, labels, test_where = ex.int8_inputs(state, args, inputs, where)
    assert test_where == "test images of data=digits" and len(test) == len(labels) == 200
    out = tmp_path / "dynamic.onnx"
    quantize.quantize_onnx(trained_run / "best.onnx", out, "dynamic")
    result = quantize.compare(OnnxClassifier(trained_run / "best.onnx", sidecar=False),
                              OnnxClassifier(out, sidecar=False), test, labels)
    assert result["agreement"] >= 90 and abs(result["acc_int8"] - result["acc_fp32"]) <= 3, result
    assert quantize.problem(result) is None
    ops = {node.op_type for node in __import__("onnx").load(str(out)).graph.node}
    assert "DynamicQuantizeLinear" in ops


@pytest.mark.parametrize("bits", [7, 8])
def test_weight_bits_sets_the_range_of_the_int8_weights(trained_run, tmp_path, bits):
    import onnx
    from onnx import numpy_helper

    if not (trained_run / "best.onnx").is_file():
        assert _swin_export(f"ckpt={trained_run}", cwd=trained_run.parent).returncode == 0
    out = tmp_path / "int8.onnx"
    quantize.quantize_onnx(trained_run / "best.onnx", out, "dynamic", weight_bits=bits)
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and t.dims and np.prod(t.dims) > 64]
    assert weights
    # reduce_range maps each channel's largest weight to +-64 (7 bits), the full range to +-127.
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == (64 if bits == 7 else 127)


@pytest.mark.parametrize("machine,flags,bits", [
    ("x86_64", {"avx", "avx2"}, 7),                  # AVX2 without VNNI: VPMADDUBSW saturates in int16
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, 8),
    ("x86_64", {"avx2", "avx_vnni"}, 8),
    ("AMD64", None, 7),                              # flags unknown (not Linux): 7 is safe everywhere
    ("aarch64", None, 8),
    ("arm64", set(), 8),
])
def test_default_weight_bits_follow_the_cpu(machine, flags, bits, monkeypatch):
    monkeypatch.setattr(quantize, "cpu_flags", lambda: None)
    chosen, why = quantize.default_weight_bits(machine, flags)
    assert chosen == bits and why


def test_predict_warns_before_running_8_bit_weights_on_a_cpu_that_saturates_them(monkeypatch):
    meta8 = {"precision": "int8", "quantization": {"weight_bits": 8}}
    monkeypatch.setattr(quantize, "saturates_8bit_weights", lambda: True)
    assert "without VNNI saturates" in quantize.saturation_warning(meta8, "best.int8.onnx")
    assert quantize.saturation_warning({"precision": "int8", "quantization": {}}, "x") is not None  # older files
    assert quantize.saturation_warning({"precision": "int8", "quantization": {"weight_bits": 7}}, "x") is None
    assert quantize.saturation_warning({"precision": "fp32"}, "x") is None
    monkeypatch.setattr(quantize, "saturates_8bit_weights", lambda: False)
    assert quantize.saturation_warning(meta8, "x") is None


def test_compare_and_the_broken_model_check():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 1])
    same = quantize.compare(lambda x: logits[x], lambda x: logits[x] + 0.1, torch.arange(4), labels, batch=3)
    assert same["acc_fp32"] == same["acc_int8"] == 75.0 and same["agreement"] == 100.0
    assert abs(same["max_abs_diff"] - 0.1) < 1e-6 and quantize.problem(same) is None
    flipped = quantize.compare(lambda x: logits[x], lambda x: -logits[x], torch.arange(4), labels)
    assert "points below fp32's" in quantize.problem(flipped)
    # Saturated kernels: half the answers flip, top-1 unchanged; only the agreement tells.
    swapped = torch.tensor([[2.0, 1.0], [0.0, 3.0], [0.0, 1.0], [1.0, 0.0]])
    half = quantize.compare(lambda x: logits[x], lambda x: swapped[x], torch.arange(4), labels)
    assert half["acc_fp32"] == half["acc_int8"] and half["agreement"] == 50.0
    assert "agrees with fp32's on only 50.0%" in quantize.problem(half)
    nan = quantize.compare(lambda x: logits[x], lambda x: logits[x] * float("nan"), torch.arange(4), None)
    assert nan["acc_fp32"] is None and "NaN" in quantize.problem(nan)
    assert quantize.int8_path(Path("run/best.onnx")) == Path("run/best.int8.onnx")


def test_a_model_the_quantiser_cannot_take_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(SwinCliError) as info:
        quantize.quantize_onnx(bad, tmp_path / "out.onnx", "dynamic")
    message = str(info.value)
    assert message.startswith("ONNX Runtime could not quantise bad.onnx to int8 (quantize_mode=dynamic): ")
    assert "\n" not in message
    with pytest.raises(SwinCliError, match="needs calibration images"):
        quantize.quantize_onnx(bad, tmp_path / "out.onnx", "static")


@pytest.mark.parametrize("argv,message", [
    (["ckpt=x", "quantize=fp16"], "quantize=fp16; Invalid value 'fp16', expected one of [none, int8]"),
    (["ckpt=x", "quantize=int8", "format=torchscript"], "quantize=int8 applies only to format=onnx"),
    (["ckpt=x", "quantize=int8", "quantize_mode=fast"],
     "quantize_mode=fast; Invalid value 'fast', expected one of [dynamic, static]"),
    (["ckpt=x", "quantize_mode=static"], "quantize_mode= applies only to quantize=int8 (got quantize=none)"),
    (["ckpt=x", "quantize=int8", "quantize_mode=dynamic", "calibration_images=8"],
     "calibration_images= applies only to quantize_mode=static"),
    (["ckpt=x", "quantize=int8", "calibration_images=0"], "calibration_images must be a positive integer (got 0)"),
    (["ckpt=x", "quantize=int8", "check_images=0"], "check_images must be a positive integer (got 0)"),
    (["ckpt=x", "quantize=int8", "weight_bits=6"], "weight_bits must be 7 or 8 (got 6)"),
    (["ckpt=x", "weight_bits=7"], "weight_bits= applies only to quantize=int8 (got quantize=none)"),
])
def test_bad_quantize_arguments_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    from swin_cli import export as ex

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    with pytest.raises(SystemExit) as exit_info:
        ex.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("swin-export: error: ") and message in err and err.count("\n") == 1, err


def test_cli_errors_torchscript_and_missing_quantization_tools(trained_run, tmp_path):
    proc = _swin_export(f"ckpt={trained_run}", "quantize=int8", "format=torchscript", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("swin-export: error: quantize=int8 applies only to format=onnx "
                                   "(got format=torchscript; quantize: none, int8)")
    # onnxruntime itself imports; its quantization package does not (a finder that refuses it,
    # installed at start-up through sitecustomize).
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text(
        "import sys\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'onnxruntime.quantization':\n"
        "            raise ImportError('simulated')\n"
        "sys.meta_path.insert(0, Refuse())\n")
    proc = _swin_export(f"ckpt={trained_run}", "quantize=int8", cwd=tmp_path, env={"PYTHONPATH": str(fake)})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == ('swin-export: error: quantize=int8 needs onnxruntime.quantization, which '
                                   'cannot be imported (simulated): pip install -e ".[export]"')
    assert os.listdir(tmp_path) == ["fake"]


def test_predict_with_the_int8_file_names_runtime_and_precision(trained_run, tmp_path):
    if not (trained_run / "best.int8.onnx").is_file():
        assert _swin_export(f"ckpt={trained_run}", "quantize=int8", cwd=trained_run.parent).returncode == 0
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), "L").save(images / f"{i}.png")
    proc = run_cli("mode=predict", f"ckpt={trained_run / 'best.int8.onnx'}", f"predict_dir={images}",
                   "predict_backend=onnx", f"hydra.run.dir={tmp_path / 'int8'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "predict: ONNX Runtime, int8 (best.int8.onnx)" in out, out
    assert len((tmp_path / "int8" / "predictions.csv").read_text().splitlines()) == 5

    from conftest import make_config

    from swin_cli.evaluate import _predictor

    cfg = make_config("mode=predict", f"ckpt={trained_run / 'best.int8.onnx'}", f"predict_dir={images}")
    with pytest.raises(SwinCliError, match="is an ONNX file: add predict_backend=onnx"):
        _predictor(cfg)


def test_predict_warns_of_8_bit_weights_and_says_how_to_make_a_missing_int8_file(trained_run, tmp_path, monkeypatch,
                                                                                 caplog):
    import shutil

    from conftest import make_config

    from swin_cli.evaluate import _predictor

    if not (trained_run / "best.int8.onnx").is_file():
        assert _swin_export(f"ckpt={trained_run}", "quantize=int8", cwd=trained_run.parent).returncode == 0
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(trained_run / "best.int8.onnx", copy)
    meta = json.loads((trained_run / "best.int8.onnx.json").read_text())
    meta["quantization"]["weight_bits"] = 8
    (copy / "best.int8.onnx.json").write_text(json.dumps(meta))
    monkeypatch.setattr(quantize, "saturates_8bit_weights", lambda: True)
    args = ("mode=predict", f"predict_dir={tmp_path}", "predict_backend=onnx")
    with caplog.at_level("WARNING", logger="swin_cli"):
        _predictor(make_config(*args, f"ckpt={copy / 'best.int8.onnx'}"))
    assert "best.int8.onnx has 8-bit int8 weights, which this x86 CPU without VNNI saturates" in caplog.text
    with pytest.raises(SwinCliError) as info:
        _predictor(make_config(*args, f"ckpt={tmp_path / 'other' / 'best.int8.onnx'}"))
    assert str(info.value).endswith(f"make it with: swin-export ckpt={tmp_path / 'other'} quantize=int8")


@pytest.mark.slow
def test_inference_benchmark_smoke_ends_with_the_ratio():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "inference.py"), "--smoke", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert re.match(r"^\d+\.\d\dx$", lines[-1]), proc.stdout
    assert "ORT int8 (static)" in proc.stdout and "torch eager fp32" in proc.stdout
