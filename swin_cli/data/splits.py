"""The one way batches reach the trainer: a split hands out uint8 batches (N, C, H, W) with int64
labels (N,) (with data.task=multilabel: uint8 multi-hot labels (N, classes)), for a training
epoch (from any step, for one rank of many) or for evaluation. Whether they come from a tensor
in memory (`ImageSplit`) or are decoded while training (`swin_cli.data.stream.StreamSplit`) is
the split's business alone.

Training order is by construction: epoch e's order is a permutation seeded by (seed, e) (with
data.sampler=class_balanced, weighted draws with replacement seeded the same way), step s
of it takes the images at [s * step_images, (s + 1) * step_images), and rank r of w takes its
own slice of those. Resuming at any step therefore replays exactly the batches the uninterrupted
run would have seen, and the ranks' parts of an epoch are disjoint and cover it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Protocol

import torch
from torch import Tensor

from swin_cli.sizes import Size
from swin_cli.text import plural

Batch = tuple[Tensor, Tensor]  # uint8 images (N, C, H, W), int64 labels (N,) or uint8 multi-hot (N, classes)


def step_seed(seed: int, step: int) -> int:
    # Distinct, well-spread seeds per (run seed, step); 2^61-1 is prime.
    return (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9) % (2**61 - 1)


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed + 7919, epoch)))


def weighted_epoch_order(weights: Tensor, seed: int, epoch: int) -> Tensor:
    """len(weights) draws with replacement, image i with probability weights[i] / sum(weights),
    from a generator seeded by (seed, epoch) alone: every rank draws the same order."""
    generator = torch.Generator().manual_seed(step_seed(seed + 104_723, epoch))
    return torch.multinomial(weights.double().cpu(), len(weights), replacement=True, generator=generator)


@dataclass(frozen=True)
class EpochPlan:
    """Which images a rank trains on in one epoch: step s takes positions
    [s * step_images + rank * rank_images, ... + rank_images) of epoch_order."""

    seed: int
    epoch: int
    rank_images: int  # per optimizer step on this rank (batch size x accumulation)
    steps: int  # steps in the epoch
    start_step: int = 0
    rank: int = 0
    world: int = 1
    shuffle: bool = True  # False: the split's own order every epoch (debug=overfit)
    # Repeated augmentation (data.repeats): the epoch keeps its length but takes n / repeats
    # images, each `repeats` times in a row, so one batch holds differently augmented copies.
    repeats: int = 1
    # Per-image sampling weights (data.sampler=class_balanced; swin_cli/imbalance.py): the epoch's
    # order is then n weighted draws with replacement instead of a permutation. None: uniform.
    weights: Optional[Tensor] = field(default=None, compare=False)
    # The training images' size this epoch (train.resolution_schedule; swin_cli/resolution.py): a
    # split that decodes crops at it; one that holds or reads finished images leaves its batches
    # to the trainer's resize. None: the split's own side.
    size: Optional[Size] = None

    def order(self, n: int) -> Tensor:
        if not self.shuffle:
            order = torch.arange(n)
        elif self.weights is not None:
            if len(self.weights) != n:
                raise ValueError(f"{len(self.weights)} sampling weights for a split of {plural(n, 'image')}")
            order = weighted_epoch_order(self.weights, self.seed, self.epoch)
        else:
            order = epoch_order(n, self.seed, self.epoch)
        if self.repeats > 1:
            order = order[:-(-n // self.repeats)].repeat_interleave(self.repeats)[:n]
        return order

    def copies(self, order: list[int]) -> list[int]:
        """For each position of `order`, which copy of its image it is (0, 1, ...): a stream
        seeds each copy's crop apart."""
        return [position % self.repeats for position in range(len(order))]

    def step_slices(self) -> Iterator[tuple[int, int]]:
        step_images = self.rank_images * self.world
        for step in range(self.start_step, self.steps):
            start = step * step_images + self.rank * self.rank_images
            yield start, start + self.rank_images


class Split(Protocol):
    """What the trainer, evaluation, preview, export and debug runs ask of a split."""

    storage: str  # "memory" or "stream"
    skipped: list[str]  # unreadable files met so far, by name
    random_access: bool  # False: subset() cannot work (shards are read in sequence)
    workers: int  # decoding processes (0: none, or in the main process)

    def __len__(self) -> int: ...

    def train_batches(self, plan: EpochPlan) -> Iterator[Batch]: ...

    def eval_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]: ...

    def sample(self, count: int, seed: int) -> Batch: ...

    def stats_sample(self, count: int, seed: int) -> Iterator[Batch]:
        """The images the normalisation statistics come from, through the evaluation view, a
        batch at a time: `count` random ones, or all of a split held in memory (exact, and
        cheap there)."""

    def subset(self, index: Tensor) -> "Split":
        """The images at `index`, in that order (a DataError without random access)."""


@dataclass
class ImageSplit:
    """A split held in memory as one uint8 tensor: batches are gathers, on the GPU when the
    tensor lives there."""

    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,), or with data.task=multilabel uint8 multi-hot (N, classes)
    skipped: list[str] = field(default_factory=list)
    storage: str = "memory"
    random_access = True
    workers = 0

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def multilabel_classes(self) -> int:
        """The width of multi-hot labels (data.task=multilabel), 0 for class indices."""
        return self.labels.shape[1] if self.labels.dim() == 2 else 0

    def subset(self, index: Tensor) -> "ImageSplit":
        return ImageSplit(self.images[index], self.labels[index], list(self.skipped))

    def to(self, device: torch.device) -> "ImageSplit":
        return ImageSplit(self.images.to(device), self.labels.to(device), list(self.skipped))

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.labels.nbytes

    def train_batches(self, plan: EpochPlan) -> Iterator[Batch]:
        order = plan.order(len(self)).to(self.images.device)
        for start, stop in plan.step_slices():
            index = order[start:stop]
            yield self.images[index], self.labels[index]

    def eval_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        # Under torchrun each rank takes every world-th image; callers add the sums over ranks.
        images, labels = (self.images, self.labels) if world == 1 else (self.images[rank::world],
                                                                        self.labels[rank::world])
        for start in range(0, len(labels), batch_size):
            yield images[start:start + batch_size], labels[start:start + batch_size]

    def sample(self, count: int, seed: int) -> Batch:
        """`count` random training images as they enter augmentation (for mode=preview)."""
        index = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count]
        return self.images[index.to(self.images.device)], self.labels[index.to(self.labels.device)]

    def stats_sample(self, count: int, seed: int) -> Iterator[Batch]:
        """Every image, in one batch: in memory the statistics are exact and cheap."""
        yield self.images, self.labels
