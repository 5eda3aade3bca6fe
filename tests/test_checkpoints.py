"""best.pt holds what evaluation, export and fine-tuning need, and nothing a resume needs."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_MODEL, make_config
from swin_cli import checkpoint
from swin_cli.build import build_model, model_from_checkpoint
from swin_cli.errors import SwinCliError
from swin_cli.train import Trainer
from swin_cli.weights import read_weights


def test_best_pt_keeps_the_weights_without_the_training_state_and_every_reader_works(tmp_path):
    cfg = make_config(*TINY_MODEL, "data=digits", "epochs=1", "train.max_steps_per_epoch=2", "threads=1",
                      "train.ema.decay=0.5")
    results = Trainer(cfg, tmp_path / "run").fit()
    best_path, last_path = tmp_path / "run" / "best.pt", tmp_path / "run" / "last.pt"
    best, last = checkpoint.load(best_path), checkpoint.load(last_path)
    for key in ("optimizer", "scheduler", "scaler", "rng", "running", "history"):
        assert key in last and key not in best, key
    for key in ("config", "signature", "classes", "mean", "std", "model", "ema", "best_source", "format_version"):
        assert key in best, key
    assert best_path.stat().st_size < 0.8 * last_path.stat().st_size  # AdamW's two moments are gone

    # swin-eval / mode=predict / swin-export rebuild the model from it, with the best weights ...
    model = model_from_checkpoint(best)
    assert all(torch.equal(v, checkpoint.best_weights(best)[k]) for k, v in model.state_dict().items())
    assert results["best_weights"] == best["best_source"]
    # ... and model.pretrained= takes it as a starting point.
    weights, _ = read_weights(str(best_path))
    fresh = build_model(cfg.model, cfg.data.image_size, 1, 10, pretrained=False)
    fresh.load_state_dict(weights)

    # Resuming reads last.pt; pointed at best.pt it says so in one line.
    with pytest.raises(SwinCliError, match=r"best.pt holds only the best weights.*resume from .*last.pt"):
        Trainer(make_config(*TINY_MODEL, "data=digits", "epochs=2", f"resume={best_path}"), tmp_path / "again")
