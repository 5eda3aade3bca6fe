"""Training throughput of swin-cli's Swin against timm's and the reference notebook's model.

Each model trains (forward + backward + AdamW step) on random data of the same size, batch,
dtype and thread count, in this one process. Repeats are interleaved (A B C, A B C, ...) so
that a machine slowing down or speeding up affects every model alike, and the median is
reported. Ratios are against baselines measured in the same run; FLOPs come from torch's
FlopCounterMode on one training step, and the matmul peak from a large fp32/bf16 matmul timed
here too, so "fraction of peak" compares like with like.

    python benchmarks/throughput.py                 # CPU: nano@32 (batch 128), tiny@224 (batch 8)
    python benchmarks/throughput.py --device cuda   # GPU: fp32 and bf16, with and without compile
    python benchmarks/throughput.py --configs nano --repeats 3
    python benchmarks/throughput.py --configs nano --cpu-bf16   # CPU fp32, then bf16 autocast
    python benchmarks/throughput.py --device cuda --variants bf16 bf16+compile --models ours-sdpa timm

timm is optional (pip install -e ".[bench]"); without it its rows are skipped with a message.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebook_model import NotebookSwin  # noqa: E402

from swin_cli.model import SwinTransformer  # noqa: E402

CONFIGS = {  # name: (image, patch, embed, depths, heads, window, cpu batch, gpu batch)
    "nano": (32, 2, 24, (2, 2, 2), (4, 4, 4), 4, 128, 1024),
    "tiny": (224, 4, 96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 8, 128),
}


VARIANTS = {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp32+compile": (None, True),
            "bf16+compile": (torch.bfloat16, True)}


@dataclass
class Candidate:
    name: str
    build: Callable[[], torch.nn.Module]


def candidates(config: str, only: list[str] | None = None) -> list[Candidate]:
    image, patch, embed, depths, heads, window, _, _ = CONFIGS[config]
    common = dict(patch_size=patch, in_chans=3, num_classes=10, embed_dim=embed, depths=list(depths),
                  num_heads=list(heads), window_size=window, drop_path_rate=0.0)
    out = [Candidate(f"ours-{impl}", lambda impl=impl: SwinTransformer(image_size=image, attn_impl=impl, **common))
           for impl in ("math", "sdpa")]
    try:
        from timm.models.swin_transformer import SwinTransformer as TimmSwin

        out.append(Candidate("timm", lambda: TimmSwin(img_size=image, patch_size=patch, in_chans=3, num_classes=10,
                                                      embed_dim=embed, depths=depths, num_heads=heads,
                                                      window_size=window, drop_path_rate=0.0)))
    except ImportError:
        print("timm is not installed: skipping its rows (pip install -e '.[bench]')")
    if config == "nano":
        out.append(Candidate("notebook", lambda: NotebookSwin(image_size=image, patch_size=patch, embed_dim=embed,
                                                              depths=depths, num_heads=heads, window_size=window)))
    return [c for c in out if not only or c.name in only]


def make_step(model: torch.nn.Module, batch: int, image: int, device: torch.device, dtype: torch.dtype | None):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    x = torch.randn(batch, 3, image, image, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    def step() -> None:
        with amp:
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_flops_per_image(model: torch.nn.Module, image: int, device: torch.device) -> float:
    x = torch.randn(2, 3, image, image, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    n = 2048 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


def bench(config: str, device: torch.device, dtype: torch.dtype | None, compile_: bool, repeats: int,
          steps: int, peak: float, only: list[str] | None = None) -> None:
    image, *_, cpu_batch, gpu_batch = CONFIGS[config]
    batch = gpu_batch if device.type == "cuda" else cpu_batch
    label = f"{config}@{image} batch {batch} {'bf16' if dtype else 'fp32'}{' compile' if compile_ else ''}"
    runs, flops, memory = {}, {}, {}
    for cand in candidates(config, only):
        torch.manual_seed(0)
        model = cand.build().to(device).train()
        flops[cand.name] = train_flops_per_image(model, image, device)
        compile_start = time.perf_counter()
        forward_model = torch.compile(model) if compile_ else model
        step = make_step(forward_model, batch, image, device, dtype)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(2):  # warm-up (and compilation)
            step()
        sync(device)
        if compile_:
            print(f"  {cand.name}: compile + 2 warm-up steps {time.perf_counter() - compile_start:.1f}s")
        memory[cand.name] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        runs[cand.name] = (step, [])
    for _ in range(repeats):  # interleaved
        for step, rates in runs.values():
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            rates.append(steps * batch / (time.perf_counter() - start))
    medians = {name: statistics.median(rates) for name, (_, rates) in runs.items()}
    print(f"\n{label}  ({device}, {torch.get_num_threads()} threads, median of {repeats} x {steps} steps)")
    print(f"  {'model':<10} {'img/s':>9} {'GFLOP/img':>10} {'GFLOP/s':>9} {'of peak':>8} {'peak MiB':>9}")
    for name, rate in medians.items():
        achieved = rate * flops[name] / 1e9
        mem = f"{memory[name]:9.0f}" if memory[name] is not None else f"{'-':>9}"
        print(f"  {name:<10} {rate:9.1f} {flops[name] / 1e9:10.3f} {achieved:9.1f} {achieved * 1e9 / peak:8.1%} {mem}")
    best = max((n for n in medians if n.startswith("ours")), key=medians.get)
    for base in ("timm", "notebook"):
        if base in medians:
            print(f"  {best} / {base}: {medians[best] / medians[base]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="on CPU, also measure bf16 autocast (worth it where the CPU has bf16 dot products)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                        help="precision[+compile] to measure (default: fp32 on CPU, all four on a GPU)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="only these rows: ours-math ours-sdpa timm notebook")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    if args.variants:
        names = args.variants
    elif device.type == "cpu":
        names = ["fp32"] + ["bf16"] * args.cpu_bf16
    else:
        names = list(VARIANTS)
    for dtype, compile_ in (VARIANTS[n] for n in names):
        peak = matmul_peak(device, dtype or torch.float32)
        print(f"\nmatmul peak {'bf16' if dtype else 'fp32'}: {peak / 1e9:.0f} GFLOP/s")
        for config in args.configs:
            steps = {"nano": 8, "tiny": 2}[config] if device.type == "cpu" else 20
            bench(config, device, dtype, compile_, args.repeats if config == "nano" else 3, steps, peak, args.models)


if __name__ == "__main__":
    main()
