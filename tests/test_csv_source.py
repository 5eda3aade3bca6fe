"""data=csv: tables of path,label rows (CSV or JSON lines) with the images anywhere, offline, on
tables and images the tests write: classes, paths, splits, both storages, every bad table, and
one real swin-train run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, make_config, run_cli
from PIL import Image

from swin_cli.config import ConfigError, validate
from swin_cli.data import DataError, EpochPlan, data_shape, first_test_images, load_data

CLASSES = ["cat", "dog", "eel"]


def write_image(path: Path, i: int) -> Path:
    """Image i: a mean colour that encodes i (identity survives resizing), mixed sizes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(i)
    w, h = 18 + 5 * (i % 4), 14 + 3 * (i % 5)
    base = np.array([8 * (i % 32) + 4, 8 * (i // 32) + 4, 128], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-3, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def identity(images: torch.Tensor) -> list[int]:
    mean = images.double().mean(dim=(2, 3))
    return [int(round((r - 4) / 8)) + 32 * int(round((g - 4) / 8)) for r, g, _ in mean.tolist()]


def label_of(i: int) -> int:
    return i % 3


def write_csv(path: Path, rows: list[tuple[str, object]], header=("path", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([",".join(header)] + [f"{image},{label}" for image, label in rows]) + "\n")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def tables(tmp_path):
    """Images 0..23 train, 24..29 val, 30..35 test, under images/<i>.png; CSV tables beside the
    images with paths relative to their folder, labels as class names."""
    for i in range(36):
        write_image(tmp_path / "images" / f"{i}.png", i)

    def table(name, ids):
        return write_csv(tmp_path / f"{name}.csv", [(f"images/{i}.png", CLASSES[label_of(i)]) for i in ids])

    return {"train": table("train", range(24)), "val": table("val", range(24, 30)),
            "test": table("test", range(30, 36))}


def csv_config(tmp_path, *extra, train=None, val=None, test=None):
    keys = [f"data.{k}_table={v}" for k, v in (("train", train), ("val", val), ("test", test)) if v is not None]
    return make_config("data=csv", *keys, f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=16",
                       "data.batch_size=4", "data.stats_images=8", "data.workers=0", *extra).data


def seen(split) -> list[int]:
    return [i for images, _ in split.eval_batches(5) for i in identity(images)]


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_csv_tables_give_sorted_class_names_and_their_images(tables, tmp_path, storage):
    cfg = csv_config(tmp_path, f"data.storage={storage}", train=tables["train"], val=tables["val"], test=tables["test"])
    data = load_data(cfg)
    assert data.storage == storage and data.classes == CLASSES and data.channels == 3
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 6) and data.test_source == "test"
    assert seen(data.test) == list(range(30, 36)) and seen(data.val) == list(range(24, 30))
    labels = torch.cat([y for _, y in data.test.eval_batches(6)]).tolist()
    assert labels == [label_of(i) for i in range(30, 36)]
    batches = list(data.train.train_batches(EpochPlan(0, 0, 4, 6)))
    ids = [i for x, _ in batches for i in identity(x)]
    assert sorted(ids) == list(range(24))  # the whole split, once
    assert torch.cat([y for _, y in batches]).tolist() == [label_of(i) for i in ids]


def test_memory_and_stream_read_the_same_pixels(tables, tmp_path):
    splits = {s: load_data(csv_config(tmp_path, f"data.storage={s}", train=tables["train"], test=tables["test"]))
              for s in ("memory", "stream")}
    (xm, ym), = splits["memory"].test.eval_batches(6)
    (xs, ys), = splits["stream"].test.eval_batches(6)
    assert torch.equal(xm, xs) and torch.equal(ym, ys)


def test_jsonl_integer_labels_absolute_and_root_relative_paths(tmp_path):
    for i in range(12):
        write_image(tmp_path / "pool" / f"{i}.png", i)
    # Absolute paths in a table kept elsewhere; integer labels as JSON numbers and as strings.
    train = write_jsonl(tmp_path / "meta" / "train.jsonl",
                        [{"file": str(tmp_path / "pool" / f"{i}.png"), "y": label_of(i) if i % 2 else str(label_of(i))}
                         for i in range(9)])
    # Paths relative to data.root, not to the table's folder.
    test = write_jsonl(tmp_path / "meta" / "test.jsonl", [{"file": f"{i}.png", "y": label_of(i)} for i in range(9, 12)])
    data = load_data(csv_config(tmp_path, "data.image_column=file", "data.label_column=y",
                                f"data.root={tmp_path / 'pool'}", "data.val_fraction=0", train=train, test=test))
    assert data.classes == ["0", "1", "2"] and (len(data.train), len(data.test)) == (9, 3)
    assert seen(data.test) == [9, 10, 11]
    assert torch.cat([y for _, y in data.test.eval_batches(3)]).tolist() == [0, 1, 2]


def test_without_a_val_table_validation_is_held_out_and_without_a_test_table_the_test_is_on_val(tables, tmp_path):
    held = load_data(csv_config(tmp_path, "data.val_fraction=0.25", train=tables["train"], test=tables["test"]))
    assert (len(held.train), len(held.val), len(held.test)) == (18, 6, 6)
    assert sorted(seen(held.train) + seen(held.val)) == list(range(24))
    on_val = load_data(csv_config(tmp_path, "data.val_fraction=0.25", train=tables["train"], val=tables["val"]))
    assert on_val.test_source == "val" and seen(on_val.test) == list(range(24, 30))
    assert (len(on_val.train), len(on_val.val)) == (18, 6)


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_unreadable_images_are_skipped_and_named_and_missing_ones_left_out_and_named(tables, tmp_path, storage, caplog):
    (tmp_path / "images" / "5.png").write_bytes(b"not a png at all")
    (tmp_path / "images" / "7.png").unlink()
    data = load_data(csv_config(tmp_path, f"data.storage={storage}", "data.val_fraction=0",
                                train=tables["train"], test=tables["test"]))
    assert "1 of 24 listed images do not exist" in caplog.text and "7.png" in caplog.text
    assert len(data.train) == (22 if storage == "memory" else 23)  # a stream finds the bad file as it reads
    assert not {5, 7} & set(seen(data.train))  # a stream reads the next image in place of 5
    assert [Path(p).name for p in data.train.skipped] == ["5.png"] and "5.png" in caplog.text


@pytest.mark.parametrize("problem, message", [
    ("missing", "data.train_table={train} does not exist or is not a file"),
    ("empty", "data.train_table={train} has no rows"),
    ("header_only", "data.train_table={train} has no rows"),
    ("column", "data.image_column=image is not a column of {train} (its columns: file, label)"),
    ("unknown_label", "data.test_table={test} has label 'cow', which data.train_table has not (its classes: cat, dog)"),
    ("no_files", "none of the 2 images of data.train_table={train} exist"),
    ("negative", "data.train_table has label -1: integer labels must be >= 0"),
    ("bad_json", "line 2 is not JSON"),
    ("blank_cell", "line 3 has no label (data.label_column)"),
])
def test_bad_tables_are_one_line(tmp_path, problem, message):
    for i in range(2):
        write_image(tmp_path / f"{i}.png", i)
    good = [("0.png", "cat"), ("1.png", "dog")]
    train, test = tmp_path / "train.csv", write_csv(tmp_path / "test.csv", good)
    extra = []
    if problem == "empty":
        train.write_text("")
    elif problem == "header_only":
        write_csv(train, [])
    elif problem == "column":
        write_csv(train, good, header=("file", "label"))
        extra = ["data.image_column=image"]
    elif problem == "unknown_label":
        write_csv(train, good)
        write_csv(test, [("0.png", "cow")])
    elif problem == "no_files":
        write_csv(train, [("gone/0.png", "cat"), ("gone/1.png", "dog")])
    elif problem == "negative":
        write_csv(train, [("0.png", -1), ("1.png", 0)])
    elif problem == "bad_json":
        train = tmp_path / "train.jsonl"
        train.write_text('{"path": "0.png", "label": "cat"}\n{"path": "1.png", label: dog}\n')
    elif problem == "blank_cell":
        write_csv(train, [("0.png", "cat"), ("1.png", "")])
    with pytest.raises(DataError) as err:
        load_data(csv_config(tmp_path, *extra, train=train, test=test))
    assert message.format(train=train, test=test) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    ([], "data=csv needs data.train_table="),
    (["data.train_table=/t.csv"], "data=csv needs data.test_table (or data.val_table"),
    (["data.train_table=/t.csv", "data.val_table=/v.csv", "data.storage=memory", "data.train_crop=random_resized"],
     "data.train_crop=random_resized needs each image at its own resolution"),
])
def test_bad_csv_config_fails_at_start(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(make_config("data=csv", *overrides))
    validate(make_config("data=csv", "data.train_table=/t.csv", "data.val_table=/v.csv"))  # files are checked on load


def test_shape_and_export_images_without_loading_for_a_run(tables, tmp_path):
    cfg = csv_config(tmp_path, train=tables["train"], test=tables["test"])
    assert data_shape(cfg) == (3, 3, "")
    images, where = first_test_images(dict(cfg), 16, 3, 4, [0.5] * 3, [0.25] * 3)
    assert images.shape == (4, 3, 16, 16) and where == f"images of {tables['test']}"
    assert identity(images) == [30, 31, 32, 33]  # one of each class, then the next
    cfg.train_table = str(tmp_path / "gone.csv")
    channels, classes, note = data_shape(cfg)
    assert (channels, classes) == (3, 10) and "gone.csv does not exist" in note


@pytest.mark.e2e  # a subprocess
def test_swin_train_runs_on_csv_tables(tables, tmp_path):
    proc = run_cli("data=csv", f"data.train_table={tables['train']}", f"data.test_table={tables['test']}", *TINY_MODEL,
                   "epochs=1", "train.max_steps_per_epoch=2", "data.batch_size=4", "data.storage=stream",
                   "data.workers=1", f"data.cache_dir={tmp_path / 'cache'}", "threads=1", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test acc" in proc.stdout and "Traceback" not in proc.stderr
