from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpg"

# A model small enough that a training step takes milliseconds on one CPU core.
TINY_MODEL = ["model.embed_dim=8", "model.depths=[1,1]", "model.num_heads=[2,2]", "model.window_size=4",
              "data.image_size=16", "model.patch_size=2"]
# ... trained on digits for epochs of four steps: a whole Trainer run in about a second.
FAST = [*TINY_MODEL, "data=digits", "data.batch_size=32", "train.max_steps_per_epoch=4", "threads=1"]


def make_config(*overrides: str) -> DictConfig:
    from swin_cli.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _swin_train(args, env: dict | None) -> tuple[list[str], dict]:
    exe = Path(sys.executable).with_name("swin-train")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "swin_cli"]
    return cmd + list(args), {**(env or os.environ), "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None,
            **kwargs) -> subprocess.CompletedProcess:
    """Run the real swin-train console script (installed by `pip install -e .`)."""
    cmd, env = _swin_train(args, env)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def run_cli_together(arg_lists: list[list[str]], cwd: Path, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Several swin-train runs at once (they spend most of their time importing, one core each),
    each result as `run_cli` gives it. The runs must not share a run dir."""
    procs = []
    for args in arg_lists:
        cmd, env = _swin_train(args, None)
        procs.append((cmd, subprocess.Popen(cmd, cwd=cwd, env=env, text=True,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    results = []
    for cmd, proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    return results



@pytest.fixture
def compile_counters(monkeypatch) -> list:
    """torch.compile counting: every call compiles with the aot_eager backend (forward and
    backward traced as inductor would get them, no code generated) behind its own counter,
    appended to the list returned; dynamo's caches are reset first."""
    import torch
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counters: list = []
    real_compile = torch.compile

    def counting_compile(fn, mode=None):
        counters.append(CompileCounterWithBackend("aot_eager"))
        return real_compile(fn, backend=counters[-1])

    monkeypatch.setattr(torch, "compile", counting_compile)
    return counters


def _on_gloo_rank(rank: int, work, out: Path, args: tuple) -> None:
    import json

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=2)
    try:
        (out / f"rank{rank}.json").write_text(json.dumps(work(rank, out, *args)))
    finally:
        dist.destroy_process_group()


def on_two_gloo_ranks(work, out: Path, *args) -> tuple[dict, dict]:
    """Run `work(rank, out, *args)` in two processes joined in a gloo process group (one thread
    each, a file rendezvous in `out`), as torchrun's ranks would be; return what each returned
    (a JSON-able dict), rank 0's first. `work` must be a module-level function."""
    import json

    import torch.multiprocessing as mp

    mp.spawn(_on_gloo_rank, args=(work, out, args), nprocs=2, join=True)
    return tuple(json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1))


def torchvision_reference(name: str, size: int, randomise=None):
    """A randomly initialised torchvision model (`torchvision.models.<name>`, its constant-init
    parameters moved by `randomise` when given), its state_dict, a batch of 2 inputs and its
    logits: the reference the parity tests map into our model."""
    import torch
    import torchvision

    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)(weights=None).eval()
    if randomise is not None:
        randomise(tv)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return tv.state_dict(), x, tv(x)


class IndexedImages:
    """A stream source of n grey images whose label is their own index (image i has grey level
    i), so the batches a split yields show the order it read them in."""

    def __init__(self, n: int):
        self.labels = list(range(n))

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int):
        from PIL import Image

        return Image.new("L", (8, 6), color=i)

    def name(self, i: int) -> str:
        return f"#{i}"
