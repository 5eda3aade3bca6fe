"""What train.compile=true needs to stay fast on a GPU, checked on the CPU: the model's forward
and backward capture as one graph (a graph break is a trip back to Python and lost fusion;
with CUDA graphs it also splits the captured region), and a run compiles once, however the lr,
the epoch or the step change. The aot_eager backend traces exactly what inductor would receive
(forward and backward graphs) without generating code, so these take seconds, not minutes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL, make_config
from torch._dynamo.testing import CompileCounterWithBackend

from swin_cli.build import build_model, build_optimizer, build_scheduler, training_module

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e

# TINY_MODEL's architecture as constructor arguments; drop path on, so training-mode randomness
# is part of the graph.
TINY = dict(image_size=16, patch_size=2, in_chans=3, num_classes=5, embed_dim=8, depths=[1, 1], num_heads=[2, 2],
            window_size=4, drop_path_rate=0.1)


# The default path (V1, math, no checkpointing) is also captured whole inside the Trainer run of
# the recompile test below; the other combinations are slow-only to keep the default run short.
@pytest.mark.parametrize("version,attn_impl,checkpointing", [
    (1, "math", True), (2, "sdpa", False), pytest.param(1, "sdpa", False, marks=pytest.mark.slow),
    pytest.param(2, "math", False, marks=pytest.mark.slow), pytest.param(1, "math", False, marks=pytest.mark.slow)])
def test_forward_and_backward_compile_to_one_graph_without_breaks(version, attn_impl, checkpointing):
    from swin_cli.model import SwinTransformer

    torch._dynamo.reset()
    model = SwinTransformer(**TINY, version=version, attn_impl=attn_impl, grad_checkpointing=checkpointing).train()
    x = torch.randn(4, 3, 16, 16)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    F.cross_entropy(compiled(x), torch.arange(4)).backward()
    assert counter.frame_count == 1
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_model_that_meets_k_input_sizes_compiles_k_graphs():
    """Square and non-square sizes, each met several times: every size is one graph, and the
    compiled logits equal eager ones. (Forward only, so it takes seconds: a size's backward is
    traced with its forward, and the Trainer-level test in test_resolution_schedule.py trains.)"""
    from swin_cli.model import SwinTransformer

    torch._dynamo.reset()
    model = SwinTransformer(**{**TINY, "drop_path_rate": 0.0}).eval()
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(model, backend=counter)
    sizes = [(16, 16), (24, 16), (16, 16), (12, 20), (24, 16), (12, 20), (16, 16)]
    for size in set(sizes):  # what the Trainer does before a compiled step meets a side
        model.prepare_input_size(size)
    # Static graphs per size, as a Trainer with a resolution schedule asks for (resolution.py
    # compiled_sizes); torch's default would retrace the second size with symbolic shapes.
    with torch.no_grad(), torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        for height, width in sizes:
            x = torch.randn(2, 3, height, width)
            assert torch.allclose(compiled(x), model(x), atol=1e-5)
    assert counter.frame_count == 3


def test_compile_mode_reaches_torch_compile(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: seen.append(mode) or module)
    cfg = make_config(*TINY_MODEL, "train.compile=true", "train.compile_mode=max-autotune")
    model = build_model(cfg.model, cfg.data.image_size, 1, 10)
    training_module(model, torch.device("cpu"), 1, cfg.train.compile, cfg.train.compile_mode.value)
    assert seen == ["max-autotune"]


def test_a_bad_compile_mode_names_the_key():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as raised:
        make_config("train.compile_mode=fast")
    assert "compile_mode" in str(raised.value.__cause__ or raised.value)


def test_a_run_compiles_once_across_steps_epochs_and_lr_changes(compile_counters, tmp_path):
    """The Trainer over 2 epochs of 3 steps, the cosine schedule moving the lr every step, the
    model switched to eval for validation in between, cifar10_swin's pipeline (AutoAugment,
    erasing, mixing, repeats): every compiled function (model, batch pipeline) compiles during
    the first step and never again. (The augmentation's lookup tables once appeared inside the
    first compiled call, which made the second step recompile the pipeline.)"""
    from swin_cli.train import Trainer

    counters = compile_counters
    cfg = make_config(*TINY_MODEL, "data=digits", "aug=small_data", "aug.hflip=false", "data.repeats=3",
                      "data.batch_size=16", "train.max_steps_per_epoch=3",
                      "epochs=2", "threads=1", "train.compile=true", "model.drop_path_rate=0.1",
                      "scheduler.warmup_epochs=0.5")
    after_first: list[int] = []
    lrs: list[float] = []

    def on_step(trainer: Trainer) -> None:
        lrs.append(trainer.step.optimizer.param_groups[0]["lr"])
        if trainer.global_step == 1:
            after_first.extend(c.frame_count for c in counters)

    trainer = Trainer(cfg, tmp_path, on_step=on_step)
    trainer.fit()
    # The model and the batch pipeline: one graph each (no breaks) in the first step, none later.
    assert len(counters) == 2 and after_first == [1, 1]
    assert [c.frame_count for c in counters] == after_first
    assert len(lrs) == 6 and all(a != b for a, b in zip(lrs, lrs[1:]))  # a new lr every step


def test_fused_adamw_follows_the_float_lr_of_the_schedule():
    """On CUDA the eager optimizer is fused. LambdaLR writes a float lr into it every step; the
    fused kernel takes it as it is (a tensor lr is only needed when the step is compiled,
    train.compile_optimizer, tested below). Fused AdamW also runs on the CPU, so the CUDA
    configuration is run here."""
    cfg = make_config(*TINY_MODEL, "scheduler.warmup_epochs=1")
    model = build_model(cfg.model, cfg.data.image_size, 1, 10)
    optimizer = build_optimizer(cfg.optimizer, model, torch.device("cuda"))
    assert optimizer.defaults["fused"] is True
    scheduler = build_scheduler(cfg.scheduler, optimizer, total_steps=8, steps_per_epoch=4)
    x, y = torch.randn(4, 1, 16, 16), torch.arange(4)
    lrs = []
    for _ in range(4):
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        assert isinstance(lrs[-1], float)
        assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert lrs == sorted(lrs) and len(set(lrs)) == 4  # warming up


def _update_run(compiled: bool, backend=None, steps: int = 4, optimizer_name: str = "adamw"):
    """`steps` optimizer steps of a tiny model through ParameterUpdate (clipping, AdamW, EMA,
    warmup then cosine), the same batches either way. Returns (model, ema, lrs, counter)."""
    from swin_cli.update import EMA, ParameterUpdate

    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = make_config(*TINY_MODEL, f"optimizer={optimizer_name}", "scheduler.warmup_epochs=0.5",
                      "train.grad_clip=0.5")
    model = build_model(cfg.model, cfg.data.image_size, 1, 10)
    optimizer = build_optimizer(cfg.optimizer, model, torch.device("cpu"), compiled_step=compiled)
    scheduler = build_scheduler(cfg.scheduler, optimizer, total_steps=steps, steps_per_epoch=steps)
    ema = EMA(model, 0.9)
    counter = CompileCounterWithBackend(backend) if backend else None
    real_compile = torch.compile
    if counter is not None:
        torch.compile = lambda fn, mode=None: real_compile(fn, backend=counter)
    try:
        update = ParameterUpdate(optimizer, torch.amp.GradScaler("cpu", enabled=False), scheduler, model, 0.5, ema,
                                 compiled=compiled)
    finally:
        torch.compile = real_compile
    g = torch.Generator().manual_seed(1)
    lrs, frames = [], []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        x, y = torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
        (F.cross_entropy(model(x), y) * 10).backward()  # x10: the clipping at 0.5 bites
        update()
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        frames.append(counter.frame_count if counter else 0)
    return model, ema, lrs, frames


def test_a_compiled_update_equals_the_eager_one_and_never_recompiles_as_the_lr_moves():
    """train.compile_optimizer: clipping, AdamW and the EMA compiled give the eager update's
    weights, and the schedule's new lr every step reaches the graphs through the tensor it fills,
    not as a new constant: everything compiles in the first step and nothing recompiles. (Four
    graphs: torch.optim breaks the graph on purpose on either side of its step, so that no_grad
    holds inside it.)"""
    eager_model, eager_ema, eager_lrs, _ = _update_run(compiled=False)
    model, ema, lrs, frames = _update_run(compiled=True, backend="aot_eager", steps=4)
    assert lrs == pytest.approx(eager_lrs, rel=1e-12) and all(a != b for a, b in zip(lrs, lrs[1:]))
    assert frames[0] <= 4 and frames[0] == frames[-1], f"compiled in the first step, never again: {frames}"
    for a, b in zip(eager_model.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(eager_ema.module.parameters(), ema.module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert isinstance(model, torch.nn.Module)


@pytest.mark.slow
def test_a_compiled_update_with_inductor_on_the_cpu_equals_the_eager_one():
    """The same with the real backend: inductor's generated C++ for the foreach ops."""
    eager_model, _, _, _ = _update_run(compiled=False, steps=3)
    model, _, _, _ = _update_run(compiled=True, steps=3)
    for a, b in zip(eager_model.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_run_with_a_compiled_update_resumes_into_an_eager_one(tmp_path):
    """The lr is a tensor in a compiled run's checkpoint; an eager run resumed from it holds a
    float again, and both kinds train on."""
    from swin_cli.train import Trainer

    base = (*TINY_MODEL, "data=digits", "data.batch_size=16", "train.max_steps_per_epoch=2", "threads=1",
            "train.ema.decay=0.9")
    Trainer(make_config(*base, "epochs=1", "train.compile_optimizer=true"), tmp_path / "a").fit()
    saved = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    assert isinstance(saved["optimizer"]["param_groups"][0]["lr"], torch.Tensor)
    trainer = Trainer(make_config(*base, "epochs=2", f"resume={tmp_path / 'a' / 'last.pt'}"), tmp_path / "b")
    assert isinstance(trainer.step.optimizer.param_groups[0]["lr"], float)
    results = trainer.fit()
    assert results["epochs"] == 2 and all(isinstance(r["lr"], float) for r in trainer.history)


def test_with_cuda_graphs_every_step_is_marked_as_a_new_one(monkeypatch, tmp_path):
    """reduce-overhead replays CUDA graphs whose outputs live in memory the next replay reuses;
    torch needs each training step marked so it knows the last step's outputs are dead (without
    the mark, the second step's forward can overwrite what the first one's backward still reads)."""
    from swin_cli.train import Trainer

    marks = []
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None: fn)  # the marks, not the compiling
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    base = (*TINY_MODEL, "data=digits", "data.batch_size=16", "train.max_steps_per_epoch=3", "epochs=1", "threads=1")
    Trainer(make_config(*base, "train.compile=true", "train.compile_mode=reduce-overhead"), tmp_path / "a").fit()
    assert len(marks) == 3
    Trainer(make_config(*base, "train.compile=true"), tmp_path / "b").fit()
    assert len(marks) == 3  # other modes need no marks
