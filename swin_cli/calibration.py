"""What turns a model's logits into the scores a run reports and a deployed model serves:
an optional post-hoc logit adjustment (subtract tau x log of the training class prior, Menon et
al. 2021) and a temperature (Guo et al. 2017), `(logits - offset) / temperature`.

Neither changes the weights. Both live in the checkpoint (`calibration`) and in the export
sidecar, so swin-eval, predict and the ONNX path score exactly as the run's final test did. The
temperature is fitted after training on the validation split (eval.calibrate=true): it is the
one value that minimises the validation NLL, which leaves every prediction's rank unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from swin_cli import distributed

# The temperatures searched; a fitted value at either end means the validation split is too small
# or the model is degenerate, and is said so.
TEMPERATURE_RANGE = (0.05, 20.0)


@dataclass(frozen=True)
class LogitCalibration:
    temperature: float = 1.0
    offset: Optional[tuple[float, ...]] = None  # per class, subtracted before the temperature
    logit_adjust_tau: Optional[float] = None  # what made `offset`, for the record

    @property
    def identity(self) -> bool:
        return self.temperature == 1.0 and self.offset is None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return self.on(logits.device)(logits)

    def on(self, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """apply() for float32 logits on `device`, the offset made once there: a split's loop
        calls it every batch."""
        offset = None if self.offset is None else torch.tensor(self.offset, dtype=torch.float32, device=device)
        temperature = self.temperature

        def calibrated(logits: torch.Tensor) -> torch.Tensor:
            if offset is not None:
                logits = logits - offset
            return logits / temperature if temperature != 1.0 else logits

        return calibrated

    def with_temperature(self, temperature: float) -> "LogitCalibration":
        return LogitCalibration(temperature, self.offset, self.logit_adjust_tau)

    def describe(self) -> str:
        parts = [f"logits minus {self.logit_adjust_tau:g} x log prior"] if self.offset is not None else []
        if self.temperature != 1.0:
            parts.append(f"temperature {self.temperature:.3f}")
        return ", ".join(parts) or "none"

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "offset": list(self.offset) if self.offset is not None else None,
                "logit_adjust_tau": self.logit_adjust_tau}

    @classmethod
    def from_dict(cls, saved: Optional[dict[str, Any]]) -> "LogitCalibration":
        """From a checkpoint's or a sidecar's `calibration` (absent in older ones: the identity)."""
        if not saved:
            return cls()
        offset = saved.get("offset")
        return cls(float(saved.get("temperature", 1.0)), tuple(offset) if offset is not None else None,
                   saved.get("logit_adjust_tau"))


UNCALIBRATED = LogitCalibration()  # the logits as the model gives them


def from_prior(class_counts: Optional[Sequence[int]], tau: Optional[float]) -> LogitCalibration:
    """The post-hoc logit adjustment eval.logit_adjust_tau asks for (tau x log of the training
    prior); the identity when it is off or the counts are unknown."""
    if tau is None or class_counts is None:
        return UNCALIBRATED
    from swin_cli.imbalance import logit_offset

    return LogitCalibration(1.0, tuple(logit_offset(class_counts, tau).tolist()), tau)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, device: torch.device, steps: int = 60) -> float:
    """The temperature minimising the mean NLL of `logits` (this rank's share of the validation
    split; every rank calls this with its own share and gets the same answer). The NLL is convex
    in 1 / temperature, so a golden-section search on its log finds the minimum; each point's
    NLL is summed over ranks, one all-reduce."""
    logits, labels = logits.float().to(device), labels.to(device)

    def total_nll(log_t: float) -> float:
        nll = F.cross_entropy(logits / math.exp(log_t), labels, reduction="sum").double().reshape(1)
        return float(distributed.sum_(nll)[0])

    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = total_nll(a), total_nll(b)
    for _ in range(steps):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = total_nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = total_nll(b)
    return math.exp((low + high) / 2.0)
