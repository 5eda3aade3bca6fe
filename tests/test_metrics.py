"""Per-class metrics, top-5, ECE and NLL (swin_cli/metrics.py) against scikit-learn and a
hand-written reference; summed over 2 gloo processes; the per-class report and the sweep table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import on_two_gloo_ranks

from swin_cli import class_report, report
from swin_cli.calibration import LogitCalibration
from swin_cli.metrics import ECE_BINS, ClassificationMeter, Scores, score_columns

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def made_predictions(seed: int, n: int = 300, classes: int = 8, ties: bool = False):
    """Logits and labels where class 3 is never a label, class 6 never predicted and class 7
    neither (so it is absent from sklearn's label set); ties=True rounds the logits to a few
    values, so that top-5 ranks meet ties."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    labels[(labels == 3) | (labels == 7)] = 0
    logits = torch.randn(n, classes, generator=generator) * 2
    logits[torch.arange(n), labels] += 1.5  # better than chance, so that recalls differ
    logits[:, 6] -= 20  # never the top class
    logits[:, 7] -= 30
    if ties:
        logits = logits.round()
    return logits, labels


def scored(logits: torch.Tensor, labels: torch.Tensor, batch: int = 64) -> Scores:
    meter = ClassificationMeter(logits.shape[1], torch.device("cpu"))
    for start in range(0, len(labels), batch):
        meter.update(logits[start:start + batch], labels[start:start + batch])
    return meter.scores()


def expected_ece(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Guo et al.'s ECE written out: 15 bins (i/15, (i+1)/15] of the top-1 probability, the
    gap between each bin's accuracy and mean confidence weighted by its share of images."""
    probs = logits.softmax(1).numpy().astype(np.float64)
    confidence, predicted = probs.max(1), probs.argmax(1)
    correct = predicted == labels.numpy()
    total = 0.0
    for i in range(ECE_BINS):
        inside = (confidence > i / ECE_BINS) & (confidence <= (i + 1) / ECE_BINS)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return 100 * total


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed,ties", [(0, False), (1, False), (2, True)])
def test_scores_equal_scikit_learn_with_absent_and_never_predicted_classes(seed, ties):
    logits, labels = made_predictions(seed, ties=ties)
    scores = scored(logits, labels)
    y_true, y_pred = labels.numpy(), logits.argmax(1).numpy()
    assert 3 not in y_true and 6 not in y_pred and 7 not in np.concatenate([y_true, y_pred])
    assert scores.images == len(labels)
    assert scores.acc == pytest.approx(100 * sklearn_metrics.accuracy_score(y_true, y_pred), abs=1e-9)
    assert scores.balanced_acc == pytest.approx(100 * sklearn_metrics.balanced_accuracy_score(y_true, y_pred),
                                                abs=1e-9)
    assert scores.macro_f1 == pytest.approx(100 * sklearn_metrics.f1_score(y_true, y_pred, average="macro",
                                                                            zero_division=0), abs=1e-9)
    assert scores.top5_acc == pytest.approx(100 * sklearn_metrics.top_k_accuracy_score(
        y_true, logits.numpy(), k=5, labels=range(logits.shape[1])), abs=1e-9)
    table = sklearn_metrics.classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    by_class = {str(row["class"]): row for row in scores.per_class}
    assert set(by_class) == {k for k in table if k.isdigit()}  # present in labels or predictions: not 7
    for name, row in by_class.items():
        want = table[name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (want["precision"], want["recall"], want["f1-score"]), abs=1e-9)
        assert row["support"] == want["support"]
    confusion = sklearn_metrics.confusion_matrix(y_true, y_pred, labels=range(8))
    assert torch.equal(scores.confusion, torch.tensor(confusion))
    loss = F.cross_entropy(logits.double(), labels).item()
    assert scores.loss == pytest.approx(loss, rel=1e-6) and scores.nll == scores.loss
    assert scores.ece == pytest.approx(expected_ece(logits, labels), abs=1e-9)


def test_ece_of_a_calibrated_and_an_overconfident_model_and_the_bins():
    # Each image predicted with confidence 0.9 (two classes: the logit gap is log 9); 90% right
    # is calibrated, 50% right is 40 points overconfident.
    logits = torch.tensor([[np.log(9.0), 0.0]] * 10, dtype=torch.float32)
    calibrated = scored(logits, torch.tensor([0] * 9 + [1]))
    over = scored(logits, torch.tensor([0] * 5 + [1] * 5))
    assert calibrated.ece == pytest.approx(0.0, abs=1e-4) and over.ece == pytest.approx(40.0, abs=1e-4)
    (full,) = [b for b in over.bins if b["count"]]
    assert over.bins.index(full) == 13 and full["count"] == 10  # 0.9 lies in (13/15, 14/15]
    assert full["accuracy"] == 0.5 and full["confidence"] == pytest.approx(0.9)
    assert over.top5_acc is None  # two classes: every label is in the top 5


def test_score_value_names_the_selectable_metrics_and_rows_hold_none_without_scores():
    scores = scored(*made_predictions(0))
    assert scores.value("balanced_acc") == scores.balanced_acc and scores.value("loss") == scores.loss
    with pytest.raises(ValueError, match="one of acc, balanced_acc, macro_f1, loss"):
        scores.value("ece")
    assert score_columns("val", scores)["val_top5_acc"] == scores.top5_acc
    assert score_columns("ema_val", None) == {f"ema_val_{k}": None for k in
                                              ("loss", "acc", "balanced_acc", "macro_f1", "top5_acc")}


def test_a_batch_update_reads_nothing_back_to_the_host():
    """update() queues its kernels without waiting for the device: no op that reads a value
    back (as in tests/test_device_paths.py), and no bincount, which on a GPU reads the largest
    label to size its output."""
    from torch.utils._python_dispatch import TorchDispatchMode

    host_reads = {"_local_scalar_dense", "item", "nonzero", "unique", "_unique2", "unique_consecutive", "equal",
                  "masked_select", "is_nonzero", "bincount"}

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    logits, labels = made_predictions(0)
    meter = ClassificationMeter(logits.shape[1], torch.device("cpu"))
    with Record() as record:
        meter.update(logits, labels)
    assert {"scatter_add_", "index_add_", "bucketize"} <= record.ops, sorted(record.ops)
    assert not host_reads & record.ops, host_reads & record.ops


def test_evaluate_split_scores_adjusted_logits_and_reads_the_class_count_from_them():
    from swin_cli.augment import Normalize
    from swin_cli.data import ImageSplit
    from swin_cli.evaluate import evaluate_split

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 7))
    images = torch.randint(0, 256, (20, 3, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 7, (20,))
    normalize = Normalize([0.5] * 3, [0.25] * 3, torch.device("cpu"))
    offset, temperature = torch.linspace(-1, 1, 7), 1.7
    with torch.no_grad():
        logits = model(normalize(images))
    got = evaluate_split(model, ImageSplit(images, labels), normalize, torch.device("cpu"), 8,
                         calibration=LogitCalibration(temperature, tuple(offset.tolist())))
    want = scored((logits - offset) / temperature, labels)
    assert got.confusion.shape == (7, 7) and torch.equal(got.confusion, want.confusion)
    assert got.nll == pytest.approx(want.nll, rel=1e-6) and got.ece == pytest.approx(want.ece, rel=1e-6)


def _meter_on_one_rank(rank: int, out: Path) -> dict:
    """One of two gloo processes: every other batch of the made predictions, summed over ranks."""
    logits, labels = made_predictions(3)
    meter = ClassificationMeter(logits.shape[1], torch.device("cpu"))
    for start in range(rank * 50, len(labels), 100):
        meter.update(logits[start:start + 50], labels[start:start + 50])
    scores = meter.scores()
    summary = {k: v for k, v in vars(scores).items() if k != "confusion"}
    return {**summary, "confusion": scores.confusion.tolist()}


def test_two_gloo_processes_sum_their_counts_into_the_scores_of_one(tmp_path):
    zero, one = on_two_gloo_ranks(_meter_on_one_rank, tmp_path)
    assert zero == one  # every rank gets the whole split's scores
    whole = scored(*made_predictions(3), batch=50)  # the same batches' float32 sums, added in another order
    assert zero["confusion"] == whole.confusion.tolist() and zero["images"] == whole.images == 300
    assert zero["per_class"] == whole.per_class
    for key in ("acc", "balanced_acc", "macro_f1", "top5_acc"):
        assert zero[key] == whole.value(key) if key != "top5_acc" else zero[key] == whole.top5_acc
    for key in ("loss", "nll", "ece"):
        assert zero[key] == pytest.approx(getattr(whole, key), rel=1e-12)


def test_per_class_csv_and_line_name_the_worst_and_when_imbalanced_the_rarest_class():
    rows = [{"class": "cat", "precision": 0.5, "recall": 0.2, "f1": 0.2857, "support": 10},
            {"class": "dog", "precision": 0.9, "recall": 0.95, "f1": 0.925, "support": 100},
            {"class": "fox", "precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 50}]
    assert class_report.to_csv(rows).splitlines() == [
        "class,precision,recall,f1,support", "cat,0.5000,0.2000,0.2857,10", "dog,0.9000,0.9500,0.9250,100",
        "fox,0.8000,0.7000,0.7500,50"]
    line = class_report.summary_line(rows)
    assert line == ("per class recall: worst cat (20.0%), fox (70.0%), dog (95.0%); best dog (95.0%) | "
                    "imbalanced 10:1 (test), rarest class cat (10 test images) | table in per_class.csv")
    # The training counts, when known, decide the rarest class and the ratio.
    line = class_report.summary_line(rows, [500, 5, 400], ["cat", "dog", "fox"])
    assert "imbalanced 100:1 (train), rarest class dog (5 train images)" in line
    balanced = [{**r, "support": 50} for r in rows]
    assert "uneven recall" in class_report.summary_line(balanced)  # cat's 20% is under half the mean
    even = [{**r, "support": 50, "recall": 0.8} for r in rows]
    assert class_report.imbalance(even) is None
    assert class_report.named([{"class": 1, "recall": 0.5}], ["a", "b"]) == [{"class": "b", "recall": 0.5}]


def test_sweep_table_has_the_new_scores_and_the_selected_metric_when_runs_record_one():
    rows = [{"job": "0", "overrides": "", "status": "ok", "best_val_acc": 50.0, "test_acc": 40.0,
             "test_balanced_acc": 35.5, "test_macro_f1": 30.25, "test_top5_acc": 90.0}]
    header = report.to_csv(rows).splitlines()[0].split(",")
    assert {"test_balanced_acc", "test_macro_f1", "test_top5_acc"} <= set(header)
    assert "select_metric" not in header
    rows[0].update(select_metric="balanced_acc", best_val_score=41.0)
    markdown = report.to_markdown(rows)
    assert "| select_metric | best_val_score |" in markdown and "| balanced_acc | 41.00 |" in markdown
    assert "test_map" not in header
    rows[0].update(test_map=61.5, test_f1=55.0)
    assert {"test_map", "test_f1"} <= set(report.to_csv(rows).splitlines()[0].split(","))


def test_sweep_rows_rank_by_the_score_that_chose_best_pt():
    ok = {"status": "ok"}
    rows = [{**ok, "job": "a", "select_metric": "loss", "best_val_score": 0.9},
            {**ok, "job": "b", "select_metric": "loss", "best_val_score": 0.5},
            {**ok, "job": "c", "best_val_acc": 70.0}, {**ok, "job": "d", "best_val_acc": 80.0}]
    ranked = sorted(rows, key=report._rank)
    assert [r["job"] for r in ranked[:2]] == ["d", "c"] and [r["job"] for r in ranked[2:]] == ["b", "a"]
