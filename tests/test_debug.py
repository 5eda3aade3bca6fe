"""The debug config group: debug=fast, debug=overfit, debug=anomaly (and --help lists them)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL, make_config

from swin_cli import plots
from swin_cli.config import ConfigError, validate
from swin_cli.errors import NonFiniteLoss
from swin_cli.summary import augment_text
from swin_cli.train import Trainer

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e

FAST = [*TINY_MODEL, "data=digits", "threads=1", "log.progress=false"]


@pytest.fixture
def no_curves(monkeypatch):
    # The per-epoch curves plot costs more than a tiny model's epoch; these tests are not about it.
    monkeypatch.setattr(plots, "plot_curves", lambda *args, **kwargs: None)


def test_help_lists_the_debug_options():
    from swin_cli.help import help_text

    line = next(line for line in help_text().splitlines() if line.strip().startswith("debug:"))
    assert "anomaly" in line and "fast" in line and "overfit" in line and "(default: none)" in line


def test_debug_fast_runs_one_step_of_each_with_its_run_dir_under_the_temp_folder(tmp_path, monkeypatch, no_curves):
    from conftest import CONF
    from hydra import compose, initialize_config_dir

    from swin_cli.config import register_configs

    register_configs()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    overrides = ["debug=fast", *FAST, "data.eval_batch_size=100"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True).hydra
    # Where Hydra puts the run (and a sweep): the temp folder, not outputs/.
    assert hydra_cfg.run.dir.startswith(f"{tmp_path}/tmp/swin-cli-debug/20")
    assert hydra_cfg.sweep.dir.startswith(f"{tmp_path}/tmp/swin-cli-debug/multirun/20")

    trainer = Trainer(make_config(*overrides), tmp_path / "run")
    assert (len(trainer.data.train), len(trainer.data.val), len(trainer.data.test)) == (1294, 100, 100)
    results = trainer.fit()
    assert results["epochs"] == 1 and results["steps"] == 1
    assert sum(map(sum, results["test_confusion"])) == 100  # one eval batch of the test split


def test_debug_overfit_trains_the_same_few_batches_unaugmented(tmp_path, monkeypatch, no_curves):
    cfg = make_config("debug=overfit", *FAST, "aug=strong", "data.batch_size=16",
                      "epochs=2")
    validate(cfg)
    assert augment_text(cfg.aug) == "none" and cfg.model.drop_path_rate == 0 and cfg.train.ema.decay is None
    trainer = Trainer(cfg, tmp_path)
    assert trainer.steps_per_epoch == 4 and len(trainer.data.train) == 64
    assert trainer.data.val is trainer.data.train  # validated on the images it fits
    seen: list[torch.Tensor] = []
    step = trainer._train_step
    monkeypatch.setattr(trainer, "_train_step", lambda images, labels: (seen.append(labels), step(images, labels))[1])
    trainer.fit()
    assert len(seen) == 8 and all(torch.equal(a, b) for a, b in zip(seen[:4], seen[4:]))  # same batches, same order

    with pytest.raises(ConfigError, match=r"train.overfit_batches must be >= 1 or null \(got 0\)"):
        validate(make_config("debug=overfit", "train.overfit_batches=0"))


@pytest.mark.slow
def test_debug_overfit_fits_its_batches_to_100_percent(tmp_path, no_curves):
    """The preset as a user runs it (model=nano, data=digits): the model can fit 4 batches."""
    trainer = Trainer(make_config("debug=overfit", "data=digits", "threads=2", "log.progress=false"), tmp_path)
    trainer.fit()
    assert trainer.history[-1]["val_acc"] >= 99.0 and trainer.history[-1]["train_acc"] >= 95.0


def test_debug_anomaly_turns_on_anomaly_detection_and_names_the_backward_op(tmp_path, no_curves):
    enabled = []
    trainer = Trainer(make_config("debug=anomaly", *FAST, "epochs=1", "train.max_steps_per_epoch=2"), tmp_path / "a",
                      on_step=lambda t: enabled.append(torch.is_anomaly_enabled()))
    trainer.fit()
    assert enabled == [True, True] and not torch.is_anomaly_enabled()

    # A diverging run stops in the backward pass of the step that made the NaN, not at the next check.
    trainer = Trainer(make_config("debug=anomaly", *FAST, "epochs=1", "optimizer.lr=1e30", "log.interval=50"),
                      tmp_path / "b")
    with pytest.warns(UserWarning, match="Error detected in"), \
            pytest.raises(NonFiniteLoss, match=r"anomaly detection stopped step \d+ \(epoch 1\): Function '\w+' "
                                               r"returned nan values"):
        trainer.fit()
