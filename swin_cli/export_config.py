"""swin-export's arguments: the schema Hydra fills from `key=value` overrides, and the checks
that types cannot express.

conf/export.yaml, swin-export's primary config, starts from this schema (`export_schema`), so
Hydra rejects a misspelt key or a value of the wrong type or outside a choice before anything
is loaded, as it does for swin-train. Importing this module imports neither torch nor the
exporter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from swin_cli.config import choices, plain
from swin_cli.errors import SwinCliError

ExportFormat = choices("ExportFormat", "onnx", "torchscript")
# dynamo: torch.export-based torch.onnx.export; legacy: the TorchScript-based one.
Exporter = choices("Exporter", "dynamo", "legacy")
DEFAULT_EXPORTER = "dynamo"
# int8: the ONNX file is also written quantised (swin_cli/quantize.py), beside the fp32 one.
Quantize = choices("Quantize", "none", "int8")
QuantizeMode = choices("QuantizeMode", "dynamic", "static")


@dataclass
class ExportConfig:
    ckpt: str = MISSING  # a checkpoint .pt, or a run dir (its best.pt)
    format: ExportFormat = ExportFormat.onnx  # type: ignore[attr-defined]
    out: Optional[str] = None  # the file or folder to write; null: next to the checkpoint
    batch: int = 8  # images in the check against torch
    opset: Optional[int] = None  # ONNX only; null: the exporter's own
    # ONNX only; null: dynamo. A default of null tells "not given" apart from "given with
    # format=torchscript", which is an error.
    exporter: Optional[Exporter] = None
    quantize: Quantize = Quantize.none  # type: ignore[attr-defined]
    # quantize=int8 only, as exporter is; null: static (swin_cli/quantize.py says why).
    quantize_mode: Optional[QuantizeMode] = None
    # static only: training images the activation ranges are measured on; null: 64.
    calibration_images: Optional[int] = None
    # quantize=int8: test images the int8 model's top-1 is compared with fp32's on (at most).
    check_images: int = 1000
    # int8 weights' bits: 8, or 7 (ONNX Runtime's reduce_range); null: 7 on an x86 CPU without
    # VNNI, whose int8 kernels saturate on 8-bit weights, else 8 (swin_cli/quantize.py).
    weight_bits: Optional[int] = None


KEYS = tuple(f.name for f in dataclasses.fields(ExportConfig))
ONNX_ONLY = ("opset", "exporter")
INT8_ONLY = ("quantize_mode", "calibration_images", "weight_bits")


class ArgumentError(SwinCliError):
    """A bad command line: exit code 2."""


def register() -> None:
    ConfigStore.instance().store(name="export_schema", node=ExportConfig)


def export_args(cfg: Any) -> dict[str, Any]:
    """The composed config as plain, checked values: ckpt, format, out, batch, opset, exporter,
    and quantize_args's (the defaults filled in)."""
    unknown = sorted(set(cfg.keys()) - set(KEYS) - {"hydra"})  # `+key=value` adds keys to any schema
    if unknown:
        raise ArgumentError(f"unknown key {unknown[0]!r} (keys: {', '.join(KEYS)})")
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise ArgumentError("ckpt=<run dir or .pt> is required (see --help)")
    fmt = plain(cfg.format)
    for key in ("batch", "opset", "calibration_images", "check_images"):
        if cfg[key] is not None and cfg[key] < 1:
            raise ArgumentError(f"{key} must be a positive integer (got {cfg[key]})")
    _only_with(cfg, ONNX_ONLY, fmt == "onnx", "format=onnx", f"format={fmt}")
    exporter = plain(cfg.exporter) if cfg.exporter is not None else DEFAULT_EXPORTER
    return {"ckpt": str(cfg.ckpt), "format": fmt, "out": cfg.out, "batch": int(cfg.batch),
            "opset": cfg.opset, "exporter": exporter, **quantize_args(cfg, fmt)}


def _only_with(cfg: Any, keys: tuple[str, ...], allowed: bool, needs: str, got: str) -> None:
    """One line naming the keys that were given although they apply only with `needs`."""
    given = [key for key in keys if cfg[key] is not None]
    if not allowed and given:
        named = " and ".join(f"{k}=" for k in given)
        raise ArgumentError(f"{named} {'apply' if len(given) > 1 else 'applies'} only to {needs} (got {got})")


def quantize_args(cfg: Any, fmt: str) -> dict[str, Any]:
    """quantize, quantize_mode, calibration_images, check_images, defaults filled in, and
    weight_bits (None: chosen for the CPU at export)."""
    from swin_cli.quantize import DEFAULT_CALIBRATION_IMAGES, DEFAULT_MODE, WEIGHT_BITS

    quantize = plain(cfg.quantize)
    if quantize != "none" and fmt != "onnx":
        raise ArgumentError(f"quantize={quantize} applies only to format=onnx (got format={fmt}; "
                            f"quantize: none, int8)")
    _only_with(cfg, INT8_ONLY, quantize == "int8", "quantize=int8", f"quantize={quantize}")
    mode = plain(cfg.quantize_mode) if cfg.quantize_mode is not None else DEFAULT_MODE
    _only_with(cfg, ("calibration_images",), mode == "static", "quantize_mode=static", f"quantize_mode={mode}")
    calibration = cfg.calibration_images if cfg.calibration_images is not None else DEFAULT_CALIBRATION_IMAGES
    if cfg.weight_bits is not None and cfg.weight_bits not in WEIGHT_BITS:
        raise ArgumentError(f"weight_bits must be 7 or 8 (got {cfg.weight_bits})")
    return {"quantize": quantize, "quantize_mode": mode, "calibration_images": int(calibration),
            "check_images": int(cfg.check_images), "weight_bits": cfg.weight_bits}


def explain(line: str) -> str:
    """Hydra's one-line error, with the keys swin-export has when it names another."""
    if "Could not override" in line or "Key '" in line:
        return f"{line} (keys: {', '.join(KEYS)})"
    return line
