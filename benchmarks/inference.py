"""CPU inference speed of swin-cli's Swin-T after export, against torch and the peers, in one run.

The same images go through every runtime, at batch 1 and batch 32, with 1 and with 2 threads:
torch eager fp32, torch.compile'd fp32, ONNX Runtime fp32, ONNX Runtime int8 (static, the
swin-export default, and dynamic), torchvision's swin_t eager and timm's
swin_tiny_patch4_window7_224 eager (when timm is installed; else a row saying so). The model is
the `model=tiny` preset at 224 px with 1000 classes, randomly initialised (speed does not
depend on the weights). Rounds are interleaved (A B C .., A B C ..) so that load on the machine
hits every runtime alike; p50/p90 are over every timed call of every round, and the ratio is
torch eager's p50 over the row's at the same batch and threads (above 1: faster than eager).

    python benchmarks/inference.py              # ~5 min on 2 idle cores (torch.compile: ~3 of them)
    python benchmarks/inference.py --quick      # fewer rounds, no torch.compile: ~2 min
    python benchmarks/inference.py --smoke      # a nano model at 32 px, seconds (the test's)
    python benchmarks/inference.py --accuracy [--folder /tmp/large]   # fp32 vs int8 top-1

prints, per thread count and batch, a table:

    threads 1, batch 1 (5 rounds x 8 calls)
    runtime                        p50 ms   p90 ms    img/s  vs eager
    torch eager fp32                163.7    170.4      6.1     1.00x
    ...
    ORT int8 (static)                53.9     61.6     18.5     3.04x

and, as its last line, ORT int8's (swin-export's default mode) ratio at batch 1, one thread:
`3.04x` (docs/deploy.md, "Quantise to int8", has a whole run).

--accuracy trains a small Swin at 224 px (patch 8, embed 48, depths 2-2, window 7: Swin-T's
matmuls, LayerNorms and windows, fewer of them) for a few epochs on an image folder (--folder: a root
with train/ and test/ (or val/), such as ../shared/tools/make-large-folder.py's output; by
default a 1,000 + 500 image subset of /work/shared/data/cifar10-jpg copied to a temporary folder,
deleted after), exports it, quantises it both ways and prints fp32 vs int8 top-1 on its test
split. Without a folder it says so and stops.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from swin_cli import quantize  # noqa: E402
from swin_cli.export import export_onnx  # noqa: E402
from swin_cli.onnx_runtime import OnnxClassifier  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpg"
# (image size, model config, classes, batches, threads) of the speed run.
TINY = dict(image=224, classes=1000, model=dict(patch_size=4, embed_dim=96, depths=[2, 2, 6, 2],
                                                num_heads=[3, 6, 12, 24], window_size=7))
NANO = dict(image=32, classes=10, model=dict(patch_size=2, embed_dim=24, depths=[2, 2, 2], num_heads=[4, 4, 4],
                                             window_size=4))


@dataclass
class Row:
    name: str
    run: Optional[Callable[[torch.Tensor], object]]  # None: a row that only says why it is missing
    note: str = ""
    times: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- runtimes


def swin_cli_model(spec: dict) -> torch.nn.Module:
    from swin_cli.model import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(image_size=spec["image"], in_chans=3, num_classes=spec["classes"], attn_impl="math",
                           drop_path_rate=0.0, **spec["model"]).eval()


def onnx_files(model: torch.nn.Module, spec: dict, folder: Path) -> dict[str, Path]:
    """fp32, int8 static and int8 dynamic ONNX files of `model`, written under `folder`."""
    image = spec["image"]
    fp32 = folder / "model.onnx"
    start = time.perf_counter()
    export_onnx(model, torch.randn(2, 3, image, image), fp32)
    print(f"exported fp32 ONNX in {time.perf_counter() - start:.0f} s", flush=True)
    files = {"fp32": fp32}
    # Random calibration images: the speed of the int8 graph does not depend on the ranges.
    calibration = torch.randn(16, 3, image, image, generator=torch.Generator().manual_seed(1)).numpy()
    for mode in ("static", "dynamic"):
        out = folder / f"model.int8.{mode}.onnx"
        start = time.perf_counter()
        quantize.quantize_onnx(fp32, out, mode, calibration)
        print(f"quantised ({mode}) in {time.perf_counter() - start:.0f} s", flush=True)
        files[mode] = out
    return files


class _Timeout(Exception):
    pass


def compiled(model: torch.nn.Module, example: torch.Tensor, budget: float) -> tuple[Optional[Callable], str]:
    """torch.compile(model), compiled on `example`'s shape within `budget` seconds, or (None, why)."""
    def stop(*_):
        raise _Timeout

    fn = torch.compile(model, dynamic=False)
    start = time.perf_counter()
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(max(1, int(budget)))
    try:
        with torch.no_grad():
            fn(example)
    except _Timeout:
        return None, f"compile took over {budget:.0f} s on this CPU: not timed"
    except Exception as exc:  # inductor needs a C++ compiler and more; say what stopped it
        return None, f"compile failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:80]}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return fn, f"compiled in {time.perf_counter() - start:.0f} s"


def peers(spec: dict) -> list[Row]:
    """torchvision's swin_t and timm's Swin-T, eager fp32 (Swin-T only: the smoke model has none)."""
    if spec is not TINY:
        return []
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.swin_t(weights=None).eval()
    rows = [Row("torchvision swin_t eager", tv)]
    try:
        import timm
    except ImportError:
        return rows + [Row("timm swin_tiny eager", None, 'timm is not installed (pip install -e ".[bench]")')]
    tm = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    return rows + [Row("timm swin_tiny eager", tm)]


def ort_runner(path: Path, threads: int) -> Callable[[torch.Tensor], object]:
    return OnnxClassifier(path, sidecar=False, threads=threads)


# ----------------------------------------------------------------------------- timing


def time_rows(rows: list[Row], x: torch.Tensor, rounds: int, calls: int) -> None:
    """Each row's per-call seconds, `calls` in a row per round, rounds interleaved across rows."""
    with torch.no_grad():
        for row in rows:  # warm-up: first-call allocations and lazy init stay out of the numbers
            if row.run is not None:
                row.run(x)
        for _ in range(rounds):
            for row in rows:
                if row.run is None:
                    continue
                for _ in range(calls):
                    start = time.perf_counter()
                    row.run(x)
                    row.times.append(time.perf_counter() - start)


def table(rows: list[Row], batch: int) -> list[str]:
    eager = statistics.median(rows[0].times)
    lines = [f"{'runtime':28s} {'p50 ms':>8s} {'p90 ms':>8s} {'img/s':>8s} {'vs eager':>9s}"]
    for row in rows:
        if row.run is None or not row.times:
            lines.append(f"{row.name:28s} {row.note}")
            continue
        p50 = statistics.median(row.times)
        p90 = float(np.percentile(row.times, 90))
        lines.append(f"{row.name:28s} {p50 * 1e3:8.1f} {p90 * 1e3:8.1f} {batch / p50:8.1f} "
                     f"{eager / p50:8.2f}x" + (f"  ({row.note})" if row.note else ""))
    return lines


def speed(args: argparse.Namespace) -> str:
    spec = NANO if args.smoke else TINY
    batches = [1, 4] if args.smoke else [1, 32]
    compile_budget = 0 if args.quick or args.smoke else args.compile_budget
    model = swin_cli_model(spec)
    image = spec["image"]
    x_all = torch.randn(max(batches), 3, image, image, generator=torch.Generator().manual_seed(0))
    tmp = Path(tempfile.mkdtemp(prefix="swin-inference-"))
    ratio = None
    compiled_for: dict[int, tuple] = {}
    try:
        files = onnx_files(model, spec, tmp)
        peer_rows = peers(spec)
        for threads in args.threads:
            torch.set_num_threads(threads)
            ort = {k: ort_runner(p, threads) for k, p in files.items()}
            for batch in batches:
                x = x_all[:batch].contiguous()
                rows = [Row("torch eager fp32", model)]
                if compile_budget:
                    if batch not in compiled_for:  # once per shape: the thread count needs no recompile
                        compiled_for[batch] = compiled(model, x, compile_budget)
                    rows.append(Row("torch compiled fp32", *compiled_for[batch]))
                else:
                    rows.append(Row("torch compiled fp32", None, "skipped (--quick/--smoke)"))
                rows += [Row("ORT fp32", ort["fp32"]), Row("ORT int8 (static)", ort["static"]),
                         Row("ORT int8 (dynamic)", ort["dynamic"])]
                rows += [Row(r.name, r.run, r.note) for r in peer_rows]
                rounds, calls = rounds_for(args, batch)
                time_rows(rows, x, rounds, calls)
                print(f"\nthreads {threads}, batch {batch} ({rounds} rounds x {calls} calls)")
                print("\n".join(table(rows, batch)), flush=True)
                if threads == 1 and batch == 1:
                    mode = quantize.DEFAULT_MODE
                    int8 = next(r for r in rows if r.name == f"ORT int8 ({mode})")
                    ratio = statistics.median(rows[0].times) / statistics.median(int8.times)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if ratio is None:
        raise SystemExit("no batch 1, one thread timing: --threads must include 1")
    print(f"\nORT int8 ({quantize.DEFAULT_MODE}) vs torch eager fp32, batch 1, one thread:")
    return f"{ratio:.2f}x"


def rounds_for(args: argparse.Namespace, batch: int) -> tuple[int, int]:
    if args.smoke:
        return 2, 3
    if batch == 1:
        return (3, 5) if args.quick else (5, 8)
    return (1, 1) if args.quick else (2, 1)


# ----------------------------------------------------------------------------- accuracy


def made_folder(per_class_train: int, per_class_test: int) -> Optional[Path]:
    """A small image folder copied from the shared CIFAR-10 JPEGs (swin-cli upsizes to 224 as
    it reads), or None when they are not here."""
    if not (CIFAR / "train").is_dir():
        return None
    root = Path(tempfile.mkdtemp(prefix="swin-inference-data-"))
    for split, count in (("train", per_class_train), ("test", per_class_test)):
        for klass in sorted(p for p in (CIFAR / split).iterdir() if p.is_dir()):
            (root / split / klass.name).mkdir(parents=True)
            for f in sorted(klass.iterdir())[:count]:
                shutil.copy(f, root / split / klass.name / f.name)
    return root


def accuracy(args: argparse.Namespace) -> None:
    """Train a small Swin at 224 px, export it, quantise both ways, print fp32 vs int8 top-1."""
    made = None
    folder = Path(args.folder) if args.folder else None
    if folder is None:
        made = folder = made_folder(100, 50)
    if folder is None or not (folder / "train").is_dir():
        print(f"accuracy: no image folder (--folder, or {CIFAR}): skipped")
        return
    work = Path(tempfile.mkdtemp(prefix="swin-inference-run-"))
    try:
        exe = Path(sys.executable).with_name("swin-train")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "swin_cli"]
        run = work / "run"
        train = cmd + ["data=imagefolder", f"data.root={folder}", "data.image_size=224", "model=nano",
                       "model.patch_size=8", "model.embed_dim=48", "model.depths=[2,2]", "model.num_heads=[3,6]",
                       "model.window_size=7", f"epochs={args.epochs}", "data.batch_size=32", "optimizer.lr=2e-3",
                       f"hydra.run.dir={run}"]
        start = time.perf_counter()
        proc = subprocess.run(train, cwd=work, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"training failed:\n{proc.stderr[-2000:]}")
        print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s ({folder})", flush=True)
        compare_modes(run, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def compare_modes(run: Path, args: argparse.Namespace) -> None:
    from swin_cli import checkpoint, export

    state = checkpoint.load(run / "best.pt")
    base = {"ckpt": str(run), "format": "onnx", "out": None, "batch": 8, "opset": None, "exporter": "dynamo",
            "quantize": "none", "quantize_mode": "static", "calibration_images": args.calibration_images,
            "check_images": args.check_images}
    meta = export.export(base)
    fp32 = run / meta["file"]
    inputs, where = export.check_inputs(state, 8)
    calibration, _, test, labels, test_where = export.int8_inputs(state, base, inputs, where)
    for mode in ("static", "dynamic"):
        out = run / f"best.int8.{mode}.onnx"
        quantize.quantize_onnx(fp32, out, mode, calibration.numpy())
        result = quantize.compare(OnnxClassifier(fp32, sidecar=False), OnnxClassifier(out, sidecar=False),
                                  test, labels)
        print(f"accuracy ({mode}): {quantize.describe(result, test_where)}", flush=True)


# ----------------------------------------------------------------------------- command line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no torch.compile")
    parser.add_argument("--smoke", action="store_true", help="a nano model at 32 px: seconds, for the test")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--compile-budget", type=float, default=90.0,
                        help="seconds torch.compile may take per batch size before its row says so")
    parser.add_argument("--accuracy", action="store_true", help="fp32 vs int8 top-1 of a small trained model")
    parser.add_argument("--folder", help="--accuracy's image folder (train/ and test/ or val/)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--calibration-images", type=int, default=quantize.DEFAULT_CALIBRATION_IMAGES)
    parser.add_argument("--check-images", type=int, default=1000)
    args = parser.parse_args()
    # A kill (timeout, Ctrl-C) still deletes the temporary folders: the finally blocks run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.accuracy:
        accuracy(args)
        return
    print(speed(args))


if __name__ == "__main__":
    main()
