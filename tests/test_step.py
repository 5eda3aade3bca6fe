"""TrainStep: one optimizer step as the Trainer and mode=benchmark both run it, checked against
the step written out by hand; and the loss built in one place."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST, make_config

from swin_cli.augment import model_input
from swin_cli.build import build_optimizer, build_scheduler
from swin_cli.step import TrainStep, build_loss, build_train_step

CPU = torch.device("cpu")
# No augmentation and no drop path: the batch preparation is a fixed function, so the step and
# its hand-written reference see the same input and the same model.
PLAIN = (*FAST, "aug=none", "model.drop_path_rate=0")


def small_step(*overrides: str, micro_batch: int = 8) -> tuple[object, TrainStep]:
    cfg = make_config(*PLAIN, *overrides)
    torch.manual_seed(0)
    return cfg, build_train_step(cfg, CPU, 1, 10, [0.5], [0.25], micro_batch, steps_per_epoch=4, total_steps=8)


def a_batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (n,), generator=generator)


def test_the_benchmark_times_a_train_step_and_does_not_repeat_one():
    from swin_cli import benchmark
    from swin_cli.benchmark import BenchmarkRun

    cfg = make_config(*PLAIN, "train.label_smoothing=0.1", "train.grad_clip=1.0", "benchmark.batch_size=32")
    run = BenchmarkRun(cfg)
    assert type(run.step) is TrainStep
    assert run.step.micro_batch == 32 and run.step.update.grad_clip == 1.0
    assert run.step.criterion.label_smoothing == 0.1
    loss = run.train_step(0)
    assert loss.shape == () and torch.isfinite(loss)
    # benchmark.py only feeds and times the step: nothing of it is written there again.
    source = inspect.getsource(benchmark)
    for repeated in (".backward(", "zero_grad(", "GradScaler(", "build_optimizer(", "build_model(", "TrainBatch("):
        assert repeated not in source, repeated


def test_a_trainer_step_and_a_benchmark_step_are_built_alike(tmp_path):
    from swin_cli.benchmark import BenchmarkRun
    from swin_cli.train import Trainer

    cfg = make_config(*PLAIN, "train.ema.decay=0.9", "benchmark.batch_size=32")
    trainer, run = Trainer(cfg, tmp_path / "run"), BenchmarkRun(cfg)
    assert type(trainer.step) is type(run.step) is TrainStep
    for step in (trainer.step, run.step):
        assert type(step.optimizer) is torch.optim.AdamW and step.ema is not None and step.micro_batch == 32
        assert step.update.optimizer is step.optimizer and step.prepare_batch is step.prepare  # not compiled
    # The same seed builds the same weights in both.
    for name, tensor in trainer.step.model.state_dict().items():
        assert torch.equal(tensor, run.step.model.state_dict()[name]), name


def test_one_step_is_the_plain_forward_backward_and_optimizer_step():
    cfg, step = small_step("train.label_smoothing=0.1")
    reference = copy.deepcopy(step.model)
    optimizer = build_optimizer(cfg.optimizer, reference, CPU)
    scheduler = build_scheduler(cfg.scheduler, optimizer, 8, 4)
    images, labels = a_batch()

    torch.manual_seed(5)
    loss, correct = step(images, labels)
    torch.manual_seed(5)
    x, y, target = model_input(images, labels, CPU, step.prepare, False)
    logits = reference(x)
    want = F.cross_entropy(logits.float(), target, label_smoothing=0.1)
    want.backward()
    optimizer.step()
    scheduler.step()

    assert loss.shape == () and loss.dtype == torch.float32 and correct.dtype == torch.int64
    assert torch.equal(loss, want.detach()) and int(correct) == int((logits.argmax(1) == y).sum())
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, step.model.state_dict()[name]), name
    assert step.scheduler.last_epoch == scheduler.last_epoch == 1


def test_accumulated_micro_batches_give_the_whole_batch_s_loss_and_gradient():
    _, whole = small_step(micro_batch=8)
    _, split = small_step(micro_batch=3)  # 3 + 3 + 2: the last micro-batch weighs less
    images, labels = a_batch()
    whole_loss, whole_correct = whole(images, labels)
    split_loss, split_correct = split(images, labels)
    assert split_loss.item() == pytest.approx(whole_loss.item(), rel=1e-6)
    assert int(split_correct) == int(whole_correct)
    for (name, p), q in zip(whole.model.named_parameters(), split.model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_repeated_steps_on_one_batch_drive_its_loss_down():
    _, step = small_step("optimizer.lr=1e-2", "scheduler=constant")
    images, labels = a_batch(32)
    losses = [step(images, labels)[0].item() for _ in range(30)]
    assert losses[0] == pytest.approx(2.3, abs=0.1)  # ln 10: ten classes, no idea yet
    assert losses[-1] < 0.3 * losses[0]  # 0.59 when written


def test_the_loss_does_not_smooth_mixed_targets_twice():
    train = make_config("train.label_smoothing=0.2").train
    assert build_loss(train, mixing_active=False).label_smoothing == 0.2
    assert build_loss(train, mixing_active=True).label_smoothing == 0.0
    _, mixed = small_step("aug.mixup_alpha=0.2", "train.label_smoothing=0.2")
    assert mixed.prepare.mix.active and mixed.criterion.label_smoothing == 0.0
