"""Summarise a benchmarks/gpu_check.sh folder as markdown: one row per training run (accuracy,
img/s, data share, wall time), then the augmentation and throughput tables as they printed.

    python benchmarks/gpu_summary.py OUT_DIR > OUT_DIR/summary.md
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def run_row(run_dir: Path) -> str:
    results = run_dir / "results.json"
    rows = list(csv.DictReader(open(run_dir / "metrics.csv"))) if (run_dir / "metrics.csv").is_file() else []
    if not rows:
        return f"| {run_dir.name} | no epoch finished | | | | | |"
    # Epoch 1 pays for compilation and warm-up: the rate and data share of the later epochs.
    steady = rows[1:] or rows
    rate = sum(float(r["train_img_per_s"]) for r in steady) / len(steady)
    data = sum(float(r["data_time_s"]) for r in steady) / max(sum(float(r["epoch_time_s"]) for r in steady), 1e-9)
    val = max(max(float(r["val_acc"] or 0), float(r["ema_val_acc"] or 0)) for r in rows)
    if results.is_file():
        res = json.loads(results.read_text())
        test, wall = f"{res['test_acc']:.2f}", f"{res['wall_time_s']:.0f}"
        # e.g. train.time_limit_min: the schedule did not finish. Runs before "stop" wrote
        # "stopped_early": {"epoch", "reason": the words}.
        stop = res.get("stop") or ({**res["stopped_early"], "detail": res["stopped_early"]["reason"]}
                                   if res.get("stopped_early") else None)
        if stop and stop["reason"] != "finished":
            test += f" (stopped after epoch {stop['epoch']}: {stop['detail']})"
    else:
        test, wall = "(stopped)", ""
    return f"| {run_dir.name} | {len(rows)} | {val:.2f} | {test} | {rate:,.0f} | {data:.1%} | {wall} |"


def bench_rows(out: Path) -> list[str]:
    """mode=benchmark results (bench/*/benchmark.json) as table rows."""
    rows = []
    for path in sorted((out / "bench").glob("*/benchmark.json")):
        r = json.loads(path.read_text())
        rows.append(f"| {path.parent.name} | {r['device']} | {r['batch_size']} | {r['train_img_per_s']:,.0f} | "
                    f"{r['inference_img_per_s']:,.0f} | {r['train_tflops']:.1f} | {r['mfu']:.1%} | "
                    f"{r['peak_memory_bytes'] / 2**30:.2f} | {r['data_share']:.1%} | {r['warmup_s']:.0f} |")
    return rows


def main() -> None:
    out = Path(sys.argv[1])
    print("# swin-cli GPU check\n")
    if (out / "machine.txt").is_file():
        print("```\n" + (out / "machine.txt").read_text().strip() + "\n```\n")
    print("| run | epochs | best val % | test % | img/s (epochs 2+) | data share | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run_dir in sorted((out / "runs").glob("*")):
        print(run_row(run_dir))
    bench = bench_rows(out)
    if bench:
        print("\n## mode=benchmark (bf16)\n")
        print("| run | device | batch | train img/s | inference img/s | TFLOP/s | MFU | peak GiB | data share "
              "| warm-up s |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        print("\n".join(bench))
    tta = out / "eval_tta_flip" / "eval.json"
    if tta.is_file():
        print(f"\ncifar10_swin test accuracy with eval.tta=flip: {json.loads(tta.read_text())['acc']:.2f}%")
    for name in ("augment", "throughput", "throughput_compiled", "progress"):
        path = out / f"{name}.log"
        if path.is_file():
            lines = [line for line in path.read_text().splitlines() if "Warning" not in line]
            print(f"\n## {name}\n\n```\n" + "\n".join(lines[-80:]) + "\n```")


if __name__ == "__main__":
    main()
