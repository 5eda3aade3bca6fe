"""Data sources: digits offline, image folders (layout errors, corrupt files, cache), splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_config
from PIL import Image

from swin_cli.data import DataError, channel_stats, load_data


def write_folder(root: Path, splits=("train", "test"), classes=("cat", "dog"), per_class=6, size=(20, 12),
                 mode="RGB") -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                pixels = rng.integers(0, 256, shape, dtype=np.uint8) // (label + 1)
                Image.fromarray(pixels, mode).save(folder / f"{i}.png")
    return root


def folder_config(root: Path, tmp_path: Path, *extra: str):
    return make_config("data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                       "data.image_size=16", *extra).data


def test_digits_offline_splits_are_fixed_and_disjoint():
    cfg = make_config("data=digits").data
    a, b = load_data(cfg), load_data(cfg)
    assert a.in_chans == 1 and a.num_classes == 10 and a.train.images.shape[-2:] == (32, 32)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert len(a.test) == 359 and len(a.val) == round(0.1 * 1438)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    assert a.train.images.dtype == torch.uint8 and a.train.images.max() > 200


@pytest.mark.e2e  # a subprocess
def test_digits_are_scikit_learn_s_read_without_importing_it():
    import subprocess
    import sys

    from sklearn.datasets import load_digits as sklearn_digits

    from swin_cli.data.digits import digits_arrays

    images, labels = digits_arrays()
    reference = sklearn_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(labels, reference.target)
    probe = ("import sys; from swin_cli.data.digits import digits_arrays; digits_arrays(); "
             "print('sklearn' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_imagefolder_reads_classes_resizes_and_holds_out_val(tmp_path):
    root = write_folder(tmp_path / "imgs")
    data = load_data(folder_config(root, tmp_path, "data.val_fraction=0.25"))
    assert data.classes == ["cat", "dog"]
    assert data.train.images.shape == (9, 3, 16, 16) and len(data.val) == 3 and len(data.test) == 12
    assert sorted(data.test.labels.tolist()) == [0] * 6 + [1] * 6


def test_imagefolder_uses_val_folder_and_grey_images(tmp_path):
    root = write_folder(tmp_path / "imgs", splits=("train", "val", "test"), mode="L")
    data = load_data(folder_config(root, tmp_path))
    assert data.in_chans == 1 and len(data.val) == 12 and len(data.train) == 12


def test_imagefolder_with_train_and_val_only_tests_on_val(tmp_path):
    root = write_folder(tmp_path / "imgs", splits=("train",))
    write_folder(root, splits=("val",), per_class=4)
    data = load_data(folder_config(root, tmp_path, "data.val_fraction=0.25"))
    assert data.test_source == "val" and len(data.test) == 8
    assert len(data.train) == 9 and len(data.val) == 3  # validation is held out of train
    assert "test (the val/ folder) 8" in data.sizes()
    with pytest.raises(DataError, match="has no test/ folder \\(nor a val/ one"):
        load_data(folder_config(write_folder(tmp_path / "only_train", splits=("train",)), tmp_path))


def test_imagefolder_cache_is_reused_and_invalidated(tmp_path):
    root = write_folder(tmp_path / "imgs")
    cfg = folder_config(root, tmp_path)
    first = load_data(cfg)
    caches = sorted((tmp_path / "cache").glob("imagefolder-*.pt"))
    assert len(caches) == 3  # train, the validation held out of it (eval crop), test
    assert torch.equal(load_data(cfg).test.images, first.test.images)
    assert sorted((tmp_path / "cache").glob("imagefolder-*.pt")) == caches  # reused, none added
    # A new image changes the key: the train caches are rebuilt, not served stale.
    Image.new("RGB", (8, 8)).save(root / "train" / "cat" / "new.png")
    assert len(load_data(cfg).train) + len(load_data(cfg).val) == 13
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 5


def test_corrupt_image_is_skipped_with_a_warning(tmp_path, caplog):
    root = write_folder(tmp_path / "imgs")
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    data = load_data(folder_config(root, tmp_path, "data.val_fraction=0"))
    assert len(data.train) == 12
    assert "skipped 1 unreadable image in" in caplog.text and "broken.jpg" in caplog.text
    # A run served from the cache warns the same way, and knows which file it skipped.
    caplog.clear()
    cached = load_data(folder_config(root, tmp_path, "data.val_fraction=0"))
    assert "skipped 1 unreadable image in" in caplog.text and "broken.jpg" in caplog.text
    assert [Path(p).name for p in cached.skipped] == ["broken.jpg"]


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("empty", "has no train/ folder"),
    ("no_classes", "has no class folders"),
    ("empty_class", "class folders with no images: dog"),
    ("class_mismatch", "have different classes"),
])
def test_bad_folder_layouts_name_the_problem(tmp_path, layout, message):
    root = tmp_path / "imgs"
    if layout == "empty":
        root.mkdir()
    elif layout == "no_classes":
        (root / "train").mkdir(parents=True)
        (root / "test").mkdir()
    elif layout == "empty_class":
        write_folder(root)
        for f in (root / "train" / "dog").iterdir():
            f.unlink()
    elif layout == "class_mismatch":
        write_folder(root, splits=("train",))
        write_folder(root, splits=("test",), classes=("cat", "cow"))
    with pytest.raises(DataError, match=message):
        load_data(folder_config(root, tmp_path))


def test_cifar_offline_failure_is_one_clear_line(tmp_path):
    cfg = make_config("data=cifar10", f"data.root={tmp_path}", "data.download=false").data
    with pytest.raises(DataError) as info:
        load_data(cfg)
    assert "could not find CIFAR-10" in str(info.value) and "data=imagefolder" in str(info.value)


def test_channel_stats_match_float_computation():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk_bytes=7 * 3 * 8 * 8 * 4)  # 7 images a chunk
    x = images.double() / 255
    assert np.allclose(mean, x.mean(dim=(0, 2, 3)).tolist())
    assert np.allclose(std, x.std(dim=(0, 2, 3), unbiased=False).tolist())
