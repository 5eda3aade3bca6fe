"""What a device can do at most, in matmul TFLOP/s, for MFU: the vendor's dense peak for GPUs we
know, otherwise a measured large matmul of the same dtype (a CPU, an unknown card).

The table lists dense tensor-core peaks (NVIDIA's datasheets list sparse ones, twice these) at
the boost clock: bf16/fp16 with fp32 accumulation (what PyTorch uses), tf32, and plain fp32 on
the CUDA cores. A table peak is the ceiling no real step reaches; a measured one is what this
machine's BLAS reaches on a square matmul.
"""

from __future__ import annotations

import re
import time
from typing import Optional

import torch

# (name pattern, name, {dtype: dense TFLOP/s}); the first match wins, so variants come first.
KNOWN_GPUS: list[tuple[str, str, dict[str, float]]] = [
    (r"H200 NVL", "H200 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H200", "H200 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"H100 NVL", "H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H100 PCIe", "H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    (r"H100", "H100 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"A100", "A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"L40S", "L40S", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    (r"L40\b", "L40", {"bf16": 181.05, "fp16": 181.05, "tf32": 90.5, "fp32": 90.5}),
    (r"\bL4\b", "L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"\bA10\b", "A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"RTX 4090", "RTX 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    # Volta has no bf16 or tf32 tensor cores: bf16 runs emulated, fp32 on the CUDA cores.
    (r"V100", "V100", {"fp16": 125.0, "tf32": 15.7, "fp32": 15.7}),
]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "fp32": torch.float32}


def matmul_dtype(device: torch.device, precision: str) -> str:
    """The dtype the model's matmuls run in: the autocast dtype, else tf32 on CUDA when fp32
    products are allowed TF32 (train.tf32, set by build.configure_device), else fp32."""
    if precision in ("bf16", "fp16"):
        return precision
    tf32 = device.type == "cuda" and torch.get_float32_matmul_precision() != "highest"
    return "tf32" if tf32 else "fp32"


def table_peak(device_name: str, dtype: str) -> Optional[tuple[float, str]]:
    """(dense TFLOP/s, the card's name) from the table, or None for a device it does not list."""
    for pattern, name, peaks in KNOWN_GPUS:
        if re.search(pattern, device_name) and dtype in peaks:
            return peaks[dtype], name
    return None


def measured_matmul_peak(device: torch.device, dtype: str, seconds: float = 0.5) -> float:
    """TFLOP/s of a large square matmul in `dtype` on `device`, the best of a few timed rounds."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(DTYPES[dtype])
    b = torch.randn(n, n, device=device).to(DTYPES[dtype])
    best = 0.0
    rounds, deadline = 0, time.perf_counter() + seconds
    torch.matmul(a, b)  # warm-up: kernel choice, threads
    while rounds < 3 or (time.perf_counter() < deadline and rounds < 20):
        reps = 10 if device.type == "cuda" else 1
        _sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e12)
        rounds += 1
    return best


def device_peak(device: torch.device, device_name: str, dtype: str) -> tuple[float, str]:
    """(TFLOP/s, where the number comes from) for MFU."""
    known = table_peak(device_name, dtype) if device.type == "cuda" else None
    if known is not None:
        return known[0], f"{known[1]} dense {dtype} datasheet peak"
    return measured_matmul_peak(device, dtype), f"measured {dtype} matmul on this device"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
