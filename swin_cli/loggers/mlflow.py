"""logger=mlflow: one MLflow run per swin-train run, in a local SQLite store unless told otherwise.

The flattened config becomes the run's params, every epoch's row its metrics (step = epoch), and
results.json, metrics.csv and the plots its artifacts. A sweep is one experiment named after the
sweep's folder, with a run per job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from swin_cli.loggers.base import (
    ARTIFACTS,
    Tracker,
    TrackerSettings,
    final_scores,
    import_library,
    numbers,
    plain_config,
    run_name,
)


@dataclass
class MlflowSettings(TrackerSettings):
    # Where runs are stored; null: a SQLite store under outputs/mlruns.
    tracking_uri: Optional[str] = None
    # null: swin-cli, or for a sweep its folder, so that a sweep is one experiment.
    experiment: Optional[str] = None


class MlflowTracker(Tracker):
    Settings = MlflowSettings
    library = "mlflow"
    extra = "mlflow"

    def __init__(self, settings: Any, cfg: Any, run_dir: Path, sweep_dir: Optional[Path] = None):
        super().__init__(settings, cfg, run_dir, sweep_dir)
        self.mlflow = mlflow = import_library(MlflowTracker, "mlflow")
        uri = settings.tracking_uri or default_tracking_uri()
        mlflow.set_tracking_uri(uri)
        experiment = settings.experiment or (f"swin-cli {sweep_dir}" if sweep_dir else "swin-cli")
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            # Artifacts beside a local SQLite store rather than in the current folder.
            location = (str(Path(uri[len("sqlite:///"):]).parent / "artifacts" / experiment)
                        if uri.startswith("sqlite:///") else None)
            experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            experiment_id = found.experiment_id
        self.run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name(self.run_dir, sweep_dir))
        mlflow.log_params(flat_params(plain_config(cfg)))
        mlflow.set_tag("run_dir", str(self.run_dir))

    def epoch(self, row: dict[str, Any], epoch: int) -> None:
        self.mlflow.log_metrics(numbers(row), step=epoch)

    def finish(self, results: dict[str, Any], run_dir: Path) -> None:
        self.mlflow.log_metrics(final_scores(results))
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self.mlflow.log_artifact(str(run_dir / name))
        self.mlflow.end_run()

    def abort(self) -> None:
        self.mlflow.end_run(status="KILLED")


def default_tracking_uri(outputs: Path = Path("outputs")) -> str:
    """A SQLite store under outputs/mlruns (MLflow 3 keeps its plain-file store read-mostly)."""
    folder = (outputs / "mlruns").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


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
