"""What the data decides (issue 29): data.image_size=null takes the images' own size, aug=auto
fits the images and the crop, and data.layout=classes splits a root/<class>/ folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, make_config, run_cli
from PIL import Image

from swin_cli.config import ConfigError
from swin_cli.data import DataError, load_data


def settle_auto(cfg, run_dir=None):
    # Imported when called, so that the tests of behaviour older code lacked fail one by one there.
    from swin_cli.data.auto import settle_auto

    return settle_auto(cfg, run_dir)


def own_size(sides, patch_size, stages):
    from swin_cli.data.auto import own_size

    return own_size(sides, patch_size, stages)


def write_images(folder: Path, count: int, sizes=((64, 64),), mode="RGB", seed=0) -> None:
    """`count` images in `folder`, their (width, height)s taken in turn from `sizes`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i:03d}.png")


def split_folder(root: Path, classes=("cat", "dog"), per_class=4, **kwargs) -> Path:
    for split in ("train", "test"):
        for name in classes:
            write_images(root / split / name, per_class, **kwargs)
    return root


def class_folder(root: Path, counts=(10, 20), **kwargs) -> Path:
    for label, count in enumerate(counts):
        write_images(root / f"class{label}", count, seed=label, **kwargs)
    return root


def folder_cfg(root: Path, tmp_path: Path, *extra: str):
    return make_config("data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", *extra)


# ------------------------------------------------------------------ item 2: the image size


def test_null_image_size_takes_the_files_own_size_and_says_why(tmp_path):
    cfg = folder_cfg(split_folder(tmp_path / "imgs"), tmp_path, "model=tiny")
    assert cfg.data.image_size is None
    settled = settle_auto(cfg)
    assert cfg.data.image_size == 64
    assert "64 px" in settled.notes["size"] and "64x64" in settled.notes["size"]


def test_mixed_sizes_take_the_median_shorter_side_within_the_model_s_range():
    assert own_size([(50, 40), (64, 80), (100, 90)], patch_size=2, stages=3) == (
        64, "the median shorter side of 3 files looked at (40-90 px)")
    size, why = own_size([(1000, 800)] * 3, patch_size=4, stages=4)
    assert size == 384 and "800 px brought to 384" in why
    size, why = own_size([(8, 8)], patch_size=4, stages=4)  # tiny images: every stage keeps a token
    assert size == 32 and "the model's smallest" in why
    assert own_size([(30, 30)], patch_size=4, stages=1)[0] == 28  # a multiple of the patch


def test_an_explicit_size_far_from_the_files_is_said_in_one_line(tmp_path, caplog):
    root = split_folder(tmp_path / "imgs")
    with caplog.at_level(logging.WARNING, logger="swin_cli"):
        settle_auto(folder_cfg(root, tmp_path, "data.image_size=16"))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "data.image_size=16" in warned[0] and "down 4.0x" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="swin_cli"):
        cfg = folder_cfg(root, tmp_path, "data.image_size=48")
        settle_auto(cfg)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING] and cfg.data.image_size == 48


def test_checks_that_need_the_size_run_again_on_the_settled_one(tmp_path):
    cfg = folder_cfg(split_folder(tmp_path / "imgs"), tmp_path, "data.prepare_side=40")
    with pytest.raises(ConfigError, match=r"data.prepare_side must be >= data.image_size=64"):
        settle_auto(cfg)


def test_load_data_alone_settles_a_null_size(tmp_path):
    cfg = folder_cfg(split_folder(tmp_path / "imgs", sizes=((40, 40),)), tmp_path)
    data = load_data(cfg.data)
    assert cfg.data.image_size == 40 and data.train.images.shape[-1] == 40 and "40 px" in data.settled["size"]


# ------------------------------------------------------------ item 3: the augmentation default


@pytest.mark.parametrize("sizes, mode, extra, expected", [
    (((64, 64),), "RGB", (), (4, True)),  # small RGB: pad-crop and flip
    (((96, 96),), "RGB", (), (0, True)),  # random resized crop: flip only
    (((64, 64),), "L", (), (0, False)),  # single-channel: no flip (as the digits)
    (((96, 96),), "L", (), (0, False)),
    (((64, 64),), "L", ("aug=basic",), (4, True)),  # an explicit aug= wins
])
def test_aug_auto_follows_the_data_and_the_crop(tmp_path, sizes, mode, extra, expected):
    cfg = folder_cfg(split_folder(tmp_path / "imgs", sizes=sizes, mode=mode), tmp_path, *extra)
    settled = settle_auto(cfg)
    assert (cfg.aug.crop_padding, cfg.aug.hflip) == expected
    assert ("aug" in settled.notes) == (not extra)


def test_aug_auto_is_the_default_and_recipes_keep_theirs():
    assert make_config().aug.name == "auto"
    assert make_config("experiment=cifar10_nano").aug.name == "none"
    assert make_config("experiment=finetune").aug.name == "basic"


# ------------------------------------------------------------------ item 4: class folders


def test_layout_classes_splits_each_class_seeded_and_stratified(tmp_path):
    root = class_folder(tmp_path / "imgs", counts=(10, 20))
    cfg = folder_cfg(root, tmp_path, "data.layout=classes", "data.val_fraction=0.2", "data.test_fraction=0.3",
                     "data.image_size=16")
    data = load_data(cfg.data)
    assert data.classes == ["class0", "class1"]
    # per class: test 3 / 6, val 2 / 4, train the rest
    assert sorted(data.test.labels.tolist()) == [0] * 3 + [1] * 6
    assert sorted(data.val.labels.tolist()) == [0] * 2 + [1] * 4
    assert sorted(data.train.labels.tolist()) == [0] * 5 + [1] * 10
    again = load_data(cfg.data)
    assert (again.test.images == data.test.images).all()
    cfg.data.split_seed = 1
    assert not (load_data(cfg.data).test.images == data.test.images).all()


def test_the_split_is_written_to_the_run_dir_and_reused(tmp_path):
    root = class_folder(tmp_path / "imgs", counts=(6, 6))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = folder_cfg(root, tmp_path, "data.layout=classes", "data.test_fraction=0.5", "data.image_size=16")
    settled = settle_auto(cfg, run_dir)
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["test"]) == 6 and len(split["train"]) + len(split["val"]) == 6
    assert not set(split["test"]) & set(split["train"]) and "data.split_file=" in settled.notes["split"]
    reuse = folder_cfg(root, tmp_path, "data.layout=classes", f"data.split_file={run_dir / 'split.json'}",
                       "data.split_seed=7", "data.storage=stream", "data.image_size=16")
    source = settle_auto(reuse).source
    assert [Path(p).relative_to(root).as_posix() for p in source.test.paths] == split["test"]
    assert len(load_data(reuse.data, statistics=False).test) == 6  # and it streams


def test_a_folder_without_train_suggests_layout_classes(tmp_path):
    root = class_folder(tmp_path / "imgs", counts=(2, 2))
    with pytest.raises(DataError, match=r"has no train/ folder .*add data.layout=classes"):
        load_data(folder_cfg(root, tmp_path, "data.image_size=16").data)


def test_help_shows_the_folder_layouts():
    from swin_cli.help import help_text

    text = help_text()
    assert "data.root/train/<class>/*" in text and "data.root/test/<class>/*" in text
    assert "data.layout=classes" in text and "split.json" in text


# ------------------------------------------------------------------ end to end: items 2 and 4


@pytest.mark.e2e  # a subprocess
def test_a_64px_class_folder_trains_at_64_and_says_why(tmp_path):
    root = class_folder(tmp_path / "imgs", counts=(10, 10))
    model = [o for o in TINY_MODEL if not o.startswith("data.image_size")]
    proc = run_cli("data=imagefolder", f"data.root={root}", "data.layout=classes", f"data.cache_dir={tmp_path / 'c'}",
                   *model, "epochs=1", "threads=1", "data.batch_size=8", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "run" / "swin-train.log").read_text()
    assert "3x64x64" in log and "the files' own size: all 16 looked at are 64x64" in log
    assert "aug=auto: small RGB images, pad-4 crop and flip" in log
    assert (tmp_path / "run" / "split.json").is_file()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test_acc"] is not None
