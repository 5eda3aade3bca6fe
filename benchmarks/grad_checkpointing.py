"""What model.grad_checkpointing=true costs per training step: Swin-T (or any preset) with and
without it, the same weights and batch, alternated step by step in one process so that load
from other jobs falls on both alike; prints the min and median step time of each.

    python benchmarks/grad_checkpointing.py --size 224 --batch 8 --steps 8 --threads 1
    python benchmarks/grad_checkpointing.py --rss --batch 32 --threads 1   # peak RSS of one step

The memory it saves is measured exactly by tests/test_grad_checkpointing.py (counted op by op;
`python -m pytest -m slow tests/test_grad_checkpointing.py` for Swin-T at 224 px, batch 32);
--rss cross-checks it with the process's peak resident memory, one fresh process per variant.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from swin_cli.model import SwinTransformer

TINY = dict(patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
            window_size=7, attn_impl="math", drop_path_rate=0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each variant (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rss", action="store_true", help="peak RSS of one step instead of step times")
    parser.add_argument("--rss-child", choices=["false", "true"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss:
        for on in ("false", "true"):  # a fresh process each: RSS peaks never come down
            subprocess.run([sys.executable, __file__, "--rss-child", on, "--size", str(args.size),
                            "--batch", str(args.batch), "--threads", str(args.threads or 0)], check=True)
        return
    if args.rss_child:
        return rss_step(args.rss_child == "true", args.size, args.batch)
    device = torch.device(args.device)
    torch.manual_seed(0)
    models = {on: SwinTransformer(image_size=args.size, grad_checkpointing=on, **TINY).to(device).train()
              for on in (False, True)}
    models[True].load_state_dict(models[False].state_dict())
    optimizers = {on: torch.optim.AdamW(m.parameters(), lr=1e-4) for on, m in models.items()}
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    times: dict[bool, list[float]] = {False: [], True: []}
    for step in range(args.steps + 1):
        # Swap the order every step, so neither variant always runs right after the other.
        for on in (False, True) if step % 2 else (True, False):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            optimizers[on].zero_grad(set_to_none=True)
            F.cross_entropy(models[on](x), y).backward()
            optimizers[on].step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step:  # step 0 warms up
                times[on].append(time.perf_counter() - start)
    for on, t in times.items():
        print(f"grad_checkpointing={str(on).lower():<5}  min {min(t) * 1000:8.0f} ms  "
              f"median {statistics.median(t) * 1000:8.0f} ms  ({len(t)} steps)")
    print(f"cost: {min(times[True]) / min(times[False]) - 1:+.1%} (min), "
          f"{statistics.median(times[True]) / statistics.median(times[False]) - 1:+.1%} (median)")


def rss_step(on: bool, size: int, batch: int) -> None:
    """Peak RSS over one training step, and how far above the peak before it (a batch-1 step
    first, so that the gradients and torch's own buffers already exist)."""
    torch.manual_seed(0)
    model = SwinTransformer(image_size=size, grad_checkpointing=on, **TINY).train()
    x = torch.randn(batch, 3, size, size)
    model(x[:1]).sum().backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    model(x).square().mean().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"grad_checkpointing={str(on).lower():<5}  peak RSS {peak / 2**20:.2f} GiB, "
          f"{(peak - before) / 2**20:.2f} GiB above the peak before the step")


if __name__ == "__main__":
    main()
