"""What a GPU does differently from this CPU, reproduced on the CPU.

CUDA kernels return tensors in memory layouts that CPU kernels never produce (the
memory-efficient attention kernel hands back (B, heads, N, hd) with heads and tokens swapped in
memory), torch.compile traces the model with fake tensors and rejects any view a layout does not
allow, and GPUs train in bf16. Each test here would have failed on the code that crashed on an
H100 (issue 12), and none needs a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from swin_cli.model import SwinTransformer

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e

SMALL = dict(image_size=16, patch_size=2, in_chans=3, num_classes=5, embed_dim=16, depths=[2, 2],
             num_heads=[2, 4], window_size=4, drop_path_rate=0.0)


def other_layout(t: torch.Tensor) -> torch.Tensor:
    """The same values with the last-but-one and last-but-two dims swapped in memory (the
    layout CUDA's memory-efficient attention returns): still the same shape, not viewable."""
    if t.ndim < 3:
        return t
    return t.transpose(-2, -3).contiguous().transpose(-2, -3)


def relayout(fn):
    def wrapper(*args, **kwargs):
        return other_layout(fn(*args, **kwargs))
    return wrapper


def forward_backward(model: SwinTransformer, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_other_layout_keeps_values_and_breaks_views():
    t = torch.randn(2, 3, 4, 5)
    out = other_layout(t)
    assert torch.equal(out, t) and not out.is_contiguous()
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        out.view(2, 12, 5)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("attn_impl", ["sdpa", "math"])
@pytest.mark.parametrize("image_size", [16, 18])  # 18: padded maps and odd merges
def test_model_does_not_depend_on_the_layout_ops_return(monkeypatch, attn_impl, image_size, version):
    torch.manual_seed(0)
    model = SwinTransformer(**{**SMALL, "image_size": image_size, "attn_impl": attn_impl, "version": version})
    x = torch.randn(3, 3, image_size, image_size)
    want_out, want_grads = forward_backward(model, x)

    for name in ("scaled_dot_product_attention", "linear", "layer_norm", "gelu", "pad", "normalize"):
        monkeypatch.setattr(F, name, relayout(getattr(F, name)))
    monkeypatch.setattr(torch, "roll", relayout(torch.roll))
    got_out, got_grads = forward_backward(model, x)

    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-6)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_channels_last_input_gives_the_same_logits():
    torch.manual_seed(0)
    model = SwinTransformer(**{**SMALL, "stem": "conv"}).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), model(x),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", [1, 2])
def test_bf16_autocast_forward_backward_on_cpu_tracks_fp32(version):
    torch.manual_seed(0)
    model = SwinTransformer(**{**SMALL, "attn_impl": "sdpa", "version": version})
    x = torch.randn(8, 3, 16, 16)
    want_out, want_grads = forward_backward(model, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    model.zero_grad(set_to_none=True)
    out.float().square().mean().backward()
    # bf16 keeps 8 bits of mantissa: logits agree to about 1e-2 relative, gradients point the same way.
    torch.testing.assert_close(out.float(), want_out, rtol=0.05, atol=0.05)
    for name, p in model.named_parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    got = torch.cat([p.grad.flatten() for p in model.parameters()])
    ref = torch.cat([g.flatten() for g in want_grads.values()])
    assert F.cosine_similarity(got, ref, dim=0) > 0.98


def train_steps(model: SwinTransformer, forward, steps: int = 3) -> list[float]:
    """A few AdamW steps on a fixed batch; returns the losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 5
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# sdpa is the path that crashed under compile on an H100 (~50 s cold here); math is slow-only.
@pytest.mark.parametrize("attn_impl,version", [("sdpa", 1), pytest.param("math", 1, marks=pytest.mark.slow),
                                               pytest.param("sdpa", 2, marks=pytest.mark.slow)])
def test_compiled_training_steps_match_eager_on_cpu(monkeypatch, attn_impl, version):
    """torch.compile with inductor's CPU backend: the same graph capture that crashed on CUDA
    (a view the traced layout does not allow) and the same losses as eager, step after step.
    SDPA returns CUDA's layout here, so the trace sees what it sees on a GPU."""
    torch._dynamo.reset()
    monkeypatch.setattr(F, "scaled_dot_product_attention", relayout(F.scaled_dot_product_attention))
    torch.manual_seed(0)
    eager = SwinTransformer(**{**SMALL, "attn_impl": attn_impl, "stem": "conv", "version": version})
    compiled = SwinTransformer(**{**SMALL, "attn_impl": attn_impl, "stem": "conv", "version": version})
    compiled.load_state_dict(eager.state_dict())
    want = train_steps(eager, eager)
    got = train_steps(compiled, torch.compile(compiled))
    assert want[-1] < want[0]
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5, msg=name)


def test_tf32_is_on_by_default_for_cuda_and_off_by_knob(monkeypatch):
    from conftest import make_config

    from swin_cli.build import configure_device

    assert make_config().train.tf32 is True
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    before = torch.get_float32_matmul_precision()
    try:
        configure_device(torch.device("cpu"), True)
        assert torch.get_float32_matmul_precision() == before and not torch.backends.cudnn.benchmark
        configure_device(torch.device("cuda"), True)
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.benchmark
        configure_device(torch.device("cuda"), False)
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.cudnn.allow_tf32 = True


def test_prep_timer_reads_cuda_events_at_the_log_interval_not_per_step(monkeypatch):
    import time

    from swin_cli.records import PrepTimer

    class FakeEvent:  # host clock in place of the GPU's; counts the waits
        waits = 0

        def __init__(self, enable_timing: bool):
            assert enable_timing

        def record(self) -> None:
            self.at = time.perf_counter()

        def synchronize(self) -> None:
            FakeEvent.waits += 1

        def elapsed_time(self, end: "FakeEvent") -> float:
            return (end.at - self.at) * 1000.0

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    timer = PrepTimer(torch.device("cuda"))
    for _ in range(5):
        timer.start()
        time.sleep(0.01)
        timer.stop()
    assert FakeEvent.waits == 0
    assert 0.05 <= timer.collect() < 0.5 and FakeEvent.waits == 1
    assert timer.collect() == 0.0 and FakeEvent.waits == 1


@pytest.mark.parametrize("preset", ["strong", "small_data"])
@pytest.mark.parametrize("warm", [False, True], ids=["first_call_compiled", "after_an_eager_call"])
def test_the_training_batch_pipeline_compiles_to_one_graph(preset, warm):
    """train.compile=true compiles the augmentation too: one graph, no breaks (a break would
    mean a host round trip and the small launches compiling is meant to fuse away), whether
    compilation meets the pipeline on its first call (a compiled run) or after an eager one
    placed its lookup tables; for aug=strong (TrivialAugment) and aug=small_data (AutoAugment)."""
    from conftest import make_config

    from swin_cli.augment import TrainBatch

    prepare = TrainBatch(make_config(f"aug={preset}").aug, 10, 0.1, [0.5] * 3, [0.25] * 3, torch.device("cpu"))
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,))
    if warm:
        prepare(images, labels)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(prepare)(images, labels)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


# Ops that read a tensor's value back to the host: on a GPU each one waits for the queue to drain.
HOST_READS = {"_local_scalar_dense", "item", "nonzero", "unique", "_unique2", "unique_consecutive", "equal",
              "masked_select", "is_nonzero", "boolean mask indexing"}


def _recording_trainer(monkeypatch, tmp_path, *overrides: str):
    """A Trainer over digits with the whole regularisation on and the optimizer CUDA gets (fused
    AdamW, or the compiled step's capturable one), run on the CPU; and its first 16 images."""
    from conftest import TINY_MODEL, make_config

    import swin_cli.step as step_module
    import swin_cli.train as train_module
    from swin_cli.build import build_optimizer

    monkeypatch.setattr(step_module, "build_optimizer",
                        lambda opt_cfg, model, device, compiled_step=False:
                        build_optimizer(opt_cfg, model, torch.device("cuda"), compiled_step))
    cfg = make_config(*TINY_MODEL, "data=digits", "data.batch_size=16", "threads=1", "aug=small_data",
                      "aug.hflip=false", "train.label_smoothing=0.1", "model.drop_path_rate=0.1",
                      "train.grad_clip=1.0", "train.ema.decay=0.99", *overrides)
    trainer = train_module.Trainer(cfg, tmp_path)
    return trainer, trainer.data.train.images[:16], trainer.data.train.labels[:16]


def test_a_training_step_never_reads_a_value_back_to_the_host(monkeypatch, tmp_path):
    """One whole optimizer step as a run does it (uint8 batch in, AutoAugment, erasing, mixing,
    forward with drop path, loss, backward, gradient clipping, fused AdamW, EMA, the schedule),
    its aten ops recorded: none of them reads a value back, so on a GPU the host queues step
    after step without waiting for any."""
    from torch.utils._python_dispatch import TorchDispatchMode

    trainer, images, labels = _recording_trainer(monkeypatch, tmp_path)
    trainer.step(images, labels)  # the first step creates the optimizer state

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            # Indexing by a boolean mask counts its True values on the host inside the kernel.
            if name in ("index", "index_put", "index_put_") and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())):
                name = "boolean mask indexing"
            self.ops.add(name)
            return func(*args, **(kwargs or {}))

    with Record() as record:
        loss, _ = trainer.step(images, labels)
    assert {"_fused_adamw_", "_foreach_lerp_", "_foreach_norm"} <= record.ops, sorted(record.ops)
    assert not HOST_READS & record.ops, HOST_READS & record.ops
    assert torch.isfinite(loss)


def test_the_compiled_update_reads_nothing_back_either(monkeypatch, tmp_path):
    """train.compile_optimizer: the graphs of clipping, the capturable AdamW step and the EMA hold
    no op that reads a value back (an .item() would also have broken the graph, which the
    frame count in test_compile.py would see)."""
    from torch._dynamo.backends.common import aot_autograd

    seen: set[str] = set()

    def record(gm, example_inputs):
        for node in gm.graph.nodes:
            if node.op == "call_function" and hasattr(node.target, "overloadpacket"):
                seen.add(node.target.overloadpacket.__name__)
        return gm

    real_compile = torch.compile
    backend = aot_autograd(fw_compiler=record)
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None: real_compile(fn, backend=backend))
    torch._dynamo.reset()
    trainer, images, labels = _recording_trainer(monkeypatch, tmp_path, "train.compile_optimizer=true")
    for _ in range(2):
        loss, _ = trainer.step(images, labels)
    assert {"lerp", "sqrt"} <= seen or {"_foreach_lerp", "_foreach_sqrt"} <= seen, sorted(seen)
    assert not HOST_READS & seen, HOST_READS & seen
    assert torch.isfinite(loss)
