"""Progressive resizing (train.resolution_schedule): the training image size as a pure function
of the epoch, and what each epoch trains with because of it (its size, batch and steps).

The side ramps linearly from `start` at `start_epoch` to `end` (data.image_size unless given)
at round(end_fraction x epochs), rounded down to a multiple of `step`; evaluation stays at
data.image_size. For a box data.image_size [H, W] the side is the shorter one, and the longer
keeps the box's aspect ratio, rounded down to the model's unit. Every side is a multiple of the
model's patch x 2^(stages - 1), so every stage's map is whole and no patch merging pads. A
resumed run computes the same size for its epoch, since nothing but the config and the epoch
goes into it.

Swin's FLOPs go with the image area (windows of a fixed size: attention is linear in tokens), so
an epoch at half the side costs about a quarter of one at full size.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, Optional

from swin_cli.sizes import Size, hw, plain_size, size_text

KEY = "train.resolution_schedule"


def size_unit(model_cfg: Any) -> int:
    """The smallest side step that keeps every stage's map whole: the patch, then one halving
    per patch merging."""
    return model_cfg.patch_size * 2 ** (len(model_cfg.depths) - 1)


def _fit_problem(name: str, size: int, model_cfg: Any) -> Optional[str]:
    patch, unit = model_cfg.patch_size, size_unit(model_cfg)
    if size < 1:
        return f"{KEY}.{name} must be >= 1 (got {size})"
    if size % patch:
        return f"{KEY}.{name}={size} is not divisible by model.patch_size={patch}"
    if size % unit:
        lower, upper = max(unit, size // unit * unit), (size // unit + 1) * unit
        return (f"{KEY}.{name}={size} does not fit the model: sides must be multiples of {unit} (model.patch_size="
                f"{patch} x 2^{len(model_cfg.depths) - 1} patch mergings), e.g. {lower} or {upper}")
    return None


def schedule_problem(cfg: Any) -> Optional[str]:
    """Why `cfg`'s train.resolution_schedule cannot work, in one line naming the key, or None.
    With data.image_size still null the rules that need it wait for the settled size."""
    r = cfg.train.resolution_schedule
    if r.start is None:
        return None
    problem = _fit_problem("start", r.start, cfg.model)
    if problem is None and r.step is not None:
        problem = _fit_problem("step", r.step, cfg.model)
    if problem is None and r.end is not None:
        problem = _fit_problem("end", r.end, cfg.model)
    if problem is not None:
        return problem
    if r.start_epoch < 0:
        return f"{KEY}.start_epoch must be >= 0 (got {r.start_epoch})"
    if not 0 < r.end_fraction <= 1:
        return f"{KEY}.end_fraction must be in (0, 1] (got {r.end_fraction})"
    end_epoch = round(r.end_fraction * cfg.epochs)
    if end_epoch <= r.start_epoch:
        return (f"{KEY}.end_fraction={r.end_fraction} of epochs={cfg.epochs}: the ramp would end at epoch "
                f"{end_epoch}, not after {KEY}.start_epoch={r.start_epoch}; raise end_fraction or lower start_epoch")
    if cfg.data.image_size is None:
        return None
    shorter = min(hw(cfg.data.image_size))
    end = r.end if r.end is not None else shorter
    if r.start > end:
        source = f"{KEY}.end" if r.end is not None else "data.image_size"
        side = "" if r.end is not None or shorter == max(hw(cfg.data.image_size)) else "'s shorter side"
        return f"{KEY}.start={r.start} must be <= {source}{side}={end}, the side the ramp ends at"
    return None


@dataclass(frozen=True)
class ResolutionSchedule:
    """The side at each epoch: `start` until `start_epoch`, then linear to `end` at `end_epoch`,
    rounded down to a multiple of `step` above `start`, and `end` from `end_epoch` on; the size
    at each epoch is that side's box of data.image_size's shape (`full`)."""

    start: int
    end: int
    start_epoch: int
    end_epoch: int
    step: int
    full: tuple[int, int] = (0, 0)  # data.image_size (H, W); (0, 0): square sides
    unit: int = 1  # what the longer side of a box is rounded down to

    @classmethod
    def from_config(cls, cfg: Any) -> Optional["ResolutionSchedule"]:
        """The schedule `cfg` asks for (data.image_size settled), None when off; a problem
        raises ConfigError, the start-up message."""
        from swin_cli.config.errors import check_problem

        r = cfg.train.resolution_schedule
        if r.start is None:
            return None
        check_problem(schedule_problem(cfg))
        full = hw(cfg.data.image_size)
        end = r.end if r.end is not None else min(full)
        step = r.step if r.step is not None else size_unit(cfg.model)
        return cls(r.start, end, r.start_epoch, round(r.end_fraction * cfg.epochs), step, full, size_unit(cfg.model))

    def box(self, side: int) -> Size:
        """The training size for `side`: a square side, or data.image_size's box with `side` as
        its shorter side (the box itself at its own shorter side)."""
        height, width = self.full
        if height == width or side == min(self.full):
            return side if height == width else (height, width)
        longer = max(self.unit, math.floor(side * max(self.full) / min(self.full) / self.unit) * self.unit)
        return (side, longer) if height < width else (longer, side)

    def size_at(self, epoch: int) -> int:
        """The training side of `epoch` (0-based)."""
        if epoch >= self.end_epoch:
            return self.end
        if epoch <= self.start_epoch:
            return self.start
        exact = self.start + (self.end - self.start) * (epoch - self.start_epoch) / (self.end_epoch - self.start_epoch)
        # Down to a step: a side off the line costs more than its area (maps that are not whole
        # windows pad), so the nearest step bought no accuracy for its time (nano, 64 px: 0.77x
        # the fixed run's time against 0.52x rounded down, the same test accuracy). The epsilon
        # keeps a point exactly on a step (48.0 computed as 47.99999) on it.
        return self.start + self.step * math.floor((exact - self.start) / self.step + 1e-9)

    def sizes(self, epochs: int) -> list[Size]:
        """Each epoch's training size: its side (a square) or its (H, W)."""
        return [self.box(self.size_at(epoch)) for epoch in range(epochs)]

    def describe(self, epochs: int) -> str:
        """One line for the log: the ramp and each side's epochs."""
        sizes = self.sizes(epochs)
        runs: list[str] = []
        first = 0
        for epoch in range(1, epochs + 1):
            if epoch == epochs or sizes[epoch] != sizes[first]:
                span = f"{first + 1}" if epoch - first == 1 else f"{first + 1}-{epoch}"
                runs.append(f"{size_text(sizes[first])} (epoch{'s' if epoch - first > 1 else ''} {span})")
                first = epoch
        ends = f"{size_text(self.box(self.start), unit='')} -> {size_text(self.box(self.end))}"
        return f"{ends}: " + ", ".join(runs)


@dataclass(frozen=True)
class EpochShape:
    """What one epoch trains with: its size (None: the data's own; a side or (H, W)), the batch
    per process (and micro-batch of the step) and its optimizer steps."""

    size: Optional[Size]
    batch: int
    steps: int


def epoch_shapes(cfg: Any, schedule: Optional[ResolutionSchedule], batch: int, steps: int, train_size: int,
                 processes: int = 1) -> list[EpochShape]:
    """Every epoch's shape. Without a schedule, or without scale_batch, each keeps (batch,
    steps); with scale_batch the batch grows by the area saved, (data.image_size / side)^2, so a
    batch holds as many pixels as at full size, and the epoch takes fewer steps to see the same
    images."""
    if schedule is None:
        return [EpochShape(None, batch, steps)] * cfg.epochs
    full = hw(cfg.data.image_size)
    scale = bool(cfg.train.resolution_schedule.scale_batch)
    per_step = cfg.train.accumulate * processes
    shapes = []
    for size in schedule.sizes(cfg.epochs):
        if not scale:
            shapes.append(EpochShape(size, batch, steps))
            continue
        height, width = hw(size)
        scaled = max(1, min(batch * full[0] * full[1] // (height * width), train_size // per_step))
        scaled_steps = max(1, train_size // (scaled * per_step))
        if cfg.train.max_steps_per_epoch:
            scaled_steps = min(scaled_steps, cfg.train.max_steps_per_epoch)
        shapes.append(EpochShape(size, scaled, scaled_steps))
    return shapes


def at_size(images: Any, size: Optional[Size]) -> Any:
    """A uint8 batch (N, C, H, W) at `size`: as it is when it already is (a stream crops at the
    epoch's size in its workers), else resized with an antialiased bilinear filter (memory
    storage holds data.image_size; the filter keeps the downscale from aliasing)."""
    if size is None or tuple(images.shape[-2:]) == hw(size):
        return images
    from swin_cli.data.transforms import resized_uint8

    return resized_uint8(images, hw(size))


def compiled_sizes(compiled: bool, shapes: list[EpochShape]) -> ContextManager[Any]:
    """Where a compiled run trains: each side compiled as its own static graph (one graph per
    side, as fast as a fixed-size run's) rather than torch's automatic dynamic shapes after the
    second one, with room in the recompile limit for every side."""
    sides = {shape.size for shape in shapes}
    if not compiled or len(sides) < 2:
        return nullcontext()
    import torch._dynamo

    settings: dict[str, Any] = {"automatic_dynamic_shapes": False}
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    settings[limit] = max(getattr(torch._dynamo.config, limit), len(sides) + 1)
    return torch._dynamo.config.patch(**settings)


def resized_view(transform: Any, size: Size) -> Any:
    """A stream's training view cropping at `size` instead of its own (a dataclass with a `size`
    field: RandomResizedCrop, Squash); any other view as it is, its batches then resized by
    at_size."""
    import dataclasses

    if not dataclasses.is_dataclass(transform) or not hasattr(transform, "size"):
        return transform
    box = hw(size)
    return dataclasses.replace(transform, size=box if isinstance(transform.size, tuple) else plain_size(box))

