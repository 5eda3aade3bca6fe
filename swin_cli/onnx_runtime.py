"""Running what swin-export wrote, without the exporter or the training stack: where a
checkpoint's export lies, the JSON sidecar next to it, and `OnnxClassifier`, an ONNX file under
ONNX Runtime.

    clf = OnnxClassifier("outputs/DATE/TIME")            # its best.onnx and best.onnx.json
    clf = OnnxClassifier("outputs/DATE/TIME/best.int8.onnx")   # quantize=int8's file
    logits = clf(Normalize(clf.mean, clf.std, cpu)(uint8_images))

mode=predict with predict_backend=onnx (swin_cli/evaluate.py) runs exports through this module;
swin_cli/export.py writes them and checks each one with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from swin_cli.errors import SwinCliError

# The graph's input and output names, as the exporter writes them.
INPUT_NAME, OUTPUT_NAME = "images", "logits"
INSTALL_HINT = 'pip install "swin-cli[export]"'


class MissingExtraError(SwinCliError):
    """A package of the export extra is not installed."""


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


# ----------------------------------------------------------------------------- where exports lie


def resolve_checkpoint(ckpt: str) -> Path:
    """A .pt, or a run dir meaning its best.pt (its last.pt when it has no best.pt)."""
    path = Path(os.path.expanduser(ckpt))
    if path.is_dir():
        best = path / "best.pt"
        path = best if best.is_file() or not (path / "last.pt").is_file() else path / "last.pt"
    return path


def default_output(ckpt_path: Path, fmt: str, out: Optional[str]) -> Path:
    """Where swin-export writes the `fmt` export of `ckpt_path`: `out` (a file, or a folder for
    the default name), else next to the checkpoint."""
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    if out is None:
        return ckpt_path.with_name(ckpt_path.stem + suffix)
    path = Path(os.path.expanduser(out))
    return path / (ckpt_path.stem + suffix) if path.is_dir() else path


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


# ----------------------------------------------------------------------------- running one


class OnnxClassifier:
    """An exported ONNX model (a .onnx, or a run dir meaning its best.onnx) under ONNX Runtime:
    `clf(images)` with normalised float images (N, C, H, W) returns torch float32 logits
    (N, classes) on the CPU.

    With its sidecar (the default): `classes`, `mean`, `std`, `image_size`, `channels`,
    `precision` (fp32, or int8 for swin-export quantize=int8's file) and `meta` (the whole JSON)
    come from it. `providers`: ONNX Runtime execution providers
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
        # Sidecars older than quantize=int8 say nothing: those exports were all fp32.
        self.precision: str = self.meta.get("precision") or "fp32"

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
