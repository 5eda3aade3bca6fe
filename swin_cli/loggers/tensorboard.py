"""logger=tensorboard: every epoch's metrics, and the test's scores at the end, as scalars in <run dir>/tb
(`tensorboard --logdir outputs`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from swin_cli.loggers.base import Tracker, TrackerSettings, final_scores, import_library, numbers


@dataclass
class TensorBoardSettings(TrackerSettings):
    """Nothing of its own to set: the event files go to <run dir>/tb."""


class TensorBoardTracker(Tracker):
    Settings = TensorBoardSettings
    library = "tensorboard"
    extra = "tensorboard"

    def __init__(self, settings: Any, cfg: Any, run_dir: Path, sweep_dir: Optional[Path] = None):
        super().__init__(settings, cfg, run_dir, sweep_dir)
        import_library(TensorBoardTracker, "tensorboard")
        # torch's writer, imported only now: --help and runs without this tracker skip it.
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.run_dir / "tb"))

    def epoch(self, row: dict[str, Any], epoch: int) -> None:
        for key, value in numbers(row).items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def finish(self, results: dict[str, Any], run_dir: Path) -> None:
        # The test's scores, at the last epoch's step, beside the curves they end.
        for key, value in final_scores(results).items():
            self.writer.add_scalar(key, value, results.get("epochs") or 0)
        self.writer.close()

    def abort(self) -> None:
        self.writer.close()
