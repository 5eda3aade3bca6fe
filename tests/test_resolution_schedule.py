"""Progressive resizing (train.resolution_schedule): the side per epoch, its one-line config
errors, training at the scheduled sides in both storages, exact resume mid-ramp, one compiled
graph per side."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, TINY_MODEL, make_config
from omegaconf import OmegaConf
from PIL import Image

from swin_cli import checkpoint
from swin_cli.config import ConfigError, validate
from swin_cli.data import EpochPlan, load_data
from swin_cli.records import TIMING_FIELDS, epoch_line
from swin_cli.resolution import ResolutionSchedule, at_size, epoch_shapes, schedule_problem

RAMP = "train.resolution_schedule"


def comparable(history):
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in history]


def training_sides(trainer) -> list[tuple[int, tuple[int, ...]]]:
    """(epoch, input shape) of every training forward pass the trainer's model makes from now on."""
    seen: list[tuple[int, tuple[int, ...]]] = []
    trainer.model.register_forward_pre_hook(
        lambda module, args: seen.append((trainer.epoch, tuple(args[0].shape))) if module.training else None)
    return seen


# ------------------------------------------------------------------------- the schedule


def test_the_side_ramps_linearly_rounded_down_to_the_step():
    ramp = ResolutionSchedule(start=32, end=64, start_epoch=0, end_epoch=7, step=8)
    assert ramp.sizes(10) == [32, 32, 40, 40, 48, 48, 56, 64, 64, 64]
    coarse = ResolutionSchedule(start=32, end=64, start_epoch=0, end_epoch=7, step=16)
    assert coarse.sizes(10) == [32, 32, 32, 32, 48, 48, 48, 64, 64, 64]
    # Flat until start_epoch, then down to a step (176 -> 160, 208 -> 192).
    late = ResolutionSchedule(start=160, end=224, start_epoch=2, end_epoch=6, step=32)
    assert late.sizes(8) == [160, 160, 160, 160, 192, 192, 224, 224]
    # A point exactly on a step is on it (floating point must not drop it a step).
    assert ResolutionSchedule(start=8, end=16, start_epoch=0, end_epoch=2, step=4).sizes(3) == [8, 12, 16]
    assert ramp.describe(10) == "32 -> 64 px: 32 px (epochs 1-2), 40 px (epochs 3-4), 48 px (epochs 5-6), " \
                                "56 px (epoch 7), 64 px (epochs 8-10)"


def test_the_config_gives_the_schedule_with_the_models_step_and_the_eval_side_as_end():
    cfg = make_config(*FAST, "epochs=10", f"{RAMP}.start=8")  # patch 2, 2 stages: sides step by 4
    ramp = ResolutionSchedule.from_config(cfg)
    assert ramp == ResolutionSchedule(start=8, end=16, start_epoch=0, end_epoch=7, step=4, full=(16, 16), unit=4)
    assert ResolutionSchedule.from_config(make_config(*FAST)) is None
    shapes = epoch_shapes(cfg, ramp, batch=32, steps=4, train_size=1000)
    assert [s.size for s in shapes] == [8, 8, 8, 8, 12, 12, 12, 16, 16, 16]
    assert {(s.batch, s.steps) for s in shapes} == {(32, 4)}
    # scale_batch: the pixels of a full-size batch, so fewer steps for the same images.
    scaled = epoch_shapes(make_config(*FAST, "epochs=10", f"{RAMP}.start=8", f"{RAMP}.scale_batch=true",
                                      "train.max_steps_per_epoch=null"), ramp, batch=32, steps=31, train_size=1000)
    assert [(s.batch, s.steps) for s in scaled][::3] == [(128, 7), (128, 7), (56, 17), (32, 31)]


@pytest.mark.parametrize("overrides, message", [
    ((f"{RAMP}.start=5",), f"{RAMP}.start=5 is not divisible by model.patch_size=2"),
    ((f"{RAMP}.start=6",), f"{RAMP}.start=6 does not fit the model: sides must be multiples of 4 "
                           "(model.patch_size=2 x 2^1 patch mergings), e.g. 4 or 8"),
    ((f"{RAMP}.start=8", f"{RAMP}.step=2"), f"{RAMP}.step=2 does not fit the model"),
    ((f"{RAMP}.start=8", f"{RAMP}.end=10"), f"{RAMP}.end=10 does not fit the model"),
    ((f"{RAMP}.start=24",), f"{RAMP}.start=24 must be <= data.image_size=16"),
    ((f"{RAMP}.start=8", f"{RAMP}.end_fraction=0"), f"{RAMP}.end_fraction must be in (0, 1] (got 0"),
    ((f"{RAMP}.start=8", f"{RAMP}.start_epoch=-1"), f"{RAMP}.start_epoch must be >= 0 (got -1)"),
    ((f"{RAMP}.start=8", "epochs=4", f"{RAMP}.start_epoch=3"),
     f"{RAMP}.end_fraction=0.7 of epochs=4: the ramp would end at epoch 3, not after {RAMP}.start_epoch=3"),
])
def test_bad_schedules_fail_at_start_in_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as raised:
        validate(make_config(*TINY_MODEL, *overrides))
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_box_ramps_its_shorter_side_and_keeps_its_shape():
    """For data.image_size=[H, W] the side is the shorter one; the longer keeps the aspect ratio,
    rounded down to the model's unit, and the last epochs train at the box itself."""
    wide = ResolutionSchedule(start=8, end=16, start_epoch=0, end_epoch=2, step=4, full=(16, 24), unit=4)
    assert wide.sizes(3) == [(8, 12), (12, 16), (16, 24)]  # 12 x 1.5 = 18, down to 16
    tall = ResolutionSchedule(start=8, end=16, start_epoch=0, end_epoch=2, step=4, full=(32, 16), unit=4)
    assert tall.sizes(3) == [(16, 8), (24, 12), (32, 16)]
    assert wide.describe(3) == "8x12 -> 16x24 px: 8x12 px (epoch 1), 12x16 px (epoch 2), 16x24 px (epoch 3)"
    assert at_size(torch.zeros(2, 3, 16, 24, dtype=torch.uint8), (8, 12)).shape == (2, 3, 8, 12)

    base = {"model": {"patch_size": 2, "depths": [1, 1]}, "epochs": 10,
            "train": {"resolution_schedule": {"start": 8, "end": None, "start_epoch": 0, "end_fraction": 0.7,
                                              "step": None, "scale_batch": False}}}
    assert schedule_problem(OmegaConf.create({**base, "data": {"image_size": [16, 32]}})) is None
    too_large = OmegaConf.merge(base, {"data": {"image_size": [32, 4]}})
    assert schedule_problem(too_large) == f"{RAMP}.start=8 must be <= data.image_size's shorter side=4, " \
                                          "the side the ramp ends at"
    assert schedule_problem(OmegaConf.create({**base, "data": {"image_size": None}})) is None


def test_a_memory_batch_is_resized_and_a_stream_crops_at_the_side_in_its_workers(tmp_path):
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert at_size(images, 16) is images and at_size(images, None) is images
    small = at_size(images, 8)
    assert small.shape == (2, 3, 8, 8) and small.dtype == torch.uint8
    # A flat image stays flat: the filter is a weighted mean, rounded back.
    assert torch.equal(at_size(torch.full((1, 1, 16, 16), 77, dtype=torch.uint8), 8),
                       torch.full((1, 1, 8, 8), 77, dtype=torch.uint8))

    root = _photo_folder(tmp_path / "imgs")
    data = load_data(_stream_config(root, tmp_path, "data.workers=1").data)
    plan = EpochPlan(seed=3, epoch=1, rank_images=4, steps=2, size=8)
    streamed = [x for x, _ in data.train.train_batches(plan)]
    assert [x.shape for x in streamed] == [(4, 3, 8, 8)] * 2
    # The crops a run at data.image_size=8 makes, not 16 px crops shrunk afterwards.
    at_eight = load_data(_stream_config(root, tmp_path, "data.workers=1", "data.image_size=8").data)
    direct = [x for x, _ in at_eight.train.train_batches(EpochPlan(seed=3, epoch=1, rank_images=4, steps=2))]
    assert all(torch.equal(a, b) for a, b in zip(streamed, direct))


# ------------------------------------------------------------------------- runs

@pytest.mark.e2e
def test_a_memory_run_trains_at_the_scheduled_sides_and_evaluates_at_full_size(tmp_path):
    from swin_cli.train import Trainer

    cfg = make_config(*FAST, "epochs=3", f"{RAMP}.start=8", f"{RAMP}.end_fraction=0.67")
    trainer = Trainer(cfg, tmp_path)
    seen = training_sides(trainer)
    evaluated: list[tuple[int, ...]] = []
    trainer.model.register_forward_pre_hook(
        lambda module, args: None if module.training else evaluated.append(tuple(args[0].shape[-2:])))
    trainer.fit()
    assert sorted({(epoch, shape[-1]) for epoch, shape in seen}) == [(0, 8), (1, 12), (2, 16)]
    assert len(seen) == 12 and {shape[0] for _, shape in seen} == {32}
    assert evaluated and set(evaluated) == {(16, 16)}
    assert [row["train_size"] for row in trainer.history] == [8, 12, 16]
    assert "| size 12" in epoch_line(trainer.history[1], 3)
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 4  # same columns, no train_size


@pytest.mark.e2e
def test_scale_batch_keeps_the_pixels_per_batch_and_the_images_per_epoch(tmp_path):
    from swin_cli.train import Trainer

    cfg = make_config(*FAST, "epochs=2", f"{RAMP}.start=8", f"{RAMP}.end_fraction=0.5", f"{RAMP}.scale_batch=true",
                      "train.max_steps_per_epoch=null", "data.batch_size=64")
    trainer = Trainer(cfg, tmp_path)
    seen = training_sides(trainer)
    trainer.fit()
    per_epoch = {epoch: [shape for e, shape in seen if e == epoch] for epoch in (0, 1)}
    assert set(per_epoch[0]) == {(256, 1, 8, 8)} and set(per_epoch[1]) == {(64, 1, 16, 16)}
    n = len(trainer.data.train)
    assert len(per_epoch[0]) == n // 256 and len(per_epoch[1]) == n // 64
    assert trainer.global_step == trainer.total_steps == sum(s.steps for s in trainer.shapes)


@pytest.mark.e2e
@pytest.mark.parametrize("size, sides", [("16", [(8, 8), (16, 16)]), ("[24,16]", [(12, 8), (24, 16)])],
                         ids=["square", "box"])
def test_a_stream_run_trains_at_the_scheduled_sides(tmp_path, size, sides):
    from swin_cli.train import Trainer

    root = _photo_folder(tmp_path / "imgs")
    cfg = _stream_config(root, tmp_path, "epochs=2", "data.workers=1", f"{RAMP}.start=8", f"{RAMP}.end_fraction=0.5",
                         f"data.image_size={size}")
    trainer = Trainer(cfg, tmp_path / "run")
    seen = training_sides(trainer)
    trainer.fit()
    assert sorted({(epoch, shape[-2:]) for epoch, shape in seen}) == list(enumerate(sides))


@pytest.mark.e2e
def test_a_memory_run_ramps_a_box(tmp_path):
    from swin_cli.train import Trainer

    cfg = make_config(*FAST, "epochs=3", "data.image_size=[16,24]", f"{RAMP}.start=8", f"{RAMP}.end_fraction=0.67")
    trainer = Trainer(cfg, tmp_path)
    seen = training_sides(trainer)
    trainer.fit()
    assert sorted({(epoch, shape[-2:]) for epoch, shape in seen}) == [(0, (8, 12)), (1, (12, 16)), (2, (16, 24))]
    assert [row["train_size"] for row in trainer.history] == [[8, 12], [12, 16], [16, 24]]
    assert "| size 12x16" in epoch_line(trainer.history[1], 3)


@pytest.mark.e2e
@pytest.mark.parametrize("stop_step", [5, 6], ids=["epoch-boundary-mid-ramp", "mid-epoch-mid-ramp"])
def test_resume_mid_ramp_trains_the_same_sides_and_ends_the_same(tmp_path, stop_step):
    from swin_cli.interrupt import TrainingInterrupted
    from swin_cli.train import Trainer

    def config(*extra):
        return make_config(*FAST, "epochs=4", f"{RAMP}.start=8", f"{RAMP}.end_fraction=0.75",
                           "train.max_steps_per_epoch=5", *extra)

    whole = Trainer(config(), tmp_path / "whole")
    whole.fit()
    assert [row["train_size"] for row in whole.history] == [8, 8, 12, 16]

    first = Trainer(config(), tmp_path / "first")
    first.on_step = lambda t: signal.raise_signal(signal.SIGTERM) if t.global_step == stop_step else None
    with pytest.raises(TrainingInterrupted):
        first.fit()
    assert checkpoint.load(tmp_path / "first")["global_step"] == stop_step

    second = Trainer(config(f"resume={tmp_path / 'first'}"), tmp_path / "second")
    seen = training_sides(second)
    second.fit()
    assert seen[0] == (1, (32, 1, 8, 8))
    assert comparable(second.history) == comparable(whole.history)
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name


@pytest.mark.e2e
def test_a_compiled_run_compiles_one_graph_per_side(compile_counters, tmp_path):
    """Three sides: the model and the batch pipeline each compile three static graphs (not a
    dynamic one after the second side), and never again within a side."""
    from swin_cli.train import Trainer

    counters = compile_counters
    cfg = make_config(*FAST, "aug=small_data", "aug.hflip=false", "data.batch_size=16", "train.max_steps_per_epoch=2",
                      "epochs=4", "train.compile=true", f"{RAMP}.start=8", f"{RAMP}.end_fraction=0.5")
    frames: list[list[int]] = []
    trainer = Trainer(cfg, tmp_path, on_step=lambda t: frames.append([c.frame_count for c in counters]))
    trainer.fit()
    assert [row["train_size"] for row in trainer.history] == [8, 12, 16, 16]
    assert len(counters) == 2
    assert frames[1] == frames[0] == [1, 1]  # a side's second step reuses its graph
    assert frames[-1] == [3, 3]


# ------------------------------------------------------------------------- helpers


def _photo_folder(root: Path, per_class: int = 16) -> Path:
    """JPEGs of mixed sizes, two classes of different brightness, with a test split."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", per_class // 2)):
        for label, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = int(rng.integers(24, 72)), int(rng.integers(24, 72))
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8) // (2 * label + 1)).save(
                    folder / f"{i}.jpg", quality=90)
    return root


def _stream_config(root: Path, tmp_path: Path, *extra: str):
    return make_config(*TINY_MODEL, "data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                       "data.storage=stream", "data.train_crop=random_resized", "data.batch_size=4",
                       "data.val_fraction=0.2", "threads=1", *extra)
