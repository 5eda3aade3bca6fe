"""Experiment trackers a run reports to besides its own files: TensorBoard and MLflow.

Each tracker takes the config once, a row per epoch, and the results and files at the end, so
the loop calls one interface whatever `logger=` names. Both are optional extras; asking for one
that is not installed fails at start with the pip command that installs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from swin_cli.config import logger_names
from swin_cli.errors import SwinCliError

# What a run leaves behind that a tracker should keep, besides the checkpoints.
ARTIFACTS = ("results.json", "metrics.csv", "curves.png", "lr.png", "confusion.png")


class Tracker:
    def epoch(self, row: dict[str, Any], epoch: int) -> None: ...

    def finish(self, results: dict[str, Any], run_dir: Path) -> None: ...

    def abort(self) -> None:
        """The run stopped without finishing (interrupted, failed)."""


class TensorBoardTracker(Tracker):
    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SwinCliError('logger=tensorboard needs TensorBoard: pip install "swin-cli[tensorboard]"') from None
        self.writer = SummaryWriter(str(run_dir / "tb"))

    def epoch(self, row: dict[str, Any], epoch: int) -> None:
        for key, value in row.items():
            if key != "epoch" and value is not None:
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def finish(self, results: dict[str, Any], run_dir: Path) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.close()


def default_tracking_uri(outputs: Path = Path("outputs")) -> str:
    """A SQLite store under outputs/mlruns (MLflow 3 keeps its plain-file store read-mostly)."""
    folder = (outputs / "mlruns").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


class MlflowTracker(Tracker):
    """One MLflow run per swin-train run: the flattened config as params, every epoch's row as
    metrics (step = epoch), results.json and the plots as artifacts."""

    def __init__(self, cfg: Any, run_dir: Path, experiment: str, run_name: str):
        try:
            import mlflow
        except ImportError:
            raise SwinCliError('logger=mlflow needs MLflow: pip install "swin-cli[mlflow]"') from None
        self.mlflow = mlflow
        uri = cfg.log.tracking_uri or default_tracking_uri()
        mlflow.set_tracking_uri(uri)
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            # Artifacts beside a local SQLite store rather than in the current folder.
            location = (str(Path(uri[len("sqlite:///"):]).parent / "artifacts" / experiment)
                        if uri.startswith("sqlite:///") else None)
            experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            experiment_id = found.experiment_id
        self.run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name)
        mlflow.log_params(flat_params(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)))
        mlflow.set_tag("run_dir", str(run_dir))

    def epoch(self, row: dict[str, Any], epoch: int) -> None:
        metrics = {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
        self.mlflow.log_metrics(metrics, step=epoch)

    def finish(self, results: dict[str, Any], run_dir: Path) -> None:
        self.mlflow.log_metrics({k: float(results[k]) for k in ("test_acc", "test_loss", "best_val_acc")
                                 if isinstance(results.get(k), (int, float))})
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self.mlflow.log_artifact(str(run_dir / name))
        self.mlflow.end_run()

    def abort(self) -> None:
        self.mlflow.end_run(status="KILLED")


def flat_params(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"optimizer": {"lr": 0.001}} -> {"optimizer.lr": "0.001"} (lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def open_trackers(cfg: Any, run_dir: Path, sweep_dir: Optional[Path] = None) -> list[Tracker]:
    """The trackers `logger=` asks for. In a sweep every job reports to one experiment named
    after the sweep's folder, one run per job."""
    trackers: list[Tracker] = []
    for name in logger_names(cfg):
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(run_dir))
        elif name == "mlflow":
            experiment = cfg.log.experiment or (f"swin-cli {sweep_dir}" if sweep_dir else "swin-cli")
            run_name = run_dir.name if sweep_dir is None else f"job {run_dir.name}"
            trackers.append(MlflowTracker(cfg, run_dir, experiment, run_name))
    return trackers
