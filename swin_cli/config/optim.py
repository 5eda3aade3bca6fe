"""The `optimizer` and `scheduler` config groups: the update rule and the lr schedule, and their checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from swin_cli.choices import choices
from swin_cli.config.errors import check

OptimizerName = choices("OptimizerName", "adamw", "adam", "sgd")
SchedulerName = choices("SchedulerName", "cosine", "step", "onecycle", "constant")


@dataclass
class OptimizerConfig:
    name: OptimizerName = MISSING
    lr: float = 2e-3
    # On weight matrices only; the model names the parameters it exempts (norms, biases, ...).
    weight_decay: float = 0.05
    # adamw, adam:
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # sgd:
    momentum: float = 0.9
    nesterov: bool = False
    # Layer-wise lr decay, for fine-tuning: the head trains at lr and each block below it at
    # layer_decay times the lr of the one above (patch embedding lowest); null: one lr for all.
    layer_decay: Optional[float] = None


@dataclass
class SchedulerConfig:
    """The lr schedule, stepped once per optimizer step. warmup_epochs: a linear warmup from
    warmup_start_factor*lr, in epochs (fractions allowed). cosine and onecycle end at
    min_lr_factor*lr. step multiplies the lr by decay_rate every decay_epochs epochs. onecycle
    rises to the peak lr over the first pct_start of all steps."""

    name: SchedulerName = MISSING
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.01
    min_lr_factor: float = 0.01
    decay_epochs: float = 30.0
    decay_rate: float = 0.1
    pct_start: float = 0.3


def check_optimizer(cfg: Any) -> None:
    """A finite positive lr, and the ranges of weight decay, betas, layer decay and momentum."""
    o = cfg.optimizer
    check(o.lr > 0 and math.isfinite(o.lr), f"optimizer.lr must be > 0 (got {o.lr})")
    check(o.weight_decay >= 0, f"optimizer.weight_decay must be >= 0 (got {o.weight_decay})")
    check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
          f"optimizer.betas must be two values in [0, 1) (got {list(o.betas)})")
    check(o.layer_decay is None or 0 < o.layer_decay <= 1,
          f"optimizer.layer_decay must be in (0, 1] or null (got {o.layer_decay})")
    check(0 <= o.momentum < 1, f"optimizer.momentum must be in [0, 1) (got {o.momentum})")


def check_scheduler(cfg: Any) -> None:
    """The warmup, the factors of the lr and the step and onecycle shapes, each in its range."""
    s = cfg.scheduler
    check(s.warmup_epochs >= 0, f"scheduler.warmup_epochs must be >= 0 (got {s.warmup_epochs})")
    check(0 < s.warmup_start_factor <= 1,
          f"scheduler.warmup_start_factor must be in (0, 1] (got {s.warmup_start_factor})")
    check(0 <= s.min_lr_factor <= 1, f"scheduler.min_lr_factor must be in [0, 1] (got {s.min_lr_factor})")
    check(s.decay_epochs > 0, f"scheduler.decay_epochs must be > 0 (got {s.decay_epochs})")
    check(0 < s.decay_rate <= 1, f"scheduler.decay_rate must be in (0, 1] (got {s.decay_rate})")
    check(0 < s.pct_start < 1, f"scheduler.pct_start must be in (0, 1) (got {s.pct_start})")
