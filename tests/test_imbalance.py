"""Imbalanced classes: class counts, class-weighted and logit-adjusted losses, deferred
re-weighting, the class-balanced sampler, the start panel's class line, their config checks, and
the long-tailed folder maker."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST, ROOT, IndexedImages, make_config

from swin_cli import checkpoint, imbalance
from swin_cli.config import ConfigError, validate
from swin_cli.data import EpochPlan, ImageSplit, StreamSplit, epoch_order
from swin_cli.data.class_counts import class_counts
from swin_cli.data.transforms import RandomResizedCrop
from swin_cli.data.webdataset import ShardSplit
from swin_cli.step import build_loss
from swin_cli.summary import class_lines


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- class counts

def test_class_counts_from_memory_and_stream_labels_and_none_for_shards():
    labels = torch.tensor([0, 2, 2, 1, 2])
    memory = ImageSplit(torch.zeros(5, 1, 2, 2, dtype=torch.uint8), labels)
    assert class_counts(memory, 4) == [1, 1, 3, 0]
    stream_like = SimpleNamespace(labels=torch.as_tensor(labels.tolist()))  # StreamSplit's .labels property
    assert class_counts(stream_like, 3) == [1, 1, 3]
    assert not hasattr(ShardSplit, "labels")  # webdataset meets its labels only while reading
    assert class_counts(SimpleNamespace(), 3) is None


# --------------------------------------------------------------------------------- weights

def test_inverse_and_effective_number_weights_by_hand():
    counts = [100, 10, 1]
    inverse = imbalance.class_weights(counts, "inverse")
    raw = [1 / 100, 1 / 10, 1.0]
    assert inverse.tolist() == pytest.approx([r / (sum(raw) / 3) for r in raw])
    beta = 0.9
    effective = imbalance.class_weights(counts, "effective", beta)
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]
    assert effective.tolist() == pytest.approx([r / (sum(raw) / 3) for r in raw])
    assert effective.mean().item() == pytest.approx(1.0) and inverse.mean().item() == pytest.approx(1.0)
    assert imbalance.class_weights(counts, "none") is None
    # Effective numbers lie between no weighting (beta -> 0) and inverse frequency (beta -> 1).
    assert imbalance.class_weights(counts, "effective", 1e-9).tolist() == pytest.approx([1, 1, 1])
    assert imbalance.class_weights(counts, "effective", 1 - 1e-9).tolist() == pytest.approx(inverse.tolist(), rel=1e-4)


def test_weighted_loss_weights_each_class_term_with_smoothing_and_soft_targets():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    weights = torch.tensor([0.5, 1.0, 1.5])
    smoothing = 0.1
    loss = imbalance.ImbalancedLoss(weights, None, smoothing)
    log_p = logits.log_softmax(1)
    target = F.one_hot(labels, 3) * (1 - smoothing) + smoothing / 3
    by_hand = -(weights * target * log_p).sum(1).mean()
    assert loss(logits, labels).item() == pytest.approx(by_hand.item(), rel=1e-6)
    soft = torch.softmax(torch.randn(6, 3), 1)  # mixup/cutmix targets (smoothing folded in already)
    mixed = imbalance.ImbalancedLoss(weights, None, 0.0)
    assert mixed(logits, soft).item() == pytest.approx(-(weights * soft * log_p).sum(1).mean().item(), rel=1e-6)


def test_logit_adjusted_loss_is_cross_entropy_on_shifted_logits():
    counts, tau = [50, 30, 20], 1.0
    offset = imbalance.logit_offset(counts, tau)
    assert offset.tolist() == pytest.approx([math.log(n / 100) for n in counts])
    torch.manual_seed(1)
    logits, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    loss = imbalance.build_imbalanced_loss(make_config(*FAST, "train.logit_adjust_tau=1.0").train, 0.0, counts)
    assert torch.equal(loss(logits, labels), F.cross_entropy(logits + offset, labels))
    half = imbalance.logit_offset(counts, 0.5, "cpu")
    assert torch.allclose(half, offset / 2)


def test_plain_settings_keep_torch_cross_entropy():
    train = make_config(*FAST, "train.label_smoothing=0.1").train
    loss = build_loss(train, mixing_active=False, class_counts=[5, 1])
    assert isinstance(loss, torch.nn.CrossEntropyLoss) and loss.label_smoothing == 0.1
    weighted = build_loss(make_config(*FAST, "train.class_weights=inverse").train, False, [5, 1])
    assert isinstance(weighted, imbalance.ImbalancedLoss)


def test_deferred_reweighting_switches_at_the_epoch():
    counts = [90, 10]
    train = make_config(*FAST, "train.class_weights=inverse", "train.reweight_from_epoch=2").train
    loss = build_loss(train, False, counts)
    torch.manual_seed(2)
    logits, labels = torch.randn(8, 2), torch.tensor([0, 1] * 4)
    weighted = F.cross_entropy(logits, labels, weight=imbalance.class_weights(counts, "inverse"), reduction="none")
    for epoch, expected in ((0, F.cross_entropy(logits, labels)), (1, F.cross_entropy(logits, labels)),
                            (2, weighted.mean()), (5, weighted.mean())):
        imbalance.start_epoch(loss, epoch)
        assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6), epoch
    imbalance.start_epoch(torch.nn.CrossEntropyLoss(), 3)  # other losses ignore it


# --------------------------------------------------------------------------------- sampler

def imbalanced_labels() -> torch.Tensor:
    return torch.tensor([0] * 900 + [1] * 90 + [2] * 10)


def test_class_balanced_order_draws_classes_equally_and_is_seeded_by_seed_and_epoch():
    labels = imbalanced_labels()
    weights = imbalance.sample_weights(labels, class_counts(SimpleNamespace(labels=labels), 3))
    plan = EpochPlan(3, 4, 50, 20, weights=weights)
    order = plan.order(len(labels))
    assert len(order) == len(labels)
    shares = torch.bincount(labels[order], minlength=3).double() / len(order)
    assert torch.allclose(shares, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.05)
    assert torch.equal(order, EpochPlan(3, 4, 50, 20, weights=weights).order(len(labels)))
    assert not torch.equal(order, EpochPlan(3, 5, 50, 20, weights=weights).order(len(labels)))
    assert not torch.equal(order, EpochPlan(4, 4, 50, 20, weights=weights).order(len(labels)))
    with pytest.raises(ValueError, match="1000 sampling weights for a split of 999"):
        plan.order(999)


def test_uniform_order_is_unchanged():
    for shuffle in (True, False):
        plan = EpochPlan(7, 2, 10, 5, shuffle=shuffle)
        assert torch.equal(plan.order(100), epoch_order(100, 7, 2) if shuffle else torch.arange(100))


def test_ranks_take_disjoint_slices_of_one_balanced_order_in_both_storages():
    n, world, rank_images = 40, 2, 5
    steps = n // (rank_images * world)
    index = torch.arange(n)  # a label is the sample's own index, so batches show the order
    weights = imbalance.sample_weights(torch.tensor([0] * 30 + [1] * 10), [30, 10])

    memory = ImageSplit(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), index)
    stream = StreamSplit(IndexedImages(n), RandomResizedCrop(4, 1), channels=1, workers=0, prefetch=1)
    order = EpochPlan(5, 1, rank_images, steps, weights=weights).order(n)
    for split in (memory, stream):
        per_rank = [[y for _, y in split.train_batches(EpochPlan(5, 1, rank_images, steps, 0, rank, world,
                                                                 weights=weights))] for rank in range(world)]
        # Step s: rank 0 takes the first rank_images of the step's positions, rank 1 the next.
        interleaved = torch.cat([torch.cat([per_rank[0][s], per_rank[1][s]]) for s in range(steps)])
        assert torch.equal(interleaved, order)
        # Resuming at step 2 replays the same batches from there.
        resumed = [y for _, y in split.train_batches(EpochPlan(5, 1, rank_images, steps, 2, 0, world,
                                                               weights=weights))]
        assert all(torch.equal(a, b) for a, b in zip(resumed, per_rank[0][2:]))


# ------------------------------------------------------------------------------ start panel

def test_class_line_lists_up_to_ten_classes_and_suggests_keys_when_imbalanced():
    cfg = make_config(*FAST)
    labels = imbalanced_labels()
    data = SimpleNamespace(train=ImageSplit(torch.zeros(len(labels), 1, 1, 1, dtype=torch.uint8), labels),
                           num_classes=3)
    lines = dict(class_lines(cfg, data))
    assert lines["classes"] == "900, 90, 10; imbalance 90x"
    assert "train.logit_adjust_tau=1.0" in lines["imbalance"] and "eval.logit_adjust_tau=1.0" in lines["imbalance"]
    assert "imbalance" not in dict(class_lines(make_config(*FAST, "train.logit_adjust_tau=1.0"), data))
    many = list(range(1, 13))
    assert imbalance.counts_text(many) == "min 1, median 7, max 12; imbalance 12x"
    assert imbalance.counts_text([5, 0]) == "5, 0; a class has no training images"
    assert imbalance.suggestion(cfg, [10, 9, 2]) is None  # ratio 5: nothing to suggest
    assert "classes" not in dict(class_lines(cfg, SimpleNamespace(train=SimpleNamespace(), num_classes=3)))


# ---------------------------------------------------------------------------------- config

@pytest.mark.parametrize("overrides, message", [
    (["train.class_weight_beta=1.0"], "train.class_weight_beta must be in (0, 1) (got 1.0)"),
    (["train.reweight_from_epoch=-1", "train.class_weights=inverse"], "train.reweight_from_epoch must be >= 0"),
    (["train.reweight_from_epoch=3"], "train.reweight_from_epoch=3 defers class weights: set train.class_weights"),
    (["train.logit_adjust_tau=0"], "train.logit_adjust_tau must be > 0 or null"),
    (["eval.logit_adjust_tau=-1"], "eval.logit_adjust_tau must be > 0 or null"),
    (["data=webdataset", "data.train_urls=/x/a.tar", "data.sampler=class_balanced"],
     "data.sampler=class_balanced needs random access"),
])
def test_bad_imbalance_settings_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        validate(make_config(*overrides))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_choices_name_the_allowed_values():
    with pytest.raises(Exception) as info:
        make_config("train.class_weights=square")
    assert "none, inverse, effective" in str(info.value.__cause__)
    with pytest.raises(Exception) as info:
        make_config("data.sampler=balanced")
    assert "uniform, class_balanced" in str(info.value.__cause__)


def test_options_that_need_counts_fail_in_one_line_when_the_data_cannot_count():
    cfg = make_config(*FAST, "data.sampler=class_balanced")
    with pytest.raises(ConfigError, match=r"^data.sampler=class_balanced needs the training split's class counts"):
        imbalance.require_counts(cfg, None)
    imbalance.require_counts(cfg, [3, 4])
    imbalance.require_counts(make_config(*FAST), None)  # nothing needs them


def test_imbalanced_experiment_is_the_nano_recipe_with_logit_adjustment():
    nano, lt = make_config("experiment=cifar10_nano"), make_config("experiment=imbalanced")
    assert lt.train.logit_adjust_tau == 1.0
    lt.train.logit_adjust_tau = None
    assert lt == nano


# -------------------------------------------------------------------------------- trainer

def run_epoch(tmp_path: Path, name: str, *overrides: str):
    from swin_cli.train import Trainer

    trainer = Trainer(make_config(*FAST, "epochs=1", *overrides), tmp_path / name)
    return trainer, trainer.fit()


@pytest.mark.e2e
def test_each_option_trains_and_plain_settings_match_the_default_run(tmp_path):
    default, default_results = run_epoch(tmp_path, "default")
    trainer, results = run_epoch(tmp_path, "plain", "train.class_weights=none", "data.sampler=uniform")
    first_loss = default.history[0]["train_loss"]
    assert trainer.history[0]["train_loss"] == first_loss and results["test_acc"] == default_results["test_acc"]
    counts = torch.bincount(trainer.data.train.labels.cpu(), minlength=10).tolist()
    assert trainer.class_counts == counts
    assert checkpoint.load(tmp_path / "plain" / "last.pt")["class_counts"] == counts
    losses = {}
    for option in ("train.class_weights=inverse", "train.class_weights=effective", "train.logit_adjust_tau=1.0",
                   "data.sampler=class_balanced", "eval.logit_adjust_tau=1.0"):
        trainer, _ = run_epoch(tmp_path, option.replace("=", "-"), option)
        losses[option] = trainer.history[0]["train_loss"]
        assert math.isfinite(losses[option])
    # eval.logit_adjust_tau: evaluation subtracts tau * log(prior) of the counts
    assert trainer.calibration.offset == pytest.approx(imbalance.logit_offset(trainer.class_counts, 1.0).tolist())
    assert losses["data.sampler=class_balanced"] != first_loss  # a new order
    assert losses["train.logit_adjust_tau=1.0"] != first_loss


@pytest.mark.e2e
def test_deferred_reweighting_in_a_run_switches_at_its_epoch(tmp_path):
    seen: dict[int, bool] = {}
    from swin_cli.train import Trainer

    trainer = Trainer(make_config(*FAST, "epochs=3", "train.class_weights=inverse", "train.reweight_from_epoch=1"),
                      tmp_path, on_step=lambda t: seen.setdefault(t.epoch, t.step.criterion.weighted))
    trainer.fit()
    assert seen == {0: False, 1: True, 2: True}


# ---------------------------------------------------------------------- long-tailed maker

def test_long_tailed_counts_for_cifar10_at_ratio_100():
    maker = load_script("make_long_tailed")
    counts = maker.kept_counts([5000] * 10, 100)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] and sum(counts) == 12_406


def test_long_tailed_folder_is_symlinks_to_the_first_files(tmp_path, capsys):
    src = tmp_path / "src"
    for part in ("train", "test"):
        for name in ("b_dog", "a_cat", "c_eel"):
            folder = src / part / name
            folder.mkdir(parents=True)
            for i in range(8):
                (folder / f"{i:02d}.jpg").write_bytes(b"x")
    maker = load_script("make_long_tailed")
    maker.main([str(src), str(tmp_path / "lt"), "--ratio", "4"])
    assert "a_cat  8" in capsys.readouterr().out
    train = tmp_path / "lt" / "train"
    kept = {name: sorted(p.name for p in (train / name).iterdir()) for name in ("a_cat", "b_dog", "c_eel")}
    assert kept == {"a_cat": [f"{i:02d}.jpg" for i in range(8)], "b_dog": ["00.jpg", "01.jpg", "02.jpg", "03.jpg"],
                    "c_eel": ["00.jpg", "01.jpg"]}
    assert (train / "c_eel" / "01.jpg").is_symlink()
    assert (train / "c_eel" / "01.jpg").resolve() == (src / "train" / "c_eel" / "01.jpg").resolve()
    assert (tmp_path / "lt" / "test").is_symlink() and len(list((tmp_path / "lt" / "test" / "b_dog").iterdir())) == 8
    with pytest.raises(SystemExit, match="exists and is not empty"):
        maker.main([str(src), str(tmp_path / "lt")])


def test_the_closing_line_names_the_metric_that_chose_best_pt():
    from swin_cli.records import best_val_text

    row = {"best_val_acc": 48.75, "best_val_score": 41.338, "best_epoch": 9}
    assert best_val_text({**row, "select_metric": "balanced_acc"}) == "best val bal 41.34% (epoch 9)"
    assert best_val_text({**row, "select_metric": "acc"}) == "best val acc 48.75% (epoch 9)"
    assert best_val_text(row) == "best val acc 48.75% (epoch 9)"  # results from before select_metric
    by_loss = {**row, "select_metric": "loss", "best_val_score": 1.23456}
    assert best_val_text(by_loss) == "best val loss 1.2346 (epoch 9)"
