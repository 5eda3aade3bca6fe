"""Progressive resizing's bar (issue 28 C): on an image folder, swin-train at a fixed
data.image_size against the same run ramping the training side from half of it over the first
70% of the epochs (train.resolution_schedule), same seed, same data, same everything else.
Prints each run's wall time and test accuracy, the time ratio and the accuracy difference; the
last line is the time ratio `N.NNx` (ramp / fixed: the bar is <= 0.75x, and the ramp's test
accuracy at most 1 point below the fixed run's).

    python ../shared/tools/make-large-folder.py /tmp/large300 --per-class 300
    python benchmarks/progressive_resize.py /tmp/large300
    python benchmarks/progressive_resize.py /tmp/large300 --seeds 0 1 2 3

With several seeds each seed is one pair (both runs that seed), and the summary is the mean
difference with its standard error: two runs' test accuracies on 1,000 images differ by about
2 points from the seed alone, more than the 1-point bar, so one pair cannot settle it.

Both runs are swin-train's own Trainers in this process, memory storage (the folder is decoded
once, before either run is timed), taking turns an epoch at a time so that load from other jobs
falls on both alike. A run's time is what its fit() would spend: training, validation every
epoch and the final test, everything a user waits for after the start-up both runs share.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_config  # noqa: E402

from swin_cli.interrupt import StopRequest  # noqa: E402
from swin_cli.loop_state import Stop  # noqa: E402
from swin_cli.train import Trainer  # noqa: E402


def common(args: argparse.Namespace, cache: Path, seed: int) -> list[str]:
    return ["data=imagefolder", f"data.root={args.folder}", f"data.image_size={args.size}", "data.storage=memory",
            f"data.cache_dir={cache}", f"model={args.model}", f"epochs={args.epochs}", f"seed={seed}",
            f"threads={args.threads}", "log.progress=false", "device=cpu", *args.overrides]


def ramp(args: argparse.Namespace) -> list[str]:
    key = "train.resolution_schedule"
    return [f"{key}.start={args.size // 2}", f"{key}.end_fraction={args.end_fraction}",
            *([f"{key}.step={args.step}"] if args.step else [])]


def alternate(configs: dict[str, list[str]], runs: Path) -> dict[str, dict[str, Any]]:
    """Train every config's run, an epoch of each in turn (so load from other jobs falls on all
    of them alike), then test each; what Trainer.fit does, with each run's time clocked apart."""
    trainers = {name: Trainer(make_config(*overrides), runs / name) for name, overrides in configs.items()}
    spent = dict.fromkeys(trainers, 0.0)
    cpu = dict.fromkeys(trainers, 0.0)

    def clocked(name: str, work: Callable[[], Any]) -> Any:
        started, cpu_started = time.perf_counter(), time.process_time()
        result = work()
        spent[name] += time.perf_counter() - started
        cpu[name] += time.process_time() - cpu_started
        return result

    stop = StopRequest()
    for trainer in trainers.values():
        trainer.records.start(trainer.model, trainer.data, trainer.device, trainer.steps_per_epoch,
                              trainer.batch_size, trainer.world)
    epochs = next(iter(trainers.values())).cfg.epochs
    load_before = os.getloadavg()[0]
    for _ in range(epochs):
        for name, trainer in trainers.items():
            clocked(name, lambda t=trainer: (t._train_epoch(stop), t._end_epoch()))
    results = {}
    for name, trainer in trainers.items():
        trainer.loop.stop = Stop("finished", trainer.epoch, f"trained to epochs={epochs}")
        scores = clocked(name, trainer._finish)
        epoch_s = [round(row["epoch_time_s"], 2) for row in trainer.history]
        results[name] = {"wall_s": spent[name], "cpu_s": cpu[name], "test_acc": scores["test_acc"],
                         "best_val_acc": scores["best_val_acc"], "train_s": sum(epoch_s), "epoch_s": epoch_s,
                         "sizes": [row.get("train_size") for row in trainer.history]}
    # The load average over the runs: 2 is both cores busy with them alone.
    results["load"] = {"before": load_before, "after": os.getloadavg()[0]}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="an image folder (root/train, root/val)")
    ap.add_argument("--model", default="nano")
    ap.add_argument("--size", type=int, default=64, help="data.image_size: the fixed run's and the evaluation side")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--end-fraction", type=float, default=0.7, help="the ramp reaches --size at this share of epochs")
    ap.add_argument("--step", type=int, default=None, help="the ramp's side step (default: the model's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one pair of runs per seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("overrides", nargs="*", help="more swin-train overrides for both runs")
    args = ap.parse_intermixed_args()

    pairs = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        # The process's first training steps pay one-time costs (kernels' first use, the
        # allocator growing) that would land on whichever run went first: paid here, untimed.
        warm = common(args, cache, args.seeds[0])
        Trainer(make_config(*warm, "epochs=1", "train.max_steps_per_epoch=3"), Path(tmp) / "warm-up").fit()
        for seed in args.seeds:
            base = common(args, cache, seed)
            pairs[seed] = alternate({"fixed": base, "ramp": [*base, *ramp(args)]}, Path(tmp) / f"seed{seed}")
            report(seed, pairs[seed])
    ratios = [pair["ramp"]["wall_s"] / pair["fixed"]["wall_s"] for pair in pairs.values()]
    gaps = [pair["ramp"]["test_acc"] - pair["fixed"]["test_acc"] for pair in pairs.values()]
    ratio, gap = statistics.mean(ratios), statistics.mean(gaps)
    if len(pairs) > 1:
        error = statistics.stdev(gaps) / math.sqrt(len(gaps))
        print(f"over {len(pairs)} seeds: time ramp / fixed {ratio:.3f} (each {', '.join(f'{r:.3f}' for r in ratios)}) "
              f"| test accuracy ramp - fixed {gap:+.2f} +- {error:.2f} points, mean +- standard error "
              f"(each {', '.join(f'{g:+.2f}' for g in gaps)})")
    if args.json:
        args.json.write_text(json.dumps({"seeds": pairs, "ratio": ratio, "acc_gap": gap, "ratios": ratios,
                                         "acc_gaps": gaps, "args": {k: str(v) for k, v in vars(args).items()}},
                                        indent=2) + "\n")
    print(f"{ratio:.2f}x")


def report(seed: int, measured: dict[str, Any]) -> None:
    fixed, ramped = measured["fixed"], measured["ramp"]
    for name, r in (("fixed", fixed), ("ramp", ramped)):
        sides = "" if r["sizes"][0] is None else f" | sides {r['sizes']}"
        print(f"seed {seed} {name:>5}: wall {r['wall_s']:7.1f} s (training {r['train_s']:6.1f} s, "
              f"cpu {r['cpu_s']:6.1f} s) | test acc {r['test_acc']:6.2f}% | "
              f"best val acc {r['best_val_acc']:6.2f}%{sides}")
        print(f"       epoch times (s): {r['epoch_s']}")
    print(f"load average {measured['load']['before']:.1f} before, {measured['load']['after']:.1f} after")
    print(f"seed {seed}: time ramp / fixed: {ramped['wall_s'] / fixed['wall_s']:.3f} (bar <= 0.75) | test accuracy "
          f"ramp - fixed: {ramped['test_acc'] - fixed['test_acc']:+.2f} points (bar >= -1)", flush=True)


if __name__ == "__main__":
    main()
