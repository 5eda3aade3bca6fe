"""data.task=multilabel, the training side: the BCE loss and its positive weights, mixup/cutmix of
multi-hot targets, mAP / micro mAP / F1 / per-class AP equal to scikit-learn's (in one process
and summed over 2 gloo processes), per-class thresholds chosen for the best F1, the config keys
that need one class per image, and a tiny run end to end: results.json, thresholds in the
checkpoints, swin-eval, predict (torch and ONNX)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL, make_config, on_two_gloo_ranks
from PIL import Image

from swin_cli import checkpoint, thresholds
from swin_cli.augment import MixBatch
from swin_cli.config import ConfigError, validate
from swin_cli.errors import SwinCliError
from swin_cli.multilabel_loss import POS_WEIGHT_CAP, MultiLabelLoss, balanced_pos_weight
from swin_cli.multilabel_metrics import MultiLabelMeter, MultiLabelScores
from swin_cli.step import build_loss, hits

sklearn_metrics = pytest.importorskip("sklearn.metrics")
CPU = torch.device("cpu")


def made_predictions(seed: int, n: int = 240, classes: int = 6, ties: bool = False):
    """Logits and multi-hot labels where every class has positives, class 4 is rare and class 5
    never reaches 0.5 (no predictions: an undefined precision); ties=True rounds the logits to a
    few values, so that the rankings meet ties."""
    generator = torch.Generator().manual_seed(seed)
    rates = torch.tensor([0.5, 0.3, 0.4, 0.2, 0.04, 0.3])[:classes]
    labels = (torch.rand(n, classes, generator=generator) < rates).to(torch.uint8)
    labels[0] = 1  # every class has a positive
    logits = torch.randn(n, classes, generator=generator) + 1.5 * labels - 0.8
    logits[:, 5] -= 10
    if ties:
        logits = logits.round()
    return logits, labels


def metered(logits: torch.Tensor, labels: torch.Tensor, chosen=None, batch: int = 64) -> MultiLabelScores:
    meter = MultiLabelMeter(logits.shape[1], CPU, chosen)
    for start in range(0, len(labels), batch):
        meter.update(logits[start:start + batch], labels[start:start + batch])
    return meter.scores()


# ------------------------------------------------------------------------------- metrics


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
@pytest.mark.parametrize("seed,ties", [(0, False), (1, False), (2, True)])
def test_map_micro_map_f1_and_per_class_equal_scikit_learn(seed, ties):
    logits, labels = made_predictions(seed, ties=ties)
    chosen = [0.5, 0.4, 0.6, 0.5, 0.3, 0.5]
    got = metered(logits, labels, chosen)
    y, p = labels.numpy(), torch.sigmoid(logits).numpy()
    said = p >= np.array(chosen)
    assert got.map == pytest.approx(100 * sklearn_metrics.average_precision_score(y, p, average="macro"), abs=1e-10)
    assert got.map_micro == pytest.approx(100 * sklearn_metrics.average_precision_score(y, p, average="micro"),
                                          abs=1e-10)
    assert got.f1 == pytest.approx(100 * sklearn_metrics.f1_score(y, said, average="macro"), abs=1e-10)
    ap = sklearn_metrics.average_precision_score(y, p, average=None)
    precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(y, said, zero_division=0)
    assert [row["class"] for row in got.per_class] == list(range(6))
    for c, row in enumerate(got.per_class):
        assert row["ap"] == pytest.approx(ap[c], abs=1e-12)
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision[c], recall[c], f1[c]))
        assert row["support"] == support[c] and row["threshold"] == chosen[c]
    assert got.loss == pytest.approx(F.binary_cross_entropy_with_logits(logits, labels.float()).item(), rel=1e-6)
    assert got.images == 240 and got.thresholds == chosen and got.value("map") == got.map


def test_a_class_without_positives_is_left_out_of_map_and_has_no_ap():
    """sklearn would score it 0 and average it in; here mAP is sklearn's over the other classes."""
    logits, labels = made_predictions(3)
    labels[:, 2] = 0
    got = metered(logits, labels)
    y, p = labels.numpy(), torch.sigmoid(logits).numpy()
    kept = [0, 1, 3, 4, 5]
    assert got.per_class[2]["ap"] is None and got.per_class[2]["support"] == 0
    assert got.map == pytest.approx(100 * sklearn_metrics.average_precision_score(y[:, kept], p[:, kept]), abs=1e-10)
    # Micro mAP pools every (image, class) pair, the class without positives too: as sklearn does.
    assert got.map_micro == pytest.approx(100 * sklearn_metrics.average_precision_score(y, p, average="micro"),
                                          abs=1e-10)


def _meter_on_one_rank(rank: int, out: Path) -> dict:
    """One of two gloo processes: uneven shares of the made predictions (rank 0 holds 3 of
    every 4 batches), gathered into the scores of all of them."""
    logits, labels = made_predictions(4, ties=True)
    meter = MultiLabelMeter(logits.shape[1], CPU, [0.5, 0.4, 0.6, 0.5, 0.3, 0.5])
    for index, start in enumerate(range(0, len(labels), 20)):
        if (index % 4 != 3) == (rank == 0):
            meter.update(logits[start:start + 20], labels[start:start + 20])
    return vars(meter.scores())


def test_two_gloo_processes_gather_their_probabilities_into_the_scores_of_one(tmp_path):
    zero, one = on_two_gloo_ranks(_meter_on_one_rank, tmp_path)
    assert zero == one  # every rank gets the whole split's scores
    whole = metered(*made_predictions(4, ties=True), chosen=[0.5, 0.4, 0.6, 0.5, 0.3, 0.5])
    assert zero["images"] == whole.images == 240
    # Rankings and counts do not depend on the order of the rows; a sum over them may, in its last bit.
    for row, expected in zip(zero["per_class"], whole.per_class):
        assert row == {**expected, "ap": pytest.approx(expected["ap"], rel=1e-12)}
    for key in ("map", "map_micro", "f1"):
        assert zero[key] == pytest.approx(getattr(whole, key), rel=1e-12)
    assert zero["loss"] == pytest.approx(whole.loss, rel=1e-6)


# ------------------------------------------------------------------------------- thresholds


def test_thresholds_maximise_each_class_f1():
    # Class 0: the best cut takes the top two scores (F1 1 against 2*2 / (3 + 2) and 2*2 / (4 + 2) for
    # more), halfway between the second, 0.8, and the third, 0.6. Class 1: its top score, over 0.3.
    # Class 2 has no positives: 0.5. Class 3: its positive scores lowest, so every image is taken.
    probs = torch.tensor([[0.9, 0.2, 0.7, 0.6], [0.8, 0.9, 0.7, 0.7], [0.6, 0.1, 0.3, 0.8], [0.5, 0.3, 0.2, 0.1]],
                         dtype=torch.float64)
    truth = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    chosen = thresholds.choose(probs, truth)
    assert chosen == pytest.approx([0.7, 0.6, thresholds.DEFAULT, 0.1])
    # On random scores, no threshold on a fine grid beats the chosen one.
    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(300, 4, generator=generator) < 0.3
    probs = (torch.rand(300, 4, generator=generator) + 0.4 * truth).clamp(max=1).double().round(decimals=2)
    chosen = thresholds.choose(probs, truth)

    def f1(column: int, threshold: float) -> float:
        said = probs[:, column] >= threshold
        tp = (said & truth[:, column]).sum().item()
        return 2 * tp / (said.sum().item() + truth[:, column].sum().item())

    for c in range(4):
        best = max(f1(c, t / 1000) for t in range(1001))
        assert f1(c, chosen[c]) == pytest.approx(best)


def test_thresholds_from_a_checkpoint_or_sidecar_are_checked():
    assert thresholds.checked(None, 3, "x.pt") == [0.5, 0.5, 0.5]
    assert thresholds.checked([0.1, 0.9], 2, "x.pt") == [0.1, 0.9]
    with pytest.raises(SwinCliError, match=r"^run/best.pt holds 2 thresholds for its 3 classes; it needs one per"):
        thresholds.checked([0.1, 0.9], 3, "run/best.pt")
    with pytest.raises(SwinCliError, match="holds a threshold of 1.5; thresholds are probabilities"):
        thresholds.checked([0.1, 1.5], 2, "x.onnx.json")


# ------------------------------------------------------------------------------- loss, mixing, step


def test_the_loss_is_bce_with_logits_its_smoothing_and_its_positive_weights():
    train = make_config("data=csv", "data.task=multilabel").train
    logits, labels = made_predictions(5, n=16)
    loss = build_loss(train, mixing_active=False, multilabel=True)
    assert isinstance(loss, MultiLabelLoss)
    assert loss(logits, labels).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, labels.float()).item(), rel=1e-7)
    smoothed = build_loss(make_config("data=csv", "data.task=multilabel", "train.label_smoothing=0.2").train,
                          mixing_active=False, multilabel=True)
    assert smoothed(logits, labels).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, labels.float() * 0.8 + 0.1).item(), rel=1e-7)
    # Mixing folds the smoothing into the targets itself: the loss must not smooth them again.
    assert build_loss(make_config("data=csv", "data.task=multilabel", "train.label_smoothing=0.2").train,
                      mixing_active=True, multilabel=True).label_smoothing == 0.0
    weight = balanced_pos_weight([25, 5, 0, 1], images=200)
    assert weight.tolist() == pytest.approx([7.0, 39.0, POS_WEIGHT_CAP, POS_WEIGHT_CAP])
    weighted = build_loss(train, mixing_active=False, multilabel=True, pos_weight=weight)
    assert weighted(logits[:, :4], labels[:, :4]).item() == pytest.approx(F.binary_cross_entropy_with_logits(
        logits[:, :4], labels[:, :4].float(), pos_weight=weight).item(), rel=1e-7)


def test_step_counts_label_decisions_right_at_one_half():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, -0.1]])
    labels = torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.uint8)
    assert hits(logits, labels).item() == 4
    assert hits(logits, torch.tensor([0, 2])).item() == 1  # class indices: the top class as before


def mixing_cfg(**overrides):
    import types

    fields = dict(mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=1.0, mix_switch_prob=0.5)
    return types.SimpleNamespace(**{**fields, **overrides})


@pytest.mark.parametrize("kind", ["mixup_alpha", "cutmix_alpha"])
def test_mixup_and_cutmix_mix_multi_hot_targets(kind):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 16, 16, generator=generator)
    labels = (torch.rand(8, 5, generator=generator) < 0.4).to(torch.uint8)
    mix = MixBatch(mixing_cfg(**{kind: 1.0}), num_classes=5, label_smoothing=0.1)
    for seed in range(5):
        torch.manual_seed(seed)
        images, targets = mix(x, labels)
        # The partner's share of every image: 1 - lam of each pixel (mixup), or its box (cutmix).
        if kind == "mixup_alpha":
            share = ((images - x) / (x.flip(0) - x)).mean()
        else:
            share = (images == x.flip(0))[0, 0].float().mean()
        smooth = labels.float() * 0.9 + 0.05
        assert torch.allclose(targets, (1 - share) * smooth + share * smooth.flip(0), atol=1e-5)
    _, unmixed = MixBatch(mixing_cfg(), num_classes=5, label_smoothing=0.1)(x, labels)
    assert torch.allclose(unmixed, labels.float() * 0.9 + 0.05)


# ------------------------------------------------------------------------------- config


@pytest.mark.parametrize("key", ["train.class_weights=inverse", "train.logit_adjust_tau=1.0",
                                 "data.sampler=class_balanced", "eval.calibrate=true", "eval.logit_adjust_tau=1.0",
                                 "train.select_metric=balanced_acc"])
def test_keys_of_one_class_per_image_are_refused_for_multilabel_naming_the_key(tmp_path, key):
    cfg = make_config("data=csv", "data.task=multilabel", f"data.train_table={tmp_path}/t.csv",
                      f"data.test_table={tmp_path}/t.csv", key)
    with pytest.raises(ConfigError, match=rf"^{key.split('=')[0]}.* needs one class per image") as info:
        validate(cfg)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("key, message", [
    ("train.pos_weight=balanced", "train.pos_weight=balanced weighs the positive labels of data.task=multilabel"),
    ("train.select_metric=map", "train.select_metric=map is for data.task=multilabel"),
])
def test_multilabel_keys_are_refused_for_one_class_per_image(key, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_config("data=digits", key))


# ------------------------------------------------------------------------------- end to end

CLASSES = ["blue", "green", "red"]  # sorted, as the csv source orders label names


def write_colour_set(root: Path, n: int = 48) -> dict[str, Path]:
    """n tiny PNGs under root/images whose colour channels say their labels (channel c bright:
    class c present), in train/val/test tables of space-separated names."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    rows = []
    for i in range(n):
        present = [c for c in range(3) if rng.random() < 0.45] or [i % 3]
        pixels = np.full((12, 12, 3), 40, np.int16)
        for c in present:
            pixels[:, :, 2 - c] = 210  # RGB order: blue is channel 2
        pixels += rng.integers(-25, 26, pixels.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
        rows.append((f"images/{i}.png", " ".join(CLASSES[c] for c in present)))
    parts = {"train": rows[:32], "val": rows[32:40], "test": rows[40:]}
    for name, part in parts.items():
        with open(root / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows(part)
    return {name: root / f"{name}.csv" for name in parts}


def run_config(tmp_path: Path, tables: dict[str, Path], *extra: str):
    return make_config(*TINY_MODEL, "data=csv", "data.task=multilabel", *(f"data.{k}_table={v}" for k, v in
                                                                           tables.items()),
                       f"data.cache_dir={tmp_path / 'cache'}", "data.batch_size=8", "threads=1", "epochs=1",
                       "train.pos_weight=balanced", *extra)


@pytest.mark.e2e
def test_a_multilabel_run_tests_by_map_keeps_its_thresholds_and_predicts_label_sets(tmp_path):
    from swin_cli.data import eval_batch_size
    from swin_cli.evaluate import evaluate_checkpoint, predict_folder, split_probabilities
    from swin_cli.train import Trainer

    tables = write_colour_set(tmp_path)
    for folder in ("eval", "predict"):  # the run dirs Hydra would make
        (tmp_path / folder).mkdir()
    trainer = Trainer(run_config(tmp_path, tables, "aug.mixup_alpha=0.4", "train.label_smoothing=0.1"),
                      tmp_path / "run")
    results = trainer.fit()
    assert trainer.select_metric == "map" and trainer.label_counts == trainer.data.train.labels.sum(0).tolist()
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    for key in ("test_map", "test_map_micro", "test_f1", "test_loss"):
        assert isinstance(saved[key], float) and saved[key] == results[key]
    assert "test_acc" not in saved and saved["select_metric"] == "map" and saved["best_val_map"] is not None
    assert [row["class"] for row in saved["test_per_class"]] == CLASSES and "ap" in saved["test_per_class"][0]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "val_map" in header and "train_label_acc" in header and "val_acc" not in header
    # The thresholds: the best F1 on the validation probabilities of the best weights, in both checkpoints.
    chosen = saved["thresholds"]
    assert len(chosen) == 3 and all(0 <= t <= 1 for t in chosen)
    for name in ("best.pt", "last.pt"):
        assert checkpoint.load(tmp_path / "run" / name)["thresholds"] == chosen
    probs, truth = split_probabilities(trainer.model, trainer.data.val, trainer.step.prepare.normalize, CPU,
                                       eval_batch_size(trainer.cfg.data), 3)
    assert thresholds.choose(probs, truth) == chosen
    # swin-eval scores the checkpoint as the run's test did, at its thresholds.
    evaluated = evaluate_checkpoint(make_config("mode=eval", f"ckpt={tmp_path / 'run'}", "threads=1"),
                                    tmp_path / "eval")
    assert evaluated["thresholds"] == chosen
    for key in ("test_map", "test_map_micro", "test_f1"):
        assert evaluated[key] == pytest.approx(saved[key], abs=1e-9)
    # predict: each image's label set (the classes at or over their thresholds) and every probability.
    out = predict_folder(make_config("mode=predict", f"ckpt={tmp_path / 'run'}",
                                     f"predict_dir={tmp_path / 'images'}", "threads=1"), tmp_path / "predict")
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "labels", "p_blue", "p_green", "p_red"] and len(rows) == 48
    for row in rows:
        probs = [float(row[f"p_{name}"]) for name in CLASSES]
        if all(abs(p - t) > 1e-4 for p, t in zip(probs, chosen)):  # the 4 decimals shown decide it
            assert row["labels"] == " ".join(name for name, p, t in zip(CLASSES, probs, chosen) if p >= t)


@pytest.mark.e2e
def test_a_bad_thresholds_list_stops_eval_and_predict_in_one_line(tmp_path):
    from swin_cli.evaluate import evaluate_checkpoint, predict_folder
    from swin_cli.train import Trainer

    tables = write_colour_set(tmp_path, n=44)
    Trainer(run_config(tmp_path, tables, "train.max_steps_per_epoch=1"), tmp_path / "run").fit()
    for folder in ("eval", "predict"):
        (tmp_path / folder).mkdir()
    best = checkpoint.load(tmp_path / "run" / "best.pt")
    checkpoint.write({**{k: v for k, v in best.items() if k != "path"}, "thresholds": [0.5, 0.5]},
                     tmp_path / "run" / "best.pt")
    message = r"best.pt holds 2 thresholds for its 3 classes"
    with pytest.raises(SwinCliError, match=message):
        evaluate_checkpoint(make_config("mode=eval", f"ckpt={tmp_path / 'run'}", "threads=1"), tmp_path / "eval")
    with pytest.raises(SwinCliError, match=message):
        predict_folder(make_config("mode=predict", f"ckpt={tmp_path / 'run'}", f"predict_dir={tmp_path / 'images'}",
                                   "threads=1"), tmp_path / "predict")


@pytest.mark.e2e
def test_onnx_predict_gives_the_label_sets_of_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from swin_cli.evaluate import predict_folder
    from swin_cli.export import export
    from swin_cli.train import Trainer

    tables = write_colour_set(tmp_path, n=44)
    Trainer(run_config(tmp_path, tables, "train.max_steps_per_epoch=2"), tmp_path / "run").fit()
    meta = export({"ckpt": str(tmp_path / "run"), "format": "onnx", "out": None, "batch": 4, "opset": None,
                   "exporter": "legacy"})
    assert meta["task"] == "multilabel" and meta["label_separator"] == " "
    assert meta["thresholds"] == checkpoint.load(tmp_path / "run" / "best.pt")["thresholds"]
    label_sets = {}
    for backend in ("torch", "onnx"):
        (tmp_path / backend).mkdir()
        out = predict_folder(make_config("mode=predict", f"ckpt={tmp_path / 'run'}",
                                         f"predict_dir={tmp_path / 'images'}", f"predict_backend={backend}",
                                         "threads=1"), tmp_path / backend)
        label_sets[backend] = [(row["path"], row["labels"]) for row in csv.DictReader(out.open())]
    assert label_sets["onnx"] == label_sets["torch"]
