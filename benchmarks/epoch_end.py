"""What an epoch's end costs the training: cifar10_swin's model (7.1M parameters, AdamW, EMA: a
114 MB training state) trained for short epochs, once as swin-train did it before (last.pt and
best.pt written in the training thread, curves.png drawn after every epoch) and once as it does
now (the state copied, then written by a background thread while the next epoch trains;
curves.png at most every 30 s and at the end). Validation is left out (a constant evaluator),
so the difference is the epoch end alone. The two variants alternate in one process, so load
from other jobs falls on both alike.

    python benchmarks/epoch_end.py --epochs 12 --rounds 2

On a GPU an epoch of cifar10_swin takes seconds, so what the CPU measures here per epoch end
is, nearly unchanged, what a GPU run pays per epoch (the copy off the device aside).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_config  # noqa: E402

from swin_cli import records  # noqa: E402
from swin_cli.train import Trainer  # noqa: E402


def constant_evaluator(model, split, confusion):
    return 1.0, 50.0, (torch.zeros(10, 10, dtype=torch.long) if confusion else None)


def run(variant: str, epochs: int, batch: int, threads: int, folder: Path) -> dict[str, float]:
    cfg = make_config("experiment=cifar10_swin", "data=digits", "data.image_size=32", "device=cpu",
                      "train.compile=false", "train.compile_optimizer=false", "train.precision=fp32",
                      f"data.batch_size={batch}", "train.max_steps_per_epoch=1", f"epochs={epochs}",
                      f"threads={threads}", "log.progress=false", "data.repeats=1")
    trainer = Trainer(cfg, folder / variant, evaluator=constant_evaluator)
    if variant == "before":
        trainer.writer.submit = lambda write: write()  # written in the training thread
    records.CURVES_EVERY_S = 0.0 if variant == "before" else 30.0
    ends = []
    end_epoch = trainer._end_epoch

    def timed_end_epoch():
        started = time.perf_counter()
        end_epoch()
        ends.append(time.perf_counter() - started)

    trainer._end_epoch = timed_end_epoch
    started = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - started
    steps = [row["epoch_time_s"] for row in trainer.history]
    return {"wall": wall, "end": statistics.median(ends[1:]), "step": statistics.median(steps[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"before": [], "now": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for variant in ("before", "now"):
                results[variant].append(run(variant, args.epochs, args.batch, args.threads, Path(tmp) / str(r)))
    summary = {v: {k: statistics.median(x[k] for x in rows) for k in rows[0]} for v, rows in results.items()}
    for variant, s in summary.items():
        per_epoch = s["wall"] / args.epochs
        print(f"{variant:>6}: {per_epoch:.3f} s an epoch (training step {s['step']:.3f} s), "
              f"epoch end blocks training {s['end'] * 1000:.0f} ms")
    before, now = summary["before"], summary["now"]
    print(f"epoch end: {before['end'] / max(now['end'], 1e-9):.1f}x shorter; whole run: "
          f"{before['wall'] / now['wall']:.2f}x faster ({args.epochs} epochs of one step of {args.batch}, "
          f"{args.threads} threads)")


if __name__ == "__main__":
    main()
