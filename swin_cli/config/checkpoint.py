"""The `checkpoint` config group: which epochs' weights a run keeps beside last.pt and best.pt,
and whether it averages them at its end; and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from swin_cli.choices import choices, plain
from swin_cli.config.errors import check

# Which weights of each kept file go into the average: the raw weights, the EMA's, or per file
# whichever of the two scored that epoch (as best.pt chooses).
AverageWeights = choices("AverageWeights", "model", "ema", "best")


@dataclass
class CheckpointConfig:
    # Keep the k best epochs' weights (by the selected validation metric) as top-e<epoch>.pt,
    # ranked in top.json; a file that drops out of the top k is removed once its successor is
    # on disk. Each loads anywhere best.pt does (swin-eval ckpt=<run dir>/top-e007.pt). null: off.
    keep_top: Optional[int] = None
    # At the run's end, average the weights of the best k kept files into average.pt (a
    # checkpoint like best.pt) and test it too (test_acc_average in results.json). Averaging a
    # few good epochs' weights often generalises better than any one of them. Needs
    # k <= keep_top; with keep_top null, keep_top=k is implied. null: off.
    average: Optional[int] = None
    # Which weights are averaged (see AverageWeights); ema needs train.ema.decay.
    average_weights: AverageWeights = AverageWeights.best


def kept_files(cfg: Any) -> Optional[int]:
    """How many top files a run keeps: checkpoint.keep_top, or checkpoint.average when only that
    is set; None when neither is."""
    c = cfg.checkpoint
    return c.keep_top if c.keep_top is not None else c.average


def check_checkpoint(cfg: Any) -> None:
    """keep_top and average are at least 1, average does not exceed keep_top, and EMA weights
    are only averaged when there is an EMA."""
    c = cfg.checkpoint
    check(c.keep_top is None or c.keep_top >= 1, f"checkpoint.keep_top must be >= 1 or null (got {c.keep_top})")
    check(c.average is None or c.average >= 1, f"checkpoint.average must be >= 1 or null (got {c.average})")
    check(c.average is None or c.keep_top is None or c.average <= c.keep_top,
          f"checkpoint.average must be <= checkpoint.keep_top (got average={c.average}, keep_top={c.keep_top}): "
          f"only the kept files can be averaged")
    check(plain(c.average_weights) != "ema" or c.average is None or cfg.train.ema.decay is not None,
          "checkpoint.average_weights=ema needs train.ema.decay (the run keeps no EMA weights without it); "
          "use model or best")
