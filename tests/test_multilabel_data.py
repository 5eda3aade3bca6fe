"""data.task=multilabel, the data side: label cells of several labels (csv) and sequence label
columns (Hugging Face) become uint8 multi-hot rows in both storages, bad labels are one line, and
benchmarks/make_mosaics.py makes the CIFAR mosaic set. Offline, on files the tests write."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, make_config
from PIL import Image

from swin_cli.config import ConfigError, validate
from swin_cli.data import DataError, EpochPlan, data_shape, first_test_images, load_data
from swin_cli.data.debug import debug_subset
from swin_cli.data.sources import label_tensor, multi_hot

CLASSES = ["cat", "dog", "eel"]
# Image i's labels (indices into CLASSES): every set of the three classes, the empty one included.
SETS = [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2), ()]


def set_of(i: int) -> tuple[int, ...]:
    return SETS[i % len(SETS)]


def write_image(path: Path, i: int) -> None:
    """Image i: a mean colour that encodes i, so a batch's images can be matched to their labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(i)
    base = np.array([8 * (i % 32) + 4, 8 * (i // 32) + 4, 128], dtype=np.int16)
    Image.fromarray(np.clip(base + rng.integers(-3, 4, (20, 18, 3)), 0, 255).astype(np.uint8)).save(path)


def identity(images: torch.Tensor) -> list[int]:
    mean = images.double().mean(dim=(2, 3))
    return [int(round((r - 4) / 8)) + 32 * int(round((g - 4) / 8)) for r, g, _ in mean.tolist()]


def write_table(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def cell(i: int, separator: str = " ") -> str:
    return separator.join(CLASSES[c] for c in set_of(i))


@pytest.fixture
def tables(tmp_path):
    """Images 0..23 train, 24..31 val, 32..39 test; label cells of space-separated class names."""
    for i in range(40):
        write_image(tmp_path / "images" / f"{i}.png", i)

    def table(name, ids):
        return write_table(tmp_path / f"{name}.csv", [(f"images/{i}.png", cell(i)) for i in ids])

    return {"train": table("train", range(24)), "val": table("val", range(24, 32)),
            "test": table("test", range(32, 40))}


def config(tmp_path, *extra, train=None, val=None, test=None):
    keys = [f"data.{k}_table={v}" for k, v in (("train", train), ("val", val), ("test", test)) if v is not None]
    return make_config("data=csv", "data.task=multilabel", *keys, f"data.cache_dir={tmp_path / 'cache'}",
                       "data.image_size=16", "data.batch_size=4", "data.stats_images=8", "data.workers=0", *extra)


def expected(ids: list[int]) -> torch.Tensor:
    return multi_hot([set_of(i) for i in ids], len(CLASSES))


def check_batches(batches) -> int:
    """Every batch's labels are uint8 multi-hot rows matching its images; the images seen."""
    seen = 0
    for images, labels in batches:
        assert labels.dtype == torch.uint8 and labels.shape == (len(images), len(CLASSES))
        assert torch.equal(labels, expected(identity(images)))
        seen += len(images)
    return seen


def test_multi_hot_and_label_tensor():
    assert multi_hot([(0, 2), (), (1,)], 3).tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert multi_hot([], 4).shape == (0, 4) and multi_hot([], 4).dtype == torch.uint8
    single = label_tensor([2, 0, 1])
    assert single.dtype == torch.int64 and single.tolist() == [2, 0, 1]
    assert label_tensor([(1,), (0, 1)], 2).tolist() == [[0, 1], [1, 1]]


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_csv_label_sets_become_multi_hot_rows(tables, tmp_path, storage, caplog):
    caplog.set_level(logging.INFO)
    cfg = config(tmp_path, f"data.storage={storage}", train=tables["train"], val=tables["val"], test=tables["test"])
    data = load_data(cfg.data)
    assert data.task == "multilabel" and data.classes == CLASSES
    for split, ids in ((data.train, range(24)), (data.val, range(24, 32)), (data.test, range(32, 40))):
        assert len(split) == len(ids)
        assert split.labels.dtype == torch.uint8 and torch.equal(split.labels.cpu(), expected(list(ids)))
        assert check_batches(split.eval_batches(5)) == len(ids)
    plan = EpochPlan(seed=0, epoch=0, rank_images=4, steps=6)
    assert check_batches(data.train.train_batches(plan)) == 24
    images, labels = data.train.sample(6, seed=1)
    assert torch.equal(labels.cpu(), expected(identity(images)))
    part = data.train.subset(torch.tensor([3, 0, 7]))
    assert len(part) == 3 and torch.equal(part.labels.cpu(), expected([3, 0, 7]))
    # An empty label cell is an image with no labels: allowed, and said once per table.
    assert "3 rows of 24 have no labels" in caplog.text and "1 row of 8 has no labels" in caplog.text
    again = load_data(cfg.data)  # memory: read back from the decode cache
    assert torch.equal(again.train.labels.cpu(), expected(list(range(24))))


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_held_out_validation_and_debug_subsets_keep_multi_hot_rows(tables, tmp_path, storage):
    cfg = config(tmp_path, f"data.storage={storage}", "data.val_fraction=0.25", "train.overfit_batches=2",
                 train=tables["train"], test=tables["test"])
    data = load_data(cfg.data)
    assert (len(data.train), len(data.val)) == (18, 6)
    assert check_batches(data.train.eval_batches(4)) + check_batches(data.val.eval_batches(4)) == 24
    small = debug_subset(data, cfg, processes=1)
    assert len(small.train) == 8 and small.train.labels.shape == (8, 3) and check_batches(small.train.eval_batches(4))


def test_no_validation_gives_an_empty_multi_hot_split(tables, tmp_path):
    data = load_data(config(tmp_path, "data.val_fraction=0", train=tables["train"], test=tables["test"]).data)
    assert len(data.val) == 0 and data.val.labels.shape == (0, 3) and data.val.labels.dtype == torch.uint8


def test_shape_and_export_images_without_loading(tables, tmp_path):
    cfg = config(tmp_path, train=tables["train"], test=tables["test"]).data
    assert data_shape(cfg) == (3, 3, "")
    images, _ = first_test_images(dict(cfg), 16, 3, 4, [0.5] * 3, [0.25] * 3)
    # Grouped by each row's first label (none, cat, dog, eel), the first of each group in table order.
    assert images.shape == (4, 3, 16, 16) and identity(images) == [39, 32, 33, 34]


def test_prepared_copy_keeps_label_sets(tables, tmp_path):
    # One worker process: the batches' multi-hot rows are made there (the collate), then sent back.
    cfg = config(tmp_path, "data.storage=stream", "data.prepare=true", "data.workers=1", train=tables["train"],
                 test=tables["test"])
    assert cfg.data.workers == 1
    data = load_data(cfg.data)
    assert data.train.labels.shape == (len(data.train), 3)
    assert sum(check_batches(split.eval_batches(4)) for split in (data.train, data.val, data.test)) == 32


def test_separator_integer_labels_and_json_lists(tmp_path):
    for i in range(8):
        write_image(tmp_path / f"{i}.png", i)
    sep = write_table(tmp_path / "sep.csv", [(f"{i}.png", cell(i, " ; ")) for i in range(8)])
    data = load_data(config(tmp_path, "data.label_separator=';'", "data.val_fraction=0", train=sep, test=sep).data)
    assert data.classes == CLASSES and torch.equal(data.test.labels, expected(list(range(8))))
    # Integer labels: the classes are "0".."K-1", K from the largest label of the training table.
    ints = write_table(tmp_path / "ints.csv", [(f"{i}.png", " ".join(str(2 * c) for c in set_of(i)))
                                               for i in range(8)])
    data = load_data(config(tmp_path, "data.val_fraction=0", train=ints, test=ints).data)
    assert data.classes == ["0", "1", "2", "3", "4"]
    assert torch.equal(data.test.labels[:, ::2], expected(list(range(8)))) and not data.test.labels[:, 1::2].any()
    # A JSON-lines cell may be a list.
    lines = tmp_path / "t.jsonl"
    lines.write_text("".join(json.dumps({"path": f"{i}.png", "label": [CLASSES[c] for c in set_of(i)]}) + "\n"
                             for i in range(8)))
    data = load_data(config(tmp_path, "data.val_fraction=0", train=lines, test=lines).data)
    assert torch.equal(data.test.labels, expected(list(range(8))))


def test_single_label_is_as_before(tables, tmp_path):
    """Without data.task=multilabel a cell is one class (its spaces included), labels int64 (N,),
    and an empty cell is an error."""
    ids = [i for i in range(40) if set_of(i)]
    table = write_table(tmp_path / "single.csv", [(f"images/{i}.png", cell(i)) for i in ids])
    data = load_data(make_config("data=csv", f"data.train_table={table}", f"data.test_table={table}",
                                 f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=16", "data.stats_images=8",
                                 "data.val_fraction=0").data)
    assert data.task == "single" and data.train.labels.dtype == torch.int64 and data.train.labels.dim() == 1
    assert data.classes == sorted({cell(i) for i in ids}) and "cat dog" in data.classes
    with pytest.raises(DataError, match="line 9 has no label"):
        load_data(make_config("data=csv", f"data.train_table={tables['train']}", f"data.test_table={table}").data)


@pytest.mark.parametrize("problem, message", [
    ("unknown", "data.test_table={test} has label 'cow', which data.train_table has not (its classes: cat, dog, eel), "
                "on line 3"),
    ("no_labels", "data.train_table={train} has no labels in any row"),
])
def test_bad_labels_are_one_line(tmp_path, problem, message):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", i)
    train = write_table(tmp_path / "train.csv", [("0.png", "cat dog"), ("1.png", "eel"), ("2.png", "")])
    test = write_table(tmp_path / "test.csv", [("0.png", "cat"), ("1.png", "dog cow")])
    if problem == "no_labels":
        write_table(train, [("0.png", ""), ("1.png", " ")])
    with pytest.raises(DataError) as err:
        load_data(config(tmp_path, "data.val_fraction=0", train=train, test=test).data)
    assert message.format(train=train, test=test) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["data=digits"], "data.task=multilabel needs a source whose rows hold several labels: data=csv or "
                      "data=huggingface (got data=digits)"),
    (["data=imagefolder", "data.root=/x"], "data.task=multilabel needs a source whose rows hold several labels"),
    (["data=csv", "data.train_table=/t.csv", "data.test_table=/t.csv", "data.label_separator=''"],
     "data.label_separator must not be empty"),
])
def test_bad_task_config_fails_at_start(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(make_config(*overrides, "data.task=multilabel"))
    with pytest.raises(Exception) as info:  # Hydra names the allowed values
        make_config("data=digits", "data.task=multiclass")
    assert "single, multilabel" in str(info.value.__cause__)


# ------------------------------------------------------------------------- Hugging Face


@pytest.fixture
def hf_offline(monkeypatch):
    """data=huggingface sets offline switches in os.environ; leave none behind."""
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return pytest.importorskip("datasets")


def png(i: int) -> bytes:
    import io

    out = io.BytesIO()
    rng = np.random.default_rng(i)
    base = np.array([8 * (i % 32) + 4, 8 * (i // 32) + 4, 128], dtype=np.int16)
    Image.fromarray(np.clip(base + rng.integers(-3, 4, (16, 16, 3)), 0, 255).astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def hf_folder(datasets, root: Path, label_feature, label_of) -> Path:
    features = datasets.Features({"image": datasets.Image(), "labels": label_feature})

    def split(rows):
        return datasets.Dataset.from_dict({"image": [{"bytes": png(i), "path": None} for i in rows],
                                           "labels": [label_of(i) for i in rows]}, features=features)

    datasets.disable_progress_bars()
    datasets.DatasetDict(train=split(range(16)), test=split(range(16, 24))).save_to_disk(str(root))
    return root


def hf_config(path, tmp_path, *extra):
    return make_config("data=huggingface", f"data.path={path}", "data.label_column=labels",
                       f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=16", "data.batch_size=4",
                       "data.stats_images=8", "data.workers=0", "data.val_fraction=0.25", *extra).data


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_hf_sequence_of_class_labels_gives_multi_hot_rows(hf_offline, tmp_path, storage, caplog):
    datasets = hf_offline
    caplog.set_level(logging.INFO)
    root = hf_folder(datasets, tmp_path / "hf", datasets.Sequence(datasets.ClassLabel(names=CLASSES)),
                     lambda i: list(set_of(i)))
    data = load_data(hf_config(root, tmp_path, "data.task=multilabel", f"data.storage={storage}"))
    assert data.task == "multilabel" and data.classes == CLASSES
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 8)
    assert sum(check_batches(s.eval_batches(4)) for s in (data.train, data.val, data.test)) == 24
    assert torch.equal(data.test.labels.cpu(), expected(list(range(16, 24))))
    assert "1 row of 8 in the test split of" in caplog.text and "has no labels" in caplog.text
    # Without data.task=multilabel a list column is one line saying what to set.
    with pytest.raises(DataError, match="holds a list of labels per row: set data.task=multilabel"):
        load_data(hf_config(root, tmp_path))


def test_hf_lists_of_strings_take_their_sorted_union_as_classes(hf_offline, tmp_path):
    datasets = hf_offline
    root = hf_folder(datasets, tmp_path / "hf", datasets.Sequence(datasets.Value("string")),
                     lambda i: [CLASSES[c] for c in set_of(i)])
    data = load_data(hf_config(root, tmp_path, "data.task=multilabel"))
    assert data.classes == CLASSES and torch.equal(data.test.labels, expected(list(range(16, 24))))


# ------------------------------------------------------------------------- the mosaic maker


def load_script():
    spec = importlib.util.spec_from_file_location("make_mosaics", ROOT / "benchmarks" / "make_mosaics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COLOURS = {"ant": (250, 10, 10), "bee": (10, 250, 10), "cow": (10, 10, 250)}


def test_make_mosaics_writes_2x2_images_their_label_sets_and_the_baseline(tmp_path, capsys):
    src = tmp_path / "src"
    for split in ("train", "test"):
        for name, colour in COLOURS.items():
            for k in range(3):
                (src / split / name).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), colour).save(src / split / name / f"{k}.jpg", quality=95)
    dst = tmp_path / "mosaics"
    assert load_script().main([str(src), str(dst), "--train", "6", "--test", "5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    shares = {name: 0 for name in COLOURS}
    for split, count in (("train", 6), ("test", 5)):
        with open(dst / f"{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == count
        for row in rows:
            pixels = np.asarray(Image.open(dst / row["path"]).convert("RGB"), dtype=np.float64)
            assert pixels.shape == (64, 64, 3) and row["path"].startswith(f"images/{split}/")
            quadrants = [pixels[y:y + 32, x:x + 32].mean(axis=(0, 1)) for y in (0, 32) for x in (0, 32)]
            shown = {min(COLOURS, key=lambda n: np.abs(np.subtract(COLOURS[n], q)).sum()) for q in quadrants}
            # Four distinct images of three classes of three images each: at least two classes.
            assert row["label"].split(" ") == sorted(shown) and len(shown) >= 2
            if split == "test":
                for name in shown:
                    shares[name] += 1
    baseline = sum(shares.values()) / 5 / len(COLOURS)
    assert f"macro mAP of a constant predictor) on test: {baseline:.4f}" in out
    # ... which is scikit-learn's macro average precision of scores that are all the same.
    from sklearn.metrics import average_precision_score

    with open(dst / "test.csv", newline="") as f:
        truth = [[name in row["label"].split(" ") for name in COLOURS] for row in csv.DictReader(f)]
    assert average_precision_score(np.array(truth), np.zeros((5, 3)), average="macro") == pytest.approx(baseline)
    # The same seed draws the same mosaics; a non-empty destination is refused.
    again = tmp_path / "again"
    load_script().main([str(src), str(again), "--train", "6", "--test", "5", "--seed", "3"])
    assert (again / "train.csv").read_text() == (dst / "train.csv").read_text()
    with pytest.raises(SystemExit, match="exists and is not empty"):
        load_script().main([str(src), str(dst)])
