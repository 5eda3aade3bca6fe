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

`OnnxClassifier(path)` runs an exported file (for predictions without the training stack).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from swin_cli.errors import SwinCliError

PROGRAM = "swin-export"
TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "images", "logits"
INSTALL_HINT = 'pip install "swin-cli[export]"'
FORMATS = ("onnx", "torchscript")
EXPORTERS = ("dynamo", "legacy")
KEYS = ("ckpt", "format", "out", "batch", "opset", "exporter")
# The exporter traces with this many images; dynamo treats 0 and 1 as special sizes, so not those.
EXAMPLE_BATCH = 2
# Above this many bytes of weights one ONNX protobuf cannot hold them (its limit is 2 GiB); the
# largest Swin (Swin-L, 197M parameters) takes 0.8 GiB.
INLINE_LIMIT = 2**31 - 2**27

USAGE = f"""\
usage: {PROGRAM} ckpt=<run dir or .pt> [format=onnx|torchscript] [out=<path>] [batch=<n>]
                   [opset=<n>] [exporter=dynamo|legacy]

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

ONNX needs the export extra: {INSTALL_HINT}

examples:
  {PROGRAM} ckpt=outputs/2025-01-01/12-00-00
  {PROGRAM} ckpt=run/best.pt out=model.onnx batch=32
  {PROGRAM} ckpt=run format=torchscript"""


class ArgumentError(SwinCliError):
    """A bad command line: exit code 2."""


class MissingExtraError(SwinCliError):
    pass


# ----------------------------------------------------------------------------- arguments


def parse_args(argv: list[str]) -> dict[str, Any]:
    """key=value arguments to a dict of typed values (defaults filled in)."""
    allowed = ", ".join(KEYS)
    args: dict[str, Any] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ArgumentError(f"expected key=value arguments, got {arg!r} (keys: {allowed}; see --help)")
        if key not in KEYS:
            raise ArgumentError(f"unknown key {key!r} (keys: {allowed})")
        if key in args:
            raise ArgumentError(f"{key}= is given twice")
        args[key] = value
    if not args.get("ckpt"):
        raise ArgumentError("ckpt=<run dir or .pt> is required (see --help)")
    given = set(args)
    fmt = args.setdefault("format", "onnx")
    if fmt not in FORMATS:
        raise ArgumentError(f"format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    exporter = args.setdefault("exporter", "dynamo")
    if exporter not in EXPORTERS:
        raise ArgumentError(f"exporter must be one of {', '.join(EXPORTERS)} (got {exporter!r})")
    args["batch"] = _positive_int("batch", args.get("batch", "8"))
    args["opset"] = _positive_int("opset", args["opset"]) if "opset" in args else None
    onnx_only = sorted(given & {"opset", "exporter"})
    if fmt != "onnx" and onnx_only:
        keys = " and ".join(f"{k}=" for k in onnx_only)
        raise ArgumentError(f"{keys} {'apply' if len(onnx_only) > 1 else 'applies'} only to format=onnx "
                            f"(got format={fmt})")
    args.setdefault("out", None)
    return args


def _positive_int(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ArgumentError(f"{key} must be a positive integer (got {value!r})")
    return number


# ----------------------------------------------------------------------------- optional packages


def require_onnx(*modules: str) -> None:
    """Import the export extra's packages, or fail with one line naming the extra."""
    import importlib

    missing = []
    for name in modules or ("onnx", "onnxruntime", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(missing_extra_message(missing))


def missing_extra_message(missing: list[str]) -> str:
    return f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} " \
           f"not installed: {INSTALL_HINT}"


# ----------------------------------------------------------------------------- checkpoint and data


def resolve_checkpoint(ckpt: str) -> Path:
    """A .pt, or a run dir meaning its best.pt (its last.pt when it has no best.pt)."""
    path = Path(os.path.expanduser(ckpt))
    if path.is_dir():
        best = path / "best.pt"
        path = best if best.is_file() or not (path / "last.pt").is_file() else path / "last.pt"
    return path


def default_output(ckpt_path: Path, fmt: str, out: Optional[str]) -> Path:
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    if out is None:
        return ckpt_path.with_name(ckpt_path.stem + suffix)
    path = Path(os.path.expanduser(out))
    return path / (ckpt_path.stem + suffix) if path.is_dir() else path


def sample_images(state: dict[str, Any], count: int):
    """(uint8 (count, C, H, W) images, where they came from) from the checkpoint's test data, or
    (None, why not) when that data cannot be loaded here."""
    import torch

    signature = state["signature"]
    size, channels = signature["data.image_size"], signature["in_chans"]
    data_cfg = dict(state["config"].get("data", {}))
    name = data_cfg.get("name")
    try:
        if name == "imagefolder":
            images, where = _imagefolder_sample(data_cfg, size, channels, count)
        else:
            from omegaconf import OmegaConf

            from swin_cli.data import load_data

            # Never download during an export; mean/std as trained (no statistics pass).
            cfg = OmegaConf.create({**data_cfg, "image_size": size, "channels": channels, "download": False,
                                    "mean": list(state["mean"]), "std": list(state["std"])})
            images, where = next(load_data(cfg).test.eval_batches(count))[0], f"test images of data={name}"
    except Exception as exc:  # whatever stops the data loading, the check goes on with random inputs
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"data={name} could not be loaded ({reason})"
    if len(images) == 0:
        return None, f"data={name} has no test images"
    if images.shape[1:] != (channels, size, size):
        return None, f"data={name} gave images of shape {tuple(images.shape[1:])}, not {(channels, size, size)}"
    return images[torch.arange(count) % len(images)], where


def _imagefolder_sample(data_cfg: dict[str, Any], size: int, channels: int, count: int):
    """The first images of an image folder's test/ (else val/, else train/) split, one class
    after another, decoded directly: no pass over the whole data set for a handful of images."""
    import torch

    import numpy as np

    from swin_cli.data import eval_transform, list_classes

    root = Path(os.path.expanduser(str(data_cfg.get("root") or "")))
    split = next((root / s for s in ("test", "val", "train") if (root / s).is_dir()), None)
    if split is None:
        raise FileNotFoundError(f"no test/, val/ or train/ folder under {root}")
    per_class = list(list_classes(split).values())
    view = eval_transform(data_cfg, size, channels)
    decoded: list[np.ndarray] = []
    for rank in range(max((len(files) for files in per_class), default=0)):
        for files in per_class:
            if rank < len(files) and len(decoded) < count:
                try:
                    decoded.append(view(str(files[rank])))
                except Exception:  # an unreadable file: the next one
                    pass
        if len(decoded) >= count:
            break
    if not decoded:
        return torch.empty(0, channels, size, size, dtype=torch.uint8), str(split)
    return torch.from_numpy(np.stack(decoded)), f"images of {split}"


def check_inputs(state: dict[str, Any], batch: int):
    """Normalised float inputs for the check and a description of them."""
    import torch

    from swin_cli.augment import Normalize

    images, where = sample_images(state, batch)
    if images is not None:
        return Normalize(state["mean"], state["std"], torch.device("cpu"))(images), where
    signature = state["signature"]
    shape = (batch, signature["in_chans"], signature["data.image_size"], signature["data.image_size"])
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


def export(args: dict[str, Any]) -> dict[str, Any]:
    """Run one export as parsed by parse_args; returns the sidecar's contents."""
    from swin_cli.data import crop_pct

    fmt = args["format"]
    if fmt == "onnx":
        require_onnx()
    import torch

    from swin_cli import __version__, checkpoint
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

    # Moved into place only once it has passed the check; a failed check leaves nothing behind.
    start = time.perf_counter()
    with checkpoint.atomic_path(out) as tmp:
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

    signature = state["signature"]
    meta = {
        "format": fmt,
        "file": out.name,
        "input": {"name": INPUT_NAME, "dtype": "float32",
                  "shape": ["batch", signature["in_chans"], signature["data.image_size"], signature["data.image_size"]],
                  "normalised": "(pixel / 255 - mean) / std per channel"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(state["classes"])]},
        "classes": list(state["classes"]),
        "mean": list(state["mean"]),
        "std": list(state["std"]),
        "image_size": signature["data.image_size"],
        "channels": signature["in_chans"],
        # The eval view predict applies before the model: shorter side to image_size / crop_pct, centre crop.
        "crop_pct": crop_pct({**state["config"].get("data", {}), "image_size": signature["data.image_size"]}),
        "interpolation": state["config"].get("data", {}).get("interpolation", "bilinear"),
        "num_classes": signature["num_classes"],
        "model": {k: v for k, v in state["config"]["model"].items() if k != "pretrained"},
        "checkpoint": str(ckpt_path.resolve()),
        "weights": state.get("best_source") or "model",
        "epoch": state.get("epoch"),
        "best_val_acc": state.get("best_val_acc"),
        "swin_cli_version": __version__,
        "torch_version": torch.__version__,
        "exporter": args["exporter"] if fmt == "onnx" else "torch.jit.trace",
        "opset": opset,
        "check": {"inputs": where, "batch_sizes": batch_sizes, "max_abs_diff": worst,
                  "max_abs_diff_per_batch": diffs, "tolerance": TOLERANCE, "runtime": engine},
        "export_seconds": round(seconds, 2),
    }
    sidecar = sidecar_path(out)
    checkpoint.write_text_atomic(sidecar, json.dumps(meta, indent=2) + "\n")
    size_mb = out.stat().st_size / 2**20
    print(f"{PROGRAM}: wrote {out} ({size_mb:.1f} MB, exported in {seconds:.1f} s) and {sidecar.name}", flush=True)
    return meta


# ----------------------------------------------------------------------------- running an export


def sidecar_path(model_path: str | Path) -> Path:
    path = Path(model_path)
    return path.with_name(path.name + ".json")


def read_sidecar(model_path: str | Path) -> dict[str, Any]:
    """The JSON swin-export wrote next to an exported model."""
    path = sidecar_path(model_path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SwinCliError(f"{path} not found: the class names and normalisation of {Path(model_path).name} "
                           f"live there (written by swin-export next to the model)") from None
    except (OSError, ValueError) as exc:
        raise SwinCliError(f"cannot read {path}: {exc}") from None


class OnnxClassifier:
    """An exported ONNX model (a .onnx, or a run dir meaning its best.onnx) under ONNX Runtime:
    `clf(images)` with normalised float images (N, C, H, W) returns torch float32 logits
    (N, classes) on the CPU.

    With its sidecar (the default): `classes`, `mean`, `std`, `image_size`, `channels` and
    `meta` (the whole JSON) come from it. `providers`: ONNX Runtime execution providers
    (default CPU only); `threads`: intra-op threads (default ONNX Runtime's own choice).
    """

    def __init__(self, path: str | Path, *, sidecar: bool = True, providers: Optional[list[str]] = None,
                 threads: Optional[int] = None):
        require_onnx("onnxruntime")
        import onnxruntime as ort

        self.path = Path(path)
        if self.path.is_dir():  # a run dir: the export of its best.pt
            self.path = self.path / "best.onnx"
        self.meta = read_sidecar(self.path) if sidecar else {}
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:
            raise SwinCliError(f"ONNX Runtime cannot load {self.path}: {str(exc).strip().splitlines()[0]}") from None
        first_input, first_output = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = first_input.name, first_output.name
        self.input_shape = list(first_input.shape)
        self.classes: Optional[list[str]] = self.meta.get("classes")
        self.mean: Optional[list[float]] = self.meta.get("mean")
        self.std: Optional[list[float]] = self.meta.get("std")
        self.image_size: Optional[int] = self.meta.get("image_size")
        self.channels: Optional[int] = self.meta.get("channels")

    @property
    def opset(self) -> Optional[int]:
        """The default-domain opset of the model's graph."""
        import onnx

        model = onnx.load(str(self.path), load_external_data=False)
        return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)

    def __call__(self, images) -> Any:
        import torch

        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        try:
            (logits,) = self.session.run([self.output_name], {self.input_name: x})
        except Exception as exc:
            raise SwinCliError(f"{self.path.name} takes {self.input_name} of shape {self.input_shape}, "
                               f"got {list(x.shape)}: {str(exc).strip().splitlines()[0]}") from None
        return torch.from_numpy(logits)


# ----------------------------------------------------------------------------- command line


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(USAGE)
        return
    try:
        export(parse_args(argv))
    except ArgumentError as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except SwinCliError as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
