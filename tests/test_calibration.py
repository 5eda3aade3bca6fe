"""Temperature scaling and post-hoc logit adjustment (swin_cli/calibration.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from swin_cli.calibration import LogitCalibration, fit_temperature, from_prior


def overconfident(n=4000, classes=10, sharpen=3.0, seed=0):
    """Labels drawn from softmax(true logits), and the logits a model 3x too sure would give."""
    g = torch.Generator().manual_seed(seed)
    true_logits = torch.randn(n, classes, generator=g) * 1.5
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=g).squeeze(1)
    return true_logits * sharpen, labels


def test_the_fitted_temperature_minimises_the_nll_and_undoes_overconfidence():
    logits, labels = overconfident()
    t = fit_temperature(logits, labels, torch.device("cpu"))
    assert 2.6 < t < 3.4  # the logits were made 3x too sharp
    grid = torch.linspace(0.5, 6.0, 1101)
    nll = torch.stack([F.cross_entropy(logits / g, labels) for g in grid])
    best = float(grid[nll.argmin()])
    assert abs(t - best) < 0.01
    assert F.cross_entropy(logits / t, labels) < F.cross_entropy(logits, labels)


def test_calibration_applies_offset_then_temperature_and_round_trips():
    counts = [90, 9, 1]
    adjusted = from_prior(counts, 1.0)
    offset = adjusted.offset
    assert offset == pytest.approx([math.log(c / 100) for c in counts])
    calibration = adjusted.with_temperature(2.0)
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    expected = (logits - torch.tensor(offset)) / 2.0
    assert torch.allclose(calibration.apply(logits), expected)
    assert LogitCalibration.from_dict(calibration.to_dict()) == calibration
    assert LogitCalibration.from_dict(None).identity
    assert torch.equal(LogitCalibration().apply(logits), logits)


def test_an_empty_class_keeps_a_finite_offset_and_no_tau_or_counts_is_the_identity():
    assert all(math.isfinite(v) for v in from_prior([10, 0], 1.0).offset)
    assert from_prior([10, 1], None).identity and from_prior(None, 1.0).identity


@pytest.mark.e2e
def test_a_run_with_eval_calibrate_keeps_its_temperature_in_best_pt_and_reports_both_eces(tmp_path):
    from conftest import FAST, make_config

    from swin_cli import checkpoint
    from swin_cli.train import Trainer

    results = Trainer(make_config(*FAST, "epochs=2", "eval.calibrate=true", "eval.logit_adjust_tau=0.5"),
                      tmp_path / "run").fit()
    calibration = LogitCalibration.from_dict(results["calibration"])
    assert 0.05 < calibration.temperature < 20 and calibration.temperature != 1.0
    assert calibration.logit_adjust_tau == 0.5 and len(calibration.offset) == 10
    assert LogitCalibration.from_dict(checkpoint.load(tmp_path / "run" / "best.pt")["calibration"]) == calibration
    assert {"test_ece_uncalibrated", "test_nll_uncalibrated", "test_ece", "test_nll"} <= set(results)
    # swin-eval scores the checkpoint as the run's final test did: offset and temperature applied.
    from swin_cli.evaluate import evaluate_checkpoint

    (tmp_path / "eval").mkdir()
    evaluated = evaluate_checkpoint(make_config(*FAST, "mode=eval", f"ckpt={tmp_path / 'run'}"), tmp_path / "eval")
    assert evaluated["calibration"] == calibration.to_dict()
    assert evaluated["test_ece"] == pytest.approx(results["test_ece"], abs=1e-4)
    assert evaluated["test_nll"] == pytest.approx(results["test_nll"], abs=1e-4)
    # A tau on the command line replaces the saved offset and keeps the fitted temperature.
    retuned = evaluate_checkpoint(make_config(*FAST, "mode=eval", f"ckpt={tmp_path / 'run'}",
                                              "eval.logit_adjust_tau=1.0"), tmp_path / "eval")
    assert retuned["calibration"]["logit_adjust_tau"] == 1.0
    assert retuned["calibration"]["temperature"] == calibration.temperature
