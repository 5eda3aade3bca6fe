"""What a run does after its last epoch, with the best weights loaded: choose a multi-label
model's per-class thresholds and fit eval.calibrate's temperature on validation, each kept in
the checkpoints so that swin-eval, predict and swin-export score as the test did; the test's
results.json keys; and checkpoint.average's test of the averaged top epochs. train.py's
Trainer calls these in that order (_finish); the scoring itself is evaluate.py's."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from swin_cli import checkpoint, distributed, thresholds, top_checkpoints
from swin_cli.calibration import LogitCalibration, fit_temperature
from swin_cli.config import plain
from swin_cli.data import Split
from swin_cli.evaluate import NEW_SCORES, EvalSetup, Evaluator
from swin_cli.loop_state import LoopState
from swin_cli.multilabel_metrics import RESULT_SCORES as MULTILABEL_SCORES
from swin_cli.multilabel_metrics import MultiLabelScores, scores_from_probabilities
from swin_cli.text import plural

log = logging.getLogger("swin_cli")


def amend_checkpoints(run_dir: Path, values: dict[str, Any], names: Sequence[str], write: bool) -> None:
    """Set `values` in the run dir's checkpoints `names` (those that exist), rewritten
    atomically by the process that `write`s (the main one); every rank waits until they are on
    disk."""
    if write:
        for path in (run_dir / name for name in names):
            if path.is_file():
                state = {key: value for key, value in checkpoint.load(path).items() if key != "path"}
                checkpoint.write({**state, **values}, path)
    distributed.barrier()


def choose_thresholds(model: nn.Module, val: Split, setup: EvalSetup,
                      current: Sequence[float]) -> Optional[list[float]]:
    """Multi-label: each class's threshold chosen for the best F1 on the validation split
    (thresholds.py); None without a validation split, where every class keeps `current`."""
    if len(val) == 0:
        log.warning("no validation split to choose the per-class thresholds on: every class keeps 0.5")
        return None
    probs, truth = setup.probabilities(model, val)
    chosen = thresholds.choose(probs, truth)
    before = scores_from_probabilities(probs, truth, current, 0.0).f1
    after = scores_from_probabilities(probs, truth, chosen, 0.0).f1
    log.info(f"per-class thresholds chosen for the best F1 on {plural(len(probs), 'validation image')}: "
             f"{thresholds.describe(chosen)}; validation F1 {before:.2f}% at 0.5, {after:.2f}% at them")
    return chosen


def fit_calibration(model: nn.Module, val: Split, test: Split, setup: EvalSetup, calibration: LogitCalibration,
                    evaluator: Evaluator) -> tuple[LogitCalibration, dict[str, Any]]:
    """eval.calibrate: `calibration` with a temperature fitted on the validation split, and the
    test's ECE and NLL before it (results.json keys, for the record); unchanged and {} without
    a validation split."""
    if len(val) == 0:
        log.warning("eval.calibrate: no validation split to fit a temperature on; the scores stay uncalibrated")
        return calibration, {}
    before = evaluator(model, test, False)
    batches = list(setup.logits(model, val))
    logits = torch.cat([logits for logits, _ in batches])
    labels = torch.cat([labels for _, labels in batches])
    # Fitted on the logits as scored without a temperature (any logit adjustment applied).
    temperature = fit_temperature(calibration.with_temperature(1.0).apply(logits), labels, setup.device)
    log.info(f"temperature scaling: T = {temperature:.3f}, fitted on {plural(len(val), 'validation image')}; "
             f"test before it: ECE {before.ece:.2f}%, NLL {before.nll:.4f} (after it: the line below)")
    return (calibration.with_temperature(temperature),
            {"test_ece_uncalibrated": before.ece, "test_nll_uncalibrated": before.nll})


def test_keys(test: Any, loop: LoopState, label_counts: Optional[list[int]]) -> dict[str, Any]:
    """results.json's keys for the test scores `test`: test_<metric> of the task, and the
    confusion matrix of one class per image; for multi-hot labels, which have none, the
    thresholds the test applied, the best epoch's validation mAP and the label counts."""
    if not isinstance(test, MultiLabelScores):
        return {"test_acc": test.acc, "test_loss": test.loss,
                **{f"test_{key}": getattr(test, key) for key in NEW_SCORES}, "test_confusion": test.confusion.tolist()}
    best = loop.history[loop.best_epoch - 1] if loop.best_epoch else {}
    prefix = "ema_val" if loop.best_source == "ema" else "val"
    return {**{f"test_{key}": getattr(test, key) for key in MULTILABEL_SCORES}, "test_loss": test.loss,
            "thresholds": test.thresholds, "best_val_map": best.get(f"{prefix}_map"),
            "train_label_counts": label_counts}


def test_average(cfg: Any, run_dir: Path, loop: LoopState, model: nn.Module, test: Split, evaluator: Evaluator,
                 chosen: Optional[Sequence[float]], write: bool) -> dict[str, Any]:
    """checkpoint.average: average the best kept epochs' weights into average.pt and test them
    (loaded into `model`), after the best weights' test; the results as test_<metric>_average
    keys. A multi-label model (`chosen`: its thresholds) is tested at the thresholds chosen for
    the best weights, and average.pt keeps them."""
    count = cfg.checkpoint.average
    if count is None:
        return {}
    path = run_dir / top_checkpoints.AVERAGE
    if write:
        path.unlink(missing_ok=True)  # one from an earlier part of a resumed run
        top_checkpoints.write_average(run_dir, loop.top, count, plain(cfg.checkpoint.average_weights))
    distributed.barrier()  # average.pt is on disk before any rank reads it
    if not path.is_file():
        return {}
    if chosen is not None:
        amend_checkpoints(run_dir, {"thresholds": list(chosen)}, [top_checkpoints.AVERAGE], write)
    model.load_state_dict(checkpoint.best_weights(checkpoint.load(path)))
    results = top_checkpoints.average_results(evaluator(model, test, True))
    key, name = ("acc", "acc") if chosen is None else ("map", "mAP")
    log.info(f"average of the top {min(count, len(loop.top))}: test {name} "
             f"{results[f'test_{key}_average']:.2f}% (loss {results['test_loss_average']:.4f}) | {path}")
    return results
