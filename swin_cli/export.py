"""`swin-export`: a trained checkpoint to ONNX (or TorchScript), checked against the original.

    swin-export ckpt=outputs/DATE/TIME                 # -> outputs/DATE/TIME/best.onnx (+ .json)
    swin-export ckpt=run/best.pt format=torchscript    # -> run/best.torchscript.pt (+ .json)

The ONNX file takes `images`, float32 (N, C, H, W) already normalised with the checkpoint's
mean/std, N free (a dynamic axis), and returns `logits` (N, classes). H and W are fixed at the
trained image size: the shifted-window masks and paddings are computed for that size when the
model is built and go into the graph as constants. A JSON sidecar next to it (`<file>.json`)
holds what a user of the file needs besides the graph: class names, mean, std, size, channels.

Every export checks itself before it is kept: ONNX Runtime (or the reloaded TorchScript module)
must give torch's logits within 1e-4 on real images of the checkpoint's own data (random inputs
when that data cannot be loaded, said so), at two batch sizes to exercise the dynamic axis.

quantize=int8 writes, beside the fp32 file, an int8 one quantised by ONNX Runtime
(swin_cli/quantize.py; static by default, calibrated on the checkpoint's training images) and
compares the two on up to check_images of the checkpoint's labelled test images: top-1 of each,
agreement of their top classes, max abs diff of the logits. Its sidecar says "precision": "int8".

The arguments are Hydra overrides of conf/export.yaml (schema: swin_cli/export_config.py), as
swin-train's are, with the same one-line errors. swin_cli/onnx_runtime.py runs an exported file
(OnnxClassifier, the sidecar) without this module or the training stack.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from swin_cli.errors import SwinCliError
from swin_cli.export_config import KEYS
from swin_cli.onnx_runtime import (
    INPUT_NAME,
    INSTALL_HINT,
    OUTPUT_NAME,
    OnnxClassifier,
    default_output,
    require_onnx,
    resolve_checkpoint,
    sidecar_path,
)
from swin_cli.quantize import require_quantization
from swin_cli.sizes import hw

PROGRAM = "swin-export"
TOLERANCE = 1e-4
# The exporter traces with this many images; dynamo treats 0 and 1 as special sizes, so not those.
EXAMPLE_BATCH = 2
# Above this many bytes of weights one ONNX protobuf cannot hold them (its limit is 2 GiB); the
# largest Swin (Swin-L, 197M parameters) takes 0.8 GiB.
INLINE_LIMIT = 2**31 - 2**27

USAGE = f"""\
usage: {PROGRAM} ckpt=<run dir or .pt> [format=onnx|torchscript] [out=<path>] [batch=<n>]
                   [opset=<n>] [exporter=dynamo|legacy] [quantize=none|int8]
                   [quantize_mode=static|dynamic] [calibration_images=<n>] [check_images=<n>]
                   [weight_bits=7|8]

Export a trained swin-cli checkpoint for inference outside swin-cli, and check the result
against torch on the checkpoint's own test images (max abs diff of the logits <= {TOLERANCE:g}).

  ckpt      a checkpoint .pt, or a run dir (its best.pt)
  format    onnx (default): <ckpt>.onnx, input '{INPUT_NAME}' float32 N x C x H x W normalised with the
            checkpoint's mean/std, N dynamic; output '{OUTPUT_NAME}'.
            torchscript: <ckpt>.torchscript.pt (torch.jit.load; torch itself calls TorchScript deprecated)
  out       where to write the file (default: next to the checkpoint); a sidecar <out>.json
            holds the class names, mean, std, image size and channels
  batch     images in the check (default 8); it runs again with another batch size
  opset     ONNX opset (default: the exporter's own)
  exporter  dynamo (default): torch.export-based torch.onnx.export;
            legacy: the TorchScript-based one (faster to export, deprecated by torch)
  quantize  none (default) or int8: also write <ckpt>.int8.onnx (+ .json), quantised by ONNX
            Runtime, and report its top-1 against the fp32 file's on the checkpoint's test images
  quantize_mode  static (default): activation ranges calibrated on training images;
            dynamic: measured on each input as it runs (slower on Swin, no calibration)
  calibration_images  static: training images to calibrate on (default 64)
  check_images  quantize=int8: at most this many test images in the accuracy check (default 1000)
  weight_bits  quantize=int8: 8, or 7 (default on an x86 CPU without VNNI, whose int8 kernels
            saturate on 8-bit weights; else 8)

The keys ({', '.join(KEYS)}) are Hydra overrides of conf/export.yaml:
{PROGRAM} --cfg job [key=value ...] prints the config they make.
ONNX needs the export extra: {INSTALL_HINT}

examples:
  {PROGRAM} ckpt=outputs/2025-01-01/12-00-00
  {PROGRAM} ckpt=run/best.pt out=model.onnx batch=32
  {PROGRAM} ckpt=run format=torchscript
  {PROGRAM} ckpt=run quantize=int8                   # also run/best.int8.onnx"""


# ----------------------------------------------------------------------------- checkpoint and data


def sample_images(state: dict[str, Any], count: int):
    """(uint8 (count, C, H, W) images, where they came from) from the checkpoint's test data, or
    (None, why not) when that data cannot be loaded here."""
    import torch

    from swin_cli.data import first_test_images

    signature = state["signature"]
    size, channels = signature["data.image_size"], signature["in_chans"]
    data_cfg = dict(state["config"].get("data", {}))
    name = data_cfg.get("name")
    try:
        images, where = first_test_images(data_cfg, size, channels, count, state["mean"], state["std"])
    except Exception as exc:  # whatever stops the data loading, the check goes on with random inputs
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"data={name} could not be loaded ({reason})"
    if len(images) == 0:
        return None, f"data={name} has no test images"
    if images.shape[1:] != (channels, size, size):
        return None, f"data={name} gave images of shape {tuple(images.shape[1:])}, not {(channels, size, size)}"
    return images[torch.arange(count) % len(images)], where


def check_inputs(state: dict[str, Any], batch: int):
    """Normalised float inputs for the check and a description of them."""
    import torch

    from swin_cli.augment import Normalize

    images, where = sample_images(state, batch)
    if images is not None:
        return Normalize(state["mean"], state["std"], torch.device("cpu"))(images), where
    signature = state["signature"]
    shape = (batch, signature["in_chans"], *hw(signature["data.image_size"]))
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)), f"random inputs ({where})"


def check_batch_sizes(batch: int) -> list[int]:
    """The batch sizes the check runs: `batch`, and a second one (1 unless that is `batch`)."""
    return [batch, 1 if batch != 1 else 3]


# ----------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet():
    """The exporters' progress lines and tracer warnings are noise for a user: keep them out."""
    captured = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        warnings.simplefilter("ignore")
        yield captured


def export_onnx(model, example, path: Path, exporter: str = "dynamo", opset: Optional[int] = None) -> None:
    """Write `model` to `path` as ONNX: input 'images' with a dynamic batch axis, output 'logits'."""
    import torch

    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if nbytes > INLINE_LIMIT:  # a single-file model: nothing else to keep next to it
        raise SwinCliError(f"the model's {nbytes / 2**30:.1f} GiB of weights exceed what one ONNX file holds (2 GiB)")
    kwargs: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    with _quiet():
        try:
            if exporter == "dynamo":
                program = torch.onnx.export(model, (example,), None, dynamo=True,
                                            dynamic_shapes=({0: torch.export.Dim("batch")},), **kwargs)
                program.save(str(path), external_data=False)
            else:
                torch.onnx.export(model, (example,), str(path), dynamo=False,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **kwargs)
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            other = "legacy" if exporter == "dynamo" else "dynamo"
            raise SwinCliError(f"torch.onnx.export (exporter={exporter}) failed: {type(exc).__name__}: {detail} "
                               f"(try exporter={other})") from exc


def export_torchscript(model, example, path: Path) -> None:
    import torch

    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


def max_differences(model, runner, inputs, batch_sizes: list[int]) -> list[float]:
    """Max |runner(x) - model(x)| over the logits of the first n inputs, for each n."""
    import torch

    diffs = []
    with torch.no_grad():
        for n in batch_sizes:
            x = inputs[:n]
            expected = model(x)
            got = runner(x)
            if tuple(got.shape) != tuple(expected.shape):
                raise SwinCliError(f"the exported model returned logits of shape {tuple(got.shape)} for a batch "
                                   f"of {n}, torch {tuple(expected.shape)}")
            diffs.append(float((got.float() - expected.float()).abs().max()))
    return diffs


def _torchscript_runner(path: Path):
    import torch

    with _quiet():
        module = torch.jit.load(str(path), map_location="cpu")
    return lambda x: module(x)


def write_checked(model, inputs, out: Path, args: dict[str, Any], batch_sizes: list[int],
                  where: str) -> tuple[Optional[int], float, dict[str, Any]]:
    """Export `model` to `out` and compare the file's logits with torch's on `inputs`; the file is
    moved into place only once it has passed, so a failed check leaves nothing behind. Returns
    the ONNX opset (None for TorchScript), the seconds the export took, and the check's numbers."""
    from swin_cli.atomic_io import atomic_path

    fmt = args["format"]
    start = time.perf_counter()
    with atomic_path(out) as tmp:
        if fmt == "onnx":
            export_onnx(model, inputs[:EXAMPLE_BATCH].clone(), tmp, args["exporter"], args["opset"])
            runner = OnnxClassifier(tmp, sidecar=False)
            opset = runner.opset
        else:
            export_torchscript(model, inputs[:EXAMPLE_BATCH].clone(), tmp)
            runner, opset = _torchscript_runner(tmp), None
        seconds = time.perf_counter() - start
        diffs = max_differences(model, runner, inputs, batch_sizes)
        del runner
        worst = max(diffs)
        engine = "ONNX Runtime (CPU)" if fmt == "onnx" else "the reloaded TorchScript module"
        per_batch = ", ".join(f"{d:.3g} at batch {n}" for n, d in zip(batch_sizes, diffs))
        print(f"{PROGRAM}: {engine} vs torch on {where}: max abs diff {worst:.3g} ({per_batch}; "
              f"tolerance {TOLERANCE:.0e})", flush=True)
        if not worst <= TOLERANCE:  # also catches NaN
            raise SwinCliError(f"{engine} differs from torch by {worst:.3g} > {TOLERANCE:.0e} on {where}; "
                               f"nothing written" + (" (try the other exporter=)" if fmt == "onnx" else ""))
    check = {"inputs": where, "batch_sizes": batch_sizes, "max_abs_diff": worst, "max_abs_diff_per_batch": diffs,
             "tolerance": TOLERANCE, "runtime": engine}
    return opset, seconds, check


def sidecar_meta(state: dict[str, Any], ckpt_path: Path, out: Path, args: dict[str, Any], opset: Optional[int],
                 check: dict[str, Any], seconds: float) -> dict[str, Any]:
    """What a user of the exported file needs besides the graph, and where it came from."""
    import torch

    from swin_cli import __version__, thresholds
    from swin_cli.data import crop_pct

    fmt = args["format"]
    signature = state["signature"]
    data_cfg = state["config"].get("data", {})
    task = data_cfg.get("task") or "single"
    return {
        "format": fmt,
        "file": out.name,
        "precision": "fp32",
        "input": {"name": INPUT_NAME, "dtype": "float32",
                  "shape": ["batch", signature["in_chans"], *hw(signature["data.image_size"])],
                  "normalised": "(pixel / 255 - mean) / std per channel"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(state["classes"])]},
        "classes": list(state["classes"]),
        "mean": list(state["mean"]),
        "std": list(state["std"]),
        "image_size": signature["data.image_size"],
        "channels": signature["in_chans"],
        # The eval view predict applies before the model: shorter side to image_size / crop_pct, centre crop.
        "crop_pct": crop_pct({**data_cfg, "image_size": signature["data.image_size"]}),
        "interpolation": data_cfg.get("interpolation", "bilinear"),
        "num_classes": signature["num_classes"],
        "model": {k: v for k, v in state["config"]["model"].items() if k != "pretrained"},
        "checkpoint": str(ckpt_path.resolve()),
        "weights": state.get("best_source") or "model",
        "epoch": state.get("epoch"),
        "best_val_acc": state.get("best_val_acc"),
        # (logits - offset) / temperature before the softmax, as the run's final test scored
        # (calibration.py); predict applies it with either backend. Absent: raw logits.
        "calibration": state.get("calibration"),
        # data.task=multilabel: a sigmoid per class, and the class is in the image's label set
        # when its probability is at least its threshold (swin_cli/thresholds.py); predict joins
        # a set's classes with label_separator. single: a softmax over the classes, no thresholds.
        "task": task,
        "thresholds": thresholds.checked(state.get("thresholds"), len(state["classes"]), str(ckpt_path))
        if task == "multilabel" else None,
        "label_separator": data_cfg.get("label_separator") if task == "multilabel" else None,
        "swin_cli_version": __version__,
        "torch_version": torch.__version__,
        "exporter": args["exporter"] if fmt == "onnx" else "torch.jit.trace",
        "opset": opset,
        "check": check,
        "export_seconds": round(seconds, 2),
    }


def export(args: dict[str, Any]) -> dict[str, Any]:
    """Run one export (args: export_config.export_args's); returns the sidecar's contents (of
    the fp32 file; with quantize=int8 under "int8", the int8 file's)."""
    fmt = args["format"]
    if fmt == "onnx":
        require_onnx()
    if args.get("quantize") == "int8":
        require_quantization()
    from swin_cli import checkpoint
    from swin_cli.atomic_io import write_text_atomic
    from swin_cli.build import model_from_checkpoint

    ckpt_path = resolve_checkpoint(args["ckpt"])
    state = checkpoint.load(ckpt_path)
    model = model_from_checkpoint(state)
    out = default_output(ckpt_path, fmt, args["out"])
    out.parent.mkdir(parents=True, exist_ok=True)

    batch_sizes = check_batch_sizes(args["batch"])
    inputs, where = check_inputs(state, max(batch_sizes))
    print(f"{PROGRAM}: {ckpt_path} -> {out} ({fmt}"
          f"{', exporter=' + args['exporter'] if fmt == 'onnx' else ''})", flush=True)
    opset, seconds, check = write_checked(model, inputs, out, args, batch_sizes, where)
    meta = sidecar_meta(state, ckpt_path, out, args, opset, check, seconds)
    sidecar = sidecar_path(out)
    write_text_atomic(sidecar, json.dumps(meta, indent=2) + "\n")
    size_mb = out.stat().st_size / 2**20
    print(f"{PROGRAM}: wrote {out} ({size_mb:.1f} MB, exported in {seconds:.1f} s) and {sidecar.name}", flush=True)
    if args.get("quantize") == "int8":
        meta = {**meta, "int8": export_int8(state, out, meta, args, inputs, where)}
    return meta


# ----------------------------------------------------------------------------- int8


def checkpoint_data(state: dict[str, Any]):
    """(the checkpoint's data, loaded as it was trained, at its image size and normalisation,
    "data=<name>"), or (None, why it cannot be loaded here)."""
    from omegaconf import OmegaConf

    from swin_cli.data import load_data

    signature = state["signature"]
    data_cfg = dict(state["config"].get("data", {}))
    name = data_cfg.get("name")
    cfg = OmegaConf.create({**data_cfg, "image_size": signature["data.image_size"],
                            "channels": signature["in_chans"], "download": False,
                            "mean": list(state["mean"]), "std": list(state["std"])})
    try:
        with _quiet():
            return load_data(cfg, statistics=False), f"data={name}"
    except Exception as exc:  # whatever stops the loading, quantisation goes on with the check's inputs
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"data={name} could not be loaded ({reason})"


def _random_images(split, count: int, shape: tuple, seed: int = 0):
    """Up to `count` images of `split` (uint8, through the eval view) and their labels, a random
    choice when the split allows one (an image folder lists its classes in order), else its first."""
    import torch

    if split.random_access and len(split) > count:
        index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count]
        split = split.subset(index.sort().values)
    images, labels, held = [], [], 0
    for x, y in split.eval_batches(64):
        images.append(x.cpu())
        labels.append(y.cpu())
        held += len(x)
        if held >= count:
            break
    if not images:
        return None, None
    images, labels = torch.cat(images)[:count], torch.cat(labels)[:count]
    if tuple(images.shape[1:]) != shape:
        return None, None
    return images, (labels if labels.dim() == 1 else None)  # multi-hot labels have no top-1


def int8_inputs(state: dict[str, Any], args: dict[str, Any], inputs, where: str):
    """(calibration images, what they are, check images, their labels or None, what they are):
    normalised float images of the checkpoint's own data, its training split to calibrate on
    and its test split to compare on; the fp32 check's inputs where the data cannot be loaded."""
    import torch

    from swin_cli.augment import Normalize

    signature = state["signature"]
    shape = (signature["in_chans"], *hw(signature["data.image_size"]))
    normalize = Normalize(state["mean"], state["std"], torch.device("cpu"))
    data, name = checkpoint_data(state)
    calibration = test = labels = None
    if data is not None:
        calibration, _ = _random_images(data.train, args["calibration_images"], shape)
        test, labels = _random_images(data.test, args["check_images"], shape)
    calibration_where = f"training images of {name}" if calibration is not None else f"the check's {where}"
    test_where = f"test images of {name}" if test is not None else where + " (unlabelled)"
    calibration = normalize(calibration) if calibration is not None else inputs[:args["calibration_images"]]
    test = normalize(test) if test is not None else inputs[:args["check_images"]]
    return calibration, calibration_where, test, labels, test_where


def export_int8(state: dict[str, Any], fp32: Path, fp32_meta: dict[str, Any], args: dict[str, Any], inputs,
                where: str) -> dict[str, Any]:
    """Quantise the fp32 file to int8 beside it, compare the two, and write the int8 file and its
    sidecar once the comparison finds nothing broken; returns that sidecar's contents."""
    from swin_cli import quantize
    from swin_cli.atomic_io import atomic_path, write_text_atomic

    mode = args["quantize_mode"]
    out = quantize.int8_path(fp32)
    calibration, calibration_where, test, labels, test_where = int8_inputs(state, args, inputs, where)
    static = mode == "static"
    bits, why_bits = ((args["weight_bits"], "weight_bits given") if args["weight_bits"] is not None
                      else quantize.default_weight_bits())
    print(f"{PROGRAM}: {fp32.name} -> {out.name} (int8, quantize_mode={mode}"
          + (f", calibrated on {len(calibration)} {calibration_where}" if static else "")
          + f"; {bits}-bit weights: {why_bits})", flush=True)
    start = time.perf_counter()
    with atomic_path(out) as tmp:
        quantize.quantize_onnx(fp32, tmp, mode, calibration.numpy() if static else None, bits)
        seconds = time.perf_counter() - start
        result = quantize.compare(OnnxClassifier(fp32, sidecar=False), OnnxClassifier(tmp, sidecar=False),
                                  test, labels)
        print(f"{PROGRAM}: {quantize.describe(result, test_where)}", flush=True)
        why = quantize.problem(result)
        if why is not None:
            # Only where saturation can be the cause: 8-bit weights on x86 without (or unknown) VNNI.
            saturating = bits == 8 and quantize.saturates_8bit_weights() is not False
            hint = "; weight_bits=7 avoids an x86 CPU's int8 saturation" if saturating else ""
            raise SwinCliError(f"the int8 model looks broken: {why}; {out.name} not written ({fp32.name} is kept)"
                               + hint)
    meta = {**fp32_meta, "file": out.name, "precision": "int8",
            "quantization": {"tool": "onnxruntime.quantization", "mode": mode, "weights": "int8 per channel",
                             "weight_bits": bits, "weight_bits_why": why_bits,
                             "activations": "uint8, calibrated (QDQ)" if static else "uint8, per input",
                             "ops": "all ORT quantises (QDQ)" if static else list(quantize.DYNAMIC_OPS),
                             "from": fp32.name,
                             "calibration": f"{len(calibration)} {calibration_where}" if static else None},
            "check": {**result, "inputs": test_where, "max_accuracy_drop": quantize.MAX_ACCURACY_DROP,
                      "runtime": "ONNX Runtime (CPU)"},
            "export_seconds": round(seconds, 2)}
    sidecar = sidecar_path(out)
    write_text_atomic(sidecar, json.dumps(meta, indent=2) + "\n")
    size_mb = out.stat().st_size / 2**20
    print(f"{PROGRAM}: wrote {out} ({size_mb:.1f} MB, quantised in {seconds:.1f} s) and {sidecar.name}", flush=True)
    return meta


# ----------------------------------------------------------------------------- command line


def _run(cfg: Any) -> None:
    """The Hydra task: check the composed arguments, export; a user's error is one line."""
    from swin_cli.export_config import ArgumentError, export_args

    try:
        export(export_args(cfg))
    except SwinCliError as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2 if isinstance(exc, ArgumentError) else 1)


def _hydra_app():
    """swin-export's @hydra.main function, made on call: --help needs neither Hydra's runner nor
    the schema in its ConfigStore."""
    import hydra

    from swin_cli import export_config

    export_config.register()
    return hydra.main(version_base="1.3", config_path="pkg://swin_cli.conf", config_name="export")(_run)


def main(argv: Optional[list[str]] = None) -> None:
    """`swin-export key=value ...` (argv: the arguments, sys.argv's by default)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if "--help" in args or "-h" in args:
        print(USAGE)
        return
    from swin_cli.export_config import explain
    from swin_cli.main import run_hydra_app

    saved, sys.argv = sys.argv, [PROGRAM, *args]  # Hydra reads its overrides from sys.argv
    try:
        run_hydra_app(_hydra_app(), PROGRAM, explain=explain)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
