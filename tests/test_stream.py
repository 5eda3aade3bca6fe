"""Stream storage: the same batches whatever the worker count, exact resume, disjoint ranks,
unreadable files under a running loader, a dead worker, and which storage auto picks."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, IndexedImages, make_config, run_cli
from PIL import Image

from swin_cli import checkpoint
from swin_cli.data import EpochPlan, ImageSplit, LoaderDied, StreamSplit, epoch_order, load_data
from swin_cli.data.transforms import RandomResizedCrop
from swin_cli.interrupt import TrainingInterrupted
from swin_cli.train import Trainer

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e


def photo_folder(root: Path, per_class: int = 10, classes=("cat", "dog"), test_split: str = "test") -> Path:
    """JPEGs of mixed sizes and aspect ratios, with class-dependent content."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), (test_split, per_class // 2)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = int(rng.integers(24, 72)), int(rng.integers(24, 72))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) // (2 * label + 1)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def stream_config(root: Path, tmp_path: Path, *extra: str):
    return make_config(*TINY_MODEL, "data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                       "data.storage=stream", "data.train_crop=random_resized", "data.batch_size=4",
                       "data.val_fraction=0.2", "threads=1", *extra)


def all_batches(split, plan):
    return [(x.clone(), y.clone()) for x, y in split.train_batches(plan)]


def test_stream_batches_do_not_depend_on_the_worker_count(tmp_path):
    root = photo_folder(tmp_path / "imgs")
    plan = EpochPlan(seed=3, epoch=1, rank_images=4, steps=4)
    runs = {}
    for workers in (0, 2):
        data = load_data(stream_config(root, tmp_path, f"data.workers={workers}").data)
        assert data.storage == "stream" and isinstance(data.train, StreamSplit)
        runs[workers] = (all_batches(data.train, plan), list(data.test.eval_batches(3)), data.mean)
    (train0, test0, mean0), (train2, test2, mean2) = runs[0], runs[2]
    assert len(train0) == 4 and train0[0][0].shape == (4, 3, 16, 16) and train0[0][0].dtype == torch.uint8
    for (x0, y0), (x2, y2) in zip(train0 + test0, train2 + test2):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert mean0 == mean2
    # Another epoch crops the same images differently.
    other = all_batches(load_data(stream_config(root, tmp_path, "data.workers=0").data).train,
                        EpochPlan(seed=3, epoch=2, rank_images=4, steps=4))
    assert not torch.equal(other[0][0], train0[0][0])


def test_ranks_read_disjoint_parts_that_cover_the_epoch():
    n, world, rank_images = 40, 2, 5
    steps = n // (rank_images * world)
    labels = torch.arange(n)  # a label is the sample's own index
    memory = ImageSplit(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), labels)

    stream = StreamSplit(IndexedImages(n), RandomResizedCrop(4, 1), channels=1, workers=0, prefetch=1)
    for split in (memory, stream):
        seen = [torch.cat([y for _, y in split.train_batches(EpochPlan(5, 0, rank_images, steps, 0, rank, world))])
                for rank in range(world)]
        assert not set(seen[0].tolist()) & set(seen[1].tolist())
        assert sorted(torch.cat(seen).tolist()) == list(range(n))
        assert sorted(epoch_order(n, 5, 0).tolist()) == list(range(n))


def test_stream_resume_mid_epoch_is_exact(tmp_path):
    root = photo_folder(tmp_path / "imgs")
    cfg = lambda *extra: stream_config(root, tmp_path, "epochs=2", "data.workers=1", *extra)  # noqa: E731
    whole = Trainer(cfg(), tmp_path / "whole")
    whole.fit()
    first = Trainer(cfg(), tmp_path / "first")
    first.on_step = lambda t: signal.raise_signal(signal.SIGTERM) if t.global_step == 3 else None
    with pytest.raises(TrainingInterrupted):
        first.fit()
    assert checkpoint.load(tmp_path / "first")["global_step"] == 3
    second = Trainer(cfg(f"resume={tmp_path / 'first'}"), tmp_path / "second")
    second.fit()
    timing = ("epoch_time_s", "data_time_s", "train_img_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in second.history] == \
        [{k: v for k, v in r.items() if k not in timing} for r in whole.history]
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name


def test_files_corrupted_or_deleted_under_a_running_loader_are_skipped_and_named(tmp_path, caplog):
    root = photo_folder(tmp_path / "imgs", per_class=12)
    data = load_data(stream_config(root, tmp_path, "data.workers=2", "data.prefetch=1", "data.val_fraction=0").data)
    train = data.train
    order = epoch_order(len(train), 0, 0).tolist()
    plan = EpochPlan(seed=0, epoch=0, rank_images=4, steps=len(train) // 4)
    batches = train.train_batches(plan)
    first = next(batches)
    # Samples the loader has not reached yet (workers prefetch at most 2 batches ahead).
    corrupt, deleted = train.samples.paths[order[-1]], train.samples.paths[order[-3]]
    Path(corrupt).write_bytes(Path(corrupt).read_bytes()[:40])  # truncated
    os.remove(deleted)
    rest = list(batches)
    assert [len(y) for _, y in [first, *rest]] == [4] * plan.steps  # batches keep their size
    assert set(train.skipped) == {corrupt, deleted}
    assert "skipped an unreadable image" in caplog.text and Path(deleted).name in caplog.text


def test_a_dead_worker_stops_the_run_with_one_line_and_a_resumable_checkpoint(tmp_path):
    root = photo_folder(tmp_path / "imgs", per_class=16)
    cfg = stream_config(root, tmp_path, "epochs=1", "data.workers=2", "data.prefetch=1")
    trainer = Trainer(cfg, tmp_path / "run")

    def kill_a_worker(t: Trainer) -> None:
        if t.global_step == 2:
            os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)

    trainer.on_step = kill_a_worker
    with pytest.raises(LoaderDied) as info:
        trainer.fit()
    message = str(info.value)
    assert "data loader worker" in message and "resume with:" in message and "\n" not in message
    saved = checkpoint.load(tmp_path / "run" / "last.pt")
    assert 2 <= saved["global_step"] < trainer.steps_per_epoch


class _OneWorkerDies(torch.utils.data.IterableDataset):
    """Worker 0 exits after its first item, as a killed one does, without a word; worker 1 would
    go on for ever."""

    def __iter__(self):
        yield torch.zeros(1)
        if torch.utils.data.get_worker_info().id == 0:
            os._exit(1)
        while True:
            yield torch.zeros(1)


def test_both_streams_share_one_dead_worker_path_that_shuts_the_workers_down():
    from swin_cli.data.loader import read_loader, worker_loader

    loader = worker_loader(_OneWorkerDies(), workers=2, prefetch=1, batch_size=None)
    items = read_loader(loader)
    with pytest.raises(LoaderDied) as info:
        list(items)
    message = str(info.value)
    assert message.startswith("a data loader worker died (")
    assert "try fewer data.workers or a smaller data.prefetch" in message
    # The surviving worker is shut down at once, though the traceback keeps the loader alive.
    assert "\n" not in message and not multiprocessing.active_children()


@pytest.mark.parametrize("extra, storage, reason", [
    (("data.image_size=32",), "memory", "within data.memory_budget_gb"),
    (("data.image_size=32", "data.memory_budget_gb=0"), "stream", "over data.memory_budget_gb"),
    (("data.image_size=96",), "stream", "random resized crop reads each image at its own resolution"),
])
def test_auto_storage_says_what_it_chose_and_why(tmp_path, extra, storage, reason):
    root = photo_folder(tmp_path / "imgs", per_class=4)
    cfg = make_config("data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", *extra)
    data = load_data(cfg.data)
    assert data.storage == storage and reason in data.storage_reason
    from swin_cli.summary import storage_text

    assert storage_text(cfg.data, data).startswith(f"{storage} (")


def test_stream_run_end_to_end_and_swin_eval_gives_its_test_accuracy(tmp_path):
    root = photo_folder(tmp_path / "imgs")
    run_dir = tmp_path / "run"
    common = [*TINY_MODEL, "data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
              "data.batch_size=4", "threads=1"]
    proc = run_cli(*common, "data.storage=stream", "data.train_crop=random_resized", "data.workers=1", "epochs=1",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stream (data.storage=stream" in proc.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["storage"] == "stream" and results["data_root"] == str(root)
    # swin-eval takes the data config stored in the checkpoint (not the default data=digits).
    evaluated = run_cli("mode=eval", f"ckpt={run_dir}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    scored = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert scored["data"] == "imagefolder" and scored["data_root"] == str(root)
    assert scored["acc"] == pytest.approx(results["test_acc"]) and scored["images"] == 10
    assert f"of data=imagefolder ({root})" in evaluated.stdout + evaluated.stderr


@pytest.mark.parametrize("override, message", [
    ("data.crop_pct=0", "data.crop_pct must be in (0, 1]"),
    ("data.crop_pct=1.5", "data.crop_pct must be in (0, 1]"),
    ("data.crop_scale=[0.9,0.2]", "data.crop_scale must be [low, high]"),
    ("data.crop_ratio=[2,1]", "data.crop_ratio must be [low, high]"),
    ("data.repeats=0", "data.repeats must be >= 1"),
])
def test_bad_crop_settings_are_one_line(override, message):
    from swin_cli.config import ConfigError, validate

    cfg = make_config("data=imagefolder", "data.root=/x", override)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        validate(cfg)


@pytest.mark.slow
def test_imagenet_recipe_runs_end_to_end_on_a_made_folder(tmp_path):
    root = photo_folder(tmp_path / "imagenet", per_class=6, classes=("n01", "n02", "n03"), test_split="val")
    run_dir = tmp_path / "run"
    proc = run_cli("experiment=imagenet_swin_t", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                   "data.batch_size=2", "data.eval_batch_size=4", "data.workers=1", "epochs=1",
                   "train.max_steps_per_epoch=2", "threads=2", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["storage"] == "stream" and results["test_split"] == "val" and results["steps"] == 2
    assert "random resized crop, scale 0.08-1; eval: centre crop 0.875" in proc.stdout
    assert "preparing a copy" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_torchrun_two_processes_stream_the_whole_split_between_them(tmp_path):
    import subprocess
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    root = photo_folder(tmp_path / "imgs", per_class=16)
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "swin_cli", *TINY_MODEL,
                           "data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                           "data.storage=stream", "data.train_crop=random_resized", "data.batch_size=4",
                           "data.workers=1", "data.val_fraction=0", "epochs=1", "threads=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((tmp_path / "outputs").glob("*/*/results.json")).read_text())
    # 32 training images, 4 per process per step on 2 processes: 4 steps cover the split once.
    assert results["processes"] == 2 and results["steps"] == 4 and results["storage"] == "stream"
    assert sum(map(sum, results["test_confusion"])) == 16  # the whole test split, summed over ranks


def test_repeated_augmentation_keeps_the_epoch_and_crops_each_copy_anew(tmp_path):
    n, k = 10, 3
    plan = EpochPlan(seed=1, epoch=0, rank_images=5, steps=2, repeats=k)
    order = plan.order(n).tolist()
    assert len(order) == n and len(set(order)) == 4  # ceil(10 / 3) images
    assert all(order[p] == order[p - p % k] for p in range(n))  # copies in a row
    assert order[:k] == [order[0]] * k and order[::k] == plan.order(n).tolist()[::k]
    # The same images in each run; in a stream, each copy is a different crop of the same file.
    root = photo_folder(tmp_path / "imgs")
    data = load_data(stream_config(root, tmp_path, "data.workers=0", "data.val_fraction=0").data)
    first = next(data.train.train_batches(EpochPlan(seed=1, epoch=0, rank_images=6, steps=1, repeats=k)))
    images, labels = first
    assert len(set(labels[:k].tolist())) == 1
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])
    # Under DDP the ranks still split each step's images and together cover the repeated order.
    seen = [torch.cat([y for _, y in ImageSplit(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n))
                       .train_batches(EpochPlan(1, 0, 5, 1, 0, rank, 2, repeats=k))]) for rank in range(2)]
    assert torch.cat(seen).tolist() == order
