"""Stream storage: decode while training, in worker processes, into pinned uint8 batches that are
prefetched while the model steps. Memory stays bounded by the batches in flight, whatever the
data set's size.

Every sample's random crop comes from a generator seeded by (seed, epoch, sample index), so
the same seed gives the same batches whatever the worker count, and a run resumed mid-epoch
replays the uninterrupted one exactly. A file that cannot be read (corrupt, truncated, deleted
under the running loader) is replaced by the next readable sample of the data set, so batches
keep their size; its name comes back with the batch, is warned about once, and counted.
"""

from __future__ import annotations

import logging
import random
from contextlib import closing
from functools import partial
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from swin_cli.data.loader import read_loader, stacked, worker_loader
from swin_cli.data.sources import DataError, Label, Samples, label_tensor
from swin_cli.data.splits import Batch, EpochPlan, step_seed
from swin_cli.resolution import resized_view

log = logging.getLogger(__name__)

# How many following samples to try in place of an unreadable one before giving up on a batch.
MAX_REPLACEMENTS = 16


class _Decoded(Dataset):
    """Item (index, epoch) -> (uint8 C x H x W, label, names of unreadable files met)."""

    def __init__(self, samples: Samples, transform: Callable, seed: int):
        self.samples, self.transform, self.seed = samples, transform, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, Label, list[str]]:
        index, epoch = key
        failed: list[str] = []
        for attempt in range(MAX_REPLACEMENTS):
            i = (index + attempt) % len(self.samples)
            rng = random.Random(step_seed(self.seed + 104_729 * epoch, i))
            try:
                return self.transform(self.samples.read(i), rng), self.samples.labels[i], failed
            except Exception:  # PIL raises many types for truncated/corrupt/missing files
                failed.append(self.samples.name(i))
        raise DataError(f"{MAX_REPLACEMENTS} samples in a row could not be read, from {failed[0]} on")


def _collate(items: list[tuple[np.ndarray, Label, list[str]]],
             multilabel_classes: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A batch: uint8 images, int64 labels (N,) or with data.task=multilabel uint8 multi-hot (N, classes)."""
    images = stacked([pixels for pixels, _, _ in items])
    labels = label_tensor([label for _, label, _ in items], multilabel_classes)
    return images, labels, [name for _, _, failed in items for name in failed]


class StreamSplit:
    """A split read from `samples` through `transform` while training.

    `transform(source, rng) -> uint8 (C, H, W)`: the train crop for the training split, the
    eval crop (which ignores rng) for the others; `eval_transform` (default: transform) is the
    view the normalisation statistics are taken through."""

    storage = "stream"
    random_access = True

    def __init__(self, samples: Samples, transform: Callable, channels: int, workers: int, prefetch: int,
                 pin_memory: bool = False, seed: int = 0, where: str = "", eval_transform: Optional[Callable] = None):
        self.samples, self.transform, self.channels = samples, transform, channels
        self.workers, self.prefetch, self.pin_memory = workers, prefetch, pin_memory
        self.seed, self.where = seed, where
        self.eval_transform = eval_transform or transform
        self.skipped: list[str] = []
        self._dataset = _Decoded(samples, transform, seed)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def multilabel_classes(self) -> int:
        return getattr(self.samples, "multilabel_classes", 0)

    @property
    def labels(self) -> torch.Tensor:
        return label_tensor(self.samples.labels, self.multilabel_classes)

    def _with(self, samples: Samples, transform: Callable) -> "StreamSplit":
        return StreamSplit(samples, transform, self.channels, self.workers, self.prefetch, self.pin_memory,
                           self.seed, self.where, self.eval_transform)

    def subset(self, index: torch.Tensor) -> "StreamSplit":
        return self._with(self.samples.subset(index.tolist()), self.transform)

    def _batches(self, keys: list[list[tuple[int, int]]], dataset: Optional[_Decoded] = None) -> Iterator[Batch]:
        if not keys:
            return
        collate = partial(_collate, multilabel_classes=self.multilabel_classes)  # picklable, for the workers
        loader = worker_loader(dataset or self._dataset, self.workers, self.prefetch, batch_sampler=keys,
                               collate_fn=collate, pin_memory=self.pin_memory)
        with closing(read_loader(loader)) as batches:
            for images, labels, failed in batches:
                self._note_skipped(failed)
                yield images, labels

    def _note_skipped(self, failed: list[str]) -> None:
        for name in failed:
            if name not in self.skipped:
                self.skipped.append(name)
                log.warning(f"skipped an unreadable image: {name} ({len(self.skipped)} so far)")

    def train_batches(self, plan: EpochPlan) -> Iterator[Batch]:
        order = plan.order(len(self)).tolist()
        # A crop is seeded by (image, draw): a draw per (run seed, epoch, copy of the image).
        draws = [step_seed(plan.seed, plan.epoch * plan.repeats + copy) for copy in plan.copies(order)]
        keys = [[(order[p], draws[p]) for p in range(start, min(stop, len(order)))]
                for start, stop in plan.step_slices()]
        # Progressive resizing: the workers, forked for this epoch, crop at the epoch's side.
        dataset = None if plan.size is None else _Decoded(self.samples, resized_view(self.transform, plan.size),
                                                          self.seed)
        return self._batches(keys, dataset)

    def eval_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        mine = list(range(rank, len(self), world))
        keys = [[(i, 0) for i in mine[start:start + batch_size]] for start in range(0, len(mine), batch_size)]
        return self._batches(keys)

    def sample_batches(self, count: int, seed: int, batch_size: int = 64) -> Iterator[Batch]:
        """`count` random images through this split's transform, a batch at a time."""
        index = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count].tolist()
        return self._batches([[(i, 0) for i in index[s:s + batch_size]] for s in range(0, len(index), batch_size)])

    def sample(self, count: int, seed: int) -> Batch:
        """`count` random images through this split's transform (mode=preview)."""
        images, labels = zip(*self.sample_batches(count, seed))
        return torch.cat(images), torch.cat(labels)

    def stats_sample(self, count: int, seed: int) -> Iterator[Batch]:
        """`count` random images through the evaluation view, a batch at a time."""
        return self._with(self.samples, self.eval_transform).sample_batches(count, seed)
