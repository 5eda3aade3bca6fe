"""int8 ONNX: an exported fp32 file quantised with ONNX Runtime's own tools, and checked against it.

    swin-export ckpt=outputs/DATE/TIME quantize=int8      # best.onnx, then best.int8.onnx (+ .json)

What is quantised: weights to int8 per output channel (a per-tensor scale loses the few large
channels Swin's MLPs grow), activations to uint8. The activations are where the two modes differ:

- static (the default): the activations' ranges are measured once, on `calibration_images` of
  the checkpoint's own training images, and written into the graph as QuantizeLinear /
  DequantizeLinear pairs (the QDQ format) around every op ORT can run in int8: the matmuls, and
  also the Reshape/Transpose/Slice/Concat of the window partition and shift, the residual Adds,
  LayerNorm and Softmax inputs. ORT fuses the pairs with their ops, so between two matmuls the
  tensors stay uint8 (a quarter of the memory traffic) and nothing is measured while an image runs.
- dynamic: the ranges are measured on every input as it runs (DynamicQuantizeLinear before each
  MatMulInteger); only MatMul, Gemm and Conv are quantised; no calibration images are needed.

Measured on Swin-T at 224 px (2-core Xeon VM, batch 1, one thread, medians; docs/deploy.md has
the tables): ORT fp32 145 ms, dynamic 82 ms, static with only the matmuls in QDQ 68 ms, static
with every op ORT supports (what this module does) 52 ms. Swin spends its time in many mid-sized
matmuls (49-token windows, 96-768 channels) and in moving windows around; dynamic quantisation
pays a range reduction, a quantise and a dequantise-to-float per matmul and moves float tensors
between them; static pays none of it. Dynamic tracks fp32 more closely, since its ranges fit each
input; both stay within a point of fp32's top-1 (benchmarks/inference.py --accuracy).

Not done, measured: `quant_pre_process` (symbolic shapes + ORT's graph optimisation before
quantising) changed nothing here (51.4 vs 51.5 ms static, 76.6 vs 77.3 dynamic): the exporter's
graph already has fused LayerNormalization and Gelu. The legacy exporter's graph quantises no
better than dynamo's (static 51.8 vs 51.5 ms), so quantize=int8 keeps the chosen exporter=.

Weights in 7 bits on x86 CPUs without VNNI (`weight_bits`): their int8 kernels multiply uint8
activations by int8 weights with VPMADDUBSW, which adds pairs of products into int16 and
saturates when both are near full range. Measured on an AVX2-only AMD EPYC (the test's digits
model, 359 test images): with 8-bit weights the int8 model's top class agreed with fp32's on
66.9% of them, with 7-bit weights (ONNX Runtime's reduce_range) on 93.3%; uint8 weights (94.4%)
were slower. A VNNI CPU (VPDPBUSD adds into int32) needs none of it. The sidecar records the bits,
and ONNX Runtime predict warns when an 8-bit file runs on a CPU that saturates it.

Importing this module imports neither torch nor ONNX Runtime; `require_quantization` does.
"""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any, Callable, Optional

from swin_cli.errors import SwinCliError
from swin_cli.onnx_runtime import INPUT_NAME, MissingExtraError

MODES = ("dynamic", "static")
DEFAULT_MODE = "static"
DEFAULT_CALIBRATION_IMAGES = 64
# Dynamic mode's ops (the ones it can quantise): the matmuls and the patch embedding's Conv.
# Static mode quantises every op ORT has an int8 kernel or QDQ fusion for (its default list).
DYNAMIC_OPS = ["MatMul", "Gemm", "Conv"]
# Calibration images go through the graph this many at a time (the batch axis is dynamic).
CALIBRATION_BATCH = 8
# The int8 check fails when the int8 model's top-1 is this many points below the fp32 model's
# on the same images: quantisation costs tenths of a point when it works, and tens of points
# (or NaN logits) when something is broken, such as a calibration on the wrong normalisation.
MAX_ACCURACY_DROP = 5.0
# With labels, the check also fails when the two models' top classes agree on fewer images than
# this: saturated int8 kernels flip a third of a weak model's answers while its top-1 barely
# moves (66.9% agreement, +1.7 points, before weight_bits); a working int8 model agreed on 93-99%.
MIN_AGREEMENT = 80.0
EXTRA_HINT = 'pip install -e ".[export]"'
WEIGHT_BITS = (7, 8)
# /proc/cpuinfo flags of the x86 instructions that multiply uint8 by int8 into int32 (no int16 step).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")


def cpu_flags() -> Optional[set[str]]:
    """This CPU's flags as Linux lists them (/proc/cpuinfo), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            line = next((line for line in cpuinfo if line.startswith("flags")), None)
    except OSError:
        return None
    return set(line.split(":", 1)[1].split()) if line else None


def saturates_8bit_weights(machine: Optional[str] = None, flags: Optional[set[str]] = None) -> Optional[bool]:
    """Whether ONNX Runtime's int8 kernels on this CPU (or `machine` with `flags`) saturate on
    8-bit weights: True on x86 without VNNI, False on x86 with it and on other CPUs, None on x86
    whose flags cannot be read."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in X86_MACHINES:
        return False
    flags = flags if flags is not None else cpu_flags()
    if flags is None:
        return None
    return not any(flag in flags for flag in VNNI_FLAGS)


def default_weight_bits(machine: Optional[str] = None, flags: Optional[set[str]] = None) -> tuple[int, str]:
    """weight_bits left unset: 7 where this CPU would saturate 8-bit weights or cannot tell, else
    8; and why, for the export's line and sidecar."""
    saturates = saturates_8bit_weights(machine, flags)
    if saturates is False:
        return 8, "this CPU's int8 kernels do not saturate (VNNI, or not x86)"
    if saturates is None:
        return 7, "this x86 CPU's flags cannot be read, and 7 bits are safe on every x86 CPU"
    return 7, "this x86 CPU has no VNNI, so 8-bit weights would saturate its int8 kernels"


def saturation_warning(meta: dict[str, Any], name: str) -> Optional[str]:
    """What to tell a user about to run the int8 file `name` (its sidecar `meta`) on this CPU
    when its 8-bit weights saturate here, else None. Files without weight_bits in their sidecar
    were all 8-bit."""
    if meta.get("precision") != "int8" or (meta.get("quantization") or {}).get("weight_bits", 8) != 8:
        return None
    if not saturates_8bit_weights():
        return None
    return (f"{name} has 8-bit int8 weights, which this x86 CPU without VNNI saturates: its answers may "
            f"drift from fp32's; re-export it here with swin-export quantize=int8 (7-bit weights by default)")


def require_quantization() -> None:
    """ONNX Runtime's quantisation tools, or one line naming the extra that brings them."""
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"quantize=int8 needs onnxruntime.quantization, which cannot be imported "
                                f"({exc}): {EXTRA_HINT}") from None


def int8_path(fp32_path: Path) -> Path:
    """Where the int8 file of an export goes: best.onnx -> best.int8.onnx."""
    return fp32_path.with_name(fp32_path.stem + ".int8" + fp32_path.suffix)


def _calibration_reader(images: Any):
    """ONNX Runtime's CalibrationDataReader over normalised float images (N, C, H, W), a batch
    at a time; made on call so that this module imports without ONNX Runtime."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(images), CALIBRATION_BATCH))

        def get_next(self) -> Optional[dict[str, Any]]:
            start = next(self.starts, None)
            if start is None:
                return None
            return {INPUT_NAME: images[start:start + CALIBRATION_BATCH]}

        def rewind(self) -> None:
            self.starts = iter(range(0, len(images), CALIBRATION_BATCH))

    return Batches()


def quantize_onnx(fp32: Path, out: Path, mode: str, calibration: Any = None, weight_bits: Optional[int] = None) -> None:
    """Write `fp32` quantised to int8 at `out`. calibration: static mode's normalised float32
    images (a numpy array (N, C, H, W)); weight_bits: 8, or 7 (ONNX Runtime's reduce_range);
    None: default_weight_bits. A failure of the quantiser is one line."""
    require_quantization()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode not in MODES:
        raise SwinCliError(f"quantize_mode must be one of {', '.join(MODES)} (got {mode})")
    if mode == "static" and (calibration is None or len(calibration) == 0):
        raise SwinCliError("quantize_mode=static needs calibration images")
    weight_bits = weight_bits if weight_bits is not None else default_weight_bits()[0]
    if weight_bits not in WEIGHT_BITS:
        raise SwinCliError(f"weight_bits must be 7 or 8 (got {weight_bits})")
    reduce_range = weight_bits == 7
    with _quiet_logging():
        try:
            if mode == "dynamic":
                quantize_dynamic(str(fp32), str(out), op_types_to_quantize=DYNAMIC_OPS, per_channel=True,
                                 reduce_range=reduce_range, weight_type=QuantType.QInt8)
            else:
                quantize_static(str(fp32), str(out), _calibration_reader(calibration),
                                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax,
                                calibration_providers=["CPUExecutionProvider"])
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise SwinCliError(f"ONNX Runtime could not quantise {fp32.name} to int8 (quantize_mode={mode}): "
                               f"{type(exc).__name__}{': ' + detail if detail else ''}") from None


class _quiet_logging:
    """The quantisers warn through the root logger for every weight they skip (a LayerNorm's
    1-d scale, say): noise for a user, so errors only meanwhile."""

    def __enter__(self) -> None:
        import logging

        self.logger = logging.getLogger()
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: Any) -> None:
        self.logger.setLevel(self.level)


# ----------------------------------------------------------------------------- the check


def compare(fp32: Callable[[Any], Any], int8: Callable[[Any], Any], images: Any, labels: Any,
            batch: int = 32) -> dict[str, Any]:
    """fp32 and int8 on the same normalised images (torch (N, C, H, W)): their top-1 accuracy on
    `labels` (class indices; None: unlabelled, or multi-hot), how often their top classes agree,
    and the max abs difference of their logits."""
    agree = right32 = right8 = 0
    worst = 0.0
    for start in range(0, len(images), batch):
        x = images[start:start + batch]
        a, b = fp32(x).float(), int8(x).float()
        diff = float((a - b).abs().max())
        if math.isfinite(worst) and not diff <= worst:  # a NaN or inf, once seen, stays: problem() names it
            worst = diff
        top32, top8 = a.argmax(1), b.argmax(1)
        agree += int((top32 == top8).sum())
        if labels is not None:
            y = labels[start:start + batch].to(top32.device)
            right32 += int((top32 == y).sum())
            right8 += int((top8 == y).sum())
    n = len(images)
    return {"images": n, "agreement": 100.0 * agree / n, "max_abs_diff": worst,
            "acc_fp32": 100.0 * right32 / n if labels is not None else None,
            "acc_int8": 100.0 * right8 / n if labels is not None else None}


def problem(result: dict[str, Any]) -> Optional[str]:
    """Why the int8 model is clearly broken, or None: NaN logits, or top-1 more than
    MAX_ACCURACY_DROP points below fp32's or agreement below MIN_AGREEMENT (without labels,
    agreement below 100 - MAX_ACCURACY_DROP)."""
    if not math.isfinite(result["max_abs_diff"]):
        return "its logits hold NaN or infinity"
    if result["acc_fp32"] is not None:
        drop = result["acc_fp32"] - result["acc_int8"]
        if drop > MAX_ACCURACY_DROP:
            return (f"its top-1 is {drop:.1f} points below fp32's ({result['acc_int8']:.2f}% vs "
                    f"{result['acc_fp32']:.2f}%; at most {MAX_ACCURACY_DROP:g} allowed)")
    floor = MIN_AGREEMENT if result["acc_fp32"] is not None else 100.0 - MAX_ACCURACY_DROP
    if result["agreement"] < floor:
        return (f"its top class agrees with fp32's on only {result['agreement']:.1f}% of the images "
                f"(at least {floor:g}% wanted)")
    return None


def describe(result: dict[str, Any], where: str) -> str:
    """The check's line: accuracy of both, agreement, max abs diff, on what."""
    acc = (f"top-1 {result['acc_int8']:.2f}% int8 vs {result['acc_fp32']:.2f}% fp32, "
           if result["acc_fp32"] is not None else "")
    return (f"int8 vs fp32 on {result['images']} {where}: {acc}top class agrees on "
            f"{result['agreement']:.1f}%, max abs diff of the logits {result['max_abs_diff']:.3g}")
