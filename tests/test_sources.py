"""Hugging Face datasets and WebDataset shards, offline, on tiny data sets the tests write: sizes
and classes, batch shapes, worker-count independence, rank splits, corrupt samples, bad config,
and one real swin-train run each."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, make_config, run_cli
from PIL import Image

from swin_cli.config import ConfigError, validate
from swin_cli.data import DataError, EpochPlan, load_data

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e

CLASSES = ["cat", "dog", "eel"]


def picture(i: int, fmt: str) -> bytes:
    """Image i: mixed sizes, a mean colour that encodes i (identity survives any crop), and
    noise so that different crops give different pixels."""
    rng = np.random.default_rng(i)
    w, h = 18 + 5 * (i % 4), 14 + 3 * (i % 5)
    base = np.array([8 * (i % 32) + 4, 8 * (i // 32) + 4, 128], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-3, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def identity(images: torch.Tensor) -> list[int]:
    mean = images.double().mean(dim=(2, 3))
    return [int(round((r - 4) / 8)) + 32 * int(round((g - 4) / 8)) for r, g, _ in mean.tolist()]


def labels_of(i: int) -> int:
    return i % 3


@pytest.fixture(autouse=True)
def hub_settings_restored(monkeypatch):
    """data=huggingface sets offline switches in os.environ (a CLI run is one process); each test
    starts without them and leaves none behind."""
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "")  # records the value before, for the undo
        monkeypatch.delenv(name)


# ------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("hf")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})

    def split(rows):
        return datasets.Dataset.from_dict({"image": [{"bytes": picture(i, "PNG"), "path": None} for i in rows],
                                           "label": [labels_of(i) for i in rows]}, features=features)

    datasets.disable_progress_bars()
    whole = datasets.DatasetDict(train=split(range(24)), validation=split(range(24, 32)), test=split(range(32, 40)))
    whole.save_to_disk(str(root / "saved"))
    # A parquet folder: string labels (no ClassLabel), train and validation only.
    plain = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    (root / "parquet").mkdir()
    for name, rows in (("train", range(12)), ("validation", range(12, 18))):
        ds = datasets.Dataset.from_dict({"image": [{"bytes": picture(i, "JPEG"), "path": None} for i in rows],
                                         "label": [CLASSES[labels_of(i)] for i in rows]}, features=plain)
        ds.to_parquet(str(root / "parquet" / f"{name}-00000-of-00001.parquet"))
    return root


def hf_config(path, tmp_path, *extra):
    return make_config("data=huggingface", f"data.path={path}", f"data.cache_dir={tmp_path / 'cache'}",
                       "data.image_size=16", "data.batch_size=4", "data.stats_images=8", *extra).data


def epoch(split, seed=0, epoch_no=0, rank=0, world=1, size=4, start=0):
    steps = len(split) // (size * world)
    return list(split.train_batches(EpochPlan(seed, epoch_no, size, steps, start, rank, world)))


def test_hf_saved_folder_splits_classes_and_batches(hf_saved, tmp_path):
    for storage in ("memory", "stream"):
        data = load_data(hf_config(hf_saved / "saved", tmp_path, f"data.storage={storage}", "data.workers=0"))
        assert data.storage == storage and data.classes == CLASSES and data.channels == 3
        assert (len(data.train), len(data.val), len(data.test)) == (24, 8, 8) and data.test_source == "test"
        images, labels = epoch(data.train)[0]
        assert images.dtype == torch.uint8 and images.shape == (4, 3, 16, 16) and labels.dtype == torch.int64
        test = [b for b in data.test.eval_batches(5)]
        assert [len(b[1]) for b in test] == [5, 3]
        seen = sorted(i for images, _ in test for i in identity(images))
        assert seen == list(range(32, 40))
        assert torch.cat([labels for _, labels in test]).tolist() == [labels_of(i) for i in seen]


def test_hf_batches_do_not_depend_on_the_worker_count(hf_saved, tmp_path):
    runs = []
    for workers in (0, 2):
        cfg = hf_config(hf_saved / "saved", tmp_path, "data.storage=stream", "data.train_crop=random_resized",
                        f"data.workers={workers}")
        runs.append(epoch(load_data(cfg).train, seed=3, epoch_no=1))
    assert len(runs[0]) == 6
    for (x0, y0), (x2, y2) in zip(*runs):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_hf_ranks_read_disjoint_parts_that_cover_the_split(hf_saved, tmp_path):
    cfg = hf_config(hf_saved / "saved", tmp_path, "data.storage=stream", "data.workers=0")
    train = load_data(cfg).train
    parts = [[i for images, _ in epoch(train, rank=r, world=2) for i in identity(images)] for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 12 and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == list(range(24))


def test_hf_parquet_folder_string_labels_test_on_validation(hf_saved, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    data = load_data(hf_config(hf_saved / "parquet", tmp_path, "data.workers=0"))
    assert data.classes == CLASSES and data.test_source == "val"  # sorted distinct values
    assert len(data.train) + len(data.val) == 12 and len(data.test) == 6
    seen = [i for images, _ in data.test.eval_batches(6) for i in identity(images)]
    assert sorted(seen) == list(range(12, 18))


def test_hf_corrupt_row_is_skipped_and_named(tmp_path, caplog):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    rows = [{"bytes": picture(i, "PNG"), "path": None} for i in range(8)]
    rows[5] = {"bytes": b"not an image at all", "path": None}
    ds = datasets.Dataset.from_dict({"image": rows, "label": [labels_of(i) for i in range(8)]}, features=features)
    datasets.DatasetDict(train=ds, test=ds).save_to_disk(str(tmp_path / "bad"))
    cfg = hf_config(tmp_path / "bad", tmp_path, "data.storage=stream", "data.workers=0", "data.val_fraction=0")
    data = load_data(cfg)
    batches = list(data.test.eval_batches(8))
    assert len(batches[0][1]) == 8  # the batch is filled from the next readable sample
    assert data.test.skipped == [f"{tmp_path / 'bad'}[test][5]"] and "[test][5]" in caplog.text


@pytest.mark.parametrize("extra, message", [
    (["data.image_column=img"], "data.image_column=img is not a column of"),
    (["data.label_column=fine"], "data.label_column=fine is not a column of"),
])
def test_hf_missing_column_is_one_line(hf_saved, tmp_path, extra, message):
    with pytest.raises(DataError) as err:
        load_data(hf_config(hf_saved / "saved", tmp_path, *extra))
    assert message in str(err.value) and "its columns: image, label" in str(err.value)
    assert "\n" not in str(err.value)


def test_hf_hub_name_offline_names_the_folder_to_use(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    # No network: the hub's host does not answer, so offline mode is switched on before datasets
    # is imported in a fresh process (here it is imported already, hence the settings above).
    import socket

    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("no route")))
    with pytest.raises(DataError) as err:
        load_data(hf_config("someone/some-images", tmp_path))
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    message = str(err.value)
    assert message.startswith("could not load hub dataset someone/some-images (offline?")
    assert "save_to_disk" in message and "data.path=/that/folder" in message and "\n" not in message


def test_hf_needs_a_test_or_validation_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"image": [picture(0, "PNG")], "label": [0]})
    ds.save_to_disk(str(tmp_path / "one"))
    with pytest.raises(DataError, match="has only a train split"):
        load_data(hf_config(tmp_path / "one", tmp_path))


# ---------------------------------------------------------------------------- WebDataset


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def sample_members(i: int) -> list[tuple[str, bytes]]:
    ext = "jpg" if i % 2 else "png"
    return [(f"s{i:04d}.{ext}", picture(i, "JPEG" if i % 2 else "PNG")), (f"s{i:04d}.cls", str(labels_of(i)).encode())]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    pytest.importorskip("webdataset")
    root = tmp_path_factory.mktemp("wds")
    for s in range(4):  # train: 4 shards of 6
        write_shard(root / f"train-{s:04d}.tar", [m for i in range(6 * s, 6 * s + 6) for m in sample_members(i)])
    write_shard(root / "val-0000.tar", [m for i in range(24, 32) for m in sample_members(i)])
    write_shard(root / "test-0000.tar", [m for i in range(32, 40) for m in sample_members(i)])
    return root


def wds_config(root, tmp_path, *extra, train="train-{0000..0003}.tar"):
    return make_config("data=webdataset", f"data.train_urls='{Path(root) / train}'", f"data.val_urls={root}/val-*.tar",
                       f"data.test_urls={root}/test-0000.tar", f"data.cache_dir={tmp_path / 'cache'}",
                       "data.image_size=16", "data.batch_size=4", "data.stats_images=8", *extra).data


def test_wds_counts_classes_and_batches(shards, tmp_path, monkeypatch):
    data = load_data(wds_config(shards, tmp_path, "data.workers=0"))
    assert data.storage == "stream" and data.classes == ["0", "1", "2"] and data.channels == 3
    assert (len(data.train), len(data.val), len(data.test)) == (24, 8, 8)
    batches = epoch(data.train)
    assert len(batches) == 6 and all(x.shape == (4, 3, 16, 16) and x.dtype == torch.uint8 for x, _ in batches)
    seen = [i for x, _ in batches for i in identity(x)]
    assert sorted(seen) == list(range(24))  # the whole split, once
    assert torch.cat([y for _, y in batches]).tolist() == [labels_of(i) for i in seen]
    test = list(data.test.eval_batches(5))
    assert [len(y) for _, y in test] == [5, 3]
    assert sorted(i for x, _ in test for i in identity(x)) == list(range(32, 40))
    # The counts are cached: a second load scans no tar file.
    from swin_cli.data import webdataset

    monkeypatch.setattr(webdataset, "count_shard", lambda *a: pytest.fail("recounted"))
    again = load_data(wds_config(shards, tmp_path, "data.workers=0", "data.classes=[a,b,c]"))
    assert len(again.train) == 24 and again.classes == ["a", "b", "c"]
    # Without data.test_urls the final test is on the val shards, and there is no validation.
    cfg = wds_config(shards, tmp_path, "data.workers=0")
    cfg.test_urls = None
    no_test = load_data(cfg)
    assert no_test.test_source == "val" and (len(no_test.val), len(no_test.test)) == (0, 8)


def test_wds_worker_count_keeps_each_epochs_samples(shards, tmp_path, monkeypatch):
    from swin_cli.data import webdataset

    monkeypatch.setattr(webdataset, "CHUNK", 3)  # workers hand over chunks that batches cut across
    runs = []
    for workers in (0, 2):
        cfg = wds_config(shards, tmp_path, f"data.workers={workers}", "data.train_crop=random_resized")
        batches = epoch(load_data(cfg).train, seed=5, epoch_no=2)
        # Each sample as its (identity, label, exact pixels): the crop is the sample's own.
        runs.append(Counter((i, int(y), x.numpy().tobytes()) for xs, ys in batches
                            for i, x, y in zip(identity(xs), xs, ys)))
    assert sum(runs[0].values()) == 24 and runs[0] == runs[1]


def test_wds_ranks_split_shards_and_yield_equal_batch_counts(shards, tmp_path):
    train = load_data(wds_config(shards, tmp_path, "data.workers=0")).train
    parts = [[i for x, _ in epoch(train, rank=r, world=2) for i in identity(x)] for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 12 and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == list(range(24))
    # Three ranks over four shards: 12, 6 and 6 samples, yet every rank yields the epoch's
    # 2 steps (the short ones read their shard again), or DDP would hang.
    for rank in range(3):
        batches = epoch(train, rank=rank, world=3)
        assert [len(y) for _, y in batches] == [4, 4]
        own = {i for s in train.rank_shards(0, 0, rank, 3) for i in range(6 * int(s[-8:-4]), 6 * int(s[-8:-4]) + 6)}
        assert {i for x, _ in batches for i in identity(x)} <= own


def test_wds_resume_mid_epoch_replays_the_rest(shards, tmp_path, monkeypatch):
    from swin_cli.data import webdataset

    monkeypatch.setattr(webdataset, "CHUNK", 5)
    train = load_data(wds_config(shards, tmp_path, "data.workers=2")).train
    whole, tail = epoch(train, epoch_no=1), epoch(train, epoch_no=1, start=4)
    assert len(tail) == 2
    for (x, y), (xr, yr) in zip(whole[4:], tail):
        assert torch.equal(x, xr) and torch.equal(y, yr)


def test_wds_corrupt_samples_and_shards_are_skipped_and_named(shards, tmp_path, caplog):
    bad = tmp_path / "bad"
    bad.mkdir()
    members = [m for i in range(8) for m in sample_members(i)]
    members[2 * 3] = ("s0003.png", b"garbage, not a png")  # a corrupt image
    del members[2 * 5 + 1]  # s0005 has no label
    write_shard(bad / "train-0000.tar", members)
    truncated = write_shard(bad / "train-0001.tar", [m for i in range(8, 16) for m in sample_members(i)])
    truncated.write_bytes(truncated.read_bytes()[:4000])  # cut inside a member
    data = load_data(wds_config(shards, tmp_path, "data.workers=0", "data.shuffle_buffer=0",
                                train=f"{bad}/train-*.tar"))
    batches = epoch(data.train)
    assert all(len(y) == 4 for _, y in batches)
    assert any(name.endswith("train-0000.tar:s0003") for name in data.train.skipped), data.train.skipped
    assert "s0003" in caplog.text and "skipped unreadable data" in caplog.text
    assert not {3, 5} & {i for x, _ in batches for i in identity(x)}


def test_wds_debug_runs_need_random_access_and_say_so(shards, tmp_path):
    from swin_cli.data import debug_subset

    data = load_data(wds_config(shards, tmp_path, "data.workers=0"))
    assert not data.train.random_access
    with pytest.raises(DataError, match="need random access to the data, which data=webdataset does not give"):
        debug_subset(data, make_config("data=webdataset", "debug=fast"), 1)


def test_wds_bad_config_is_one_line(shards, tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"^data.train_urls=.*nothing-\{0..3\}.tar matches no files$"):
        load_data(wds_config(shards, tmp_path, train="nothing-{0..3}.tar"))
    for overrides, message in (
        (["data=webdataset"], "data=webdataset needs data.train_urls="),
        (["data=webdataset", "data.train_urls=/x.tar"], "data=webdataset needs data.test_urls"),
        (["data=huggingface"], "data=huggingface needs data.path="),
        (["data=webdataset", "data.train_urls=/x.tar", "data.val_urls=/y.tar", "data.storage=memory"],
         "data=webdataset streams its shards"),
    ):
        with pytest.raises(ConfigError, match=message):
            validate(make_config(*overrides))
    monkeypatch.setitem(sys.modules, "webdataset", None)  # the library not installed
    with pytest.raises(DataError, match=r'pip install "swin-cli\[webdataset\]"'):
        load_data(wds_config(shards, tmp_path))
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r'pip install "swin-cli\[huggingface\]"'):
        load_data(hf_config(tmp_path, tmp_path))


# ------------------------------------------------------------------------ through the CLI


@pytest.mark.parametrize("source", ["huggingface", "webdataset"])
def test_swin_train_runs_on_each_source(source, hf_saved, shards, tmp_path):
    if source == "huggingface":
        args = ["data=huggingface", f"data.path={hf_saved / 'saved'}"]
    else:  # the braces quoted for Hydra, as the README says
        args = ["data=webdataset", f"data.train_urls='{shards}/train-{{0000..0003}}.tar'",
                f"data.val_urls={shards}/val-0000.tar", f"data.test_urls={shards}/test-0000.tar"]
    proc = run_cli(*args, *TINY_MODEL, "epochs=1", "train.max_steps_per_epoch=2", "data.batch_size=4",
                   "data.workers=1", f"data.cache_dir={tmp_path / 'cache'}", "threads=1", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test acc" in proc.stdout and "Traceback" not in proc.stderr
