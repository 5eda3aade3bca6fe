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
import os
import random
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from swin_cli.data.sources import DataError, Samples
from swin_cli.data.splits import Batch, EpochPlan, step_seed

log = logging.getLogger(__name__)

# How many following samples to try in place of an unreadable one before giving up on a batch.
MAX_REPLACEMENTS = 16


class LoaderDied(DataError):
    """A worker process of the stream loader exited (killed, out of memory)."""


def loader_death(exc: BaseException, from_loader: bool = False) -> Optional[LoaderDied]:
    """The LoaderDied an exception means, or None. A worker's death reaches the main process as
    a RuntimeError from the loader, or from torch's SIGCHLD handler wherever the main process
    happens to be (inside a training step, say); `from_loader`: raised by the loader itself,
    where a reset connection to a worker's queue means the same."""
    if isinstance(exc, LoaderDied):
        return exc
    if isinstance(exc, RuntimeError) and "DataLoader worker" in str(exc):
        reason = str(exc).splitlines()[0]
    elif from_loader and isinstance(exc, (ConnectionError, EOFError)):
        reason = f"{type(exc).__name__}: {exc}"
    else:
        return None
    return LoaderDied(f"a data loader worker died ({reason}); out of memory? "
                      f"try fewer data.workers or a smaller data.prefetch")


class _Decoded(Dataset):
    """Item (index, epoch) -> (uint8 C x H x W, label, names of unreadable files met)."""

    def __init__(self, samples: Samples, transform: Callable, seed: int):
        self.samples, self.transform, self.seed = samples, transform, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, int, list[str]]:
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


def _collate(items: list[tuple[np.ndarray, int, list[str]]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images = torch.from_numpy(np.stack([pixels for pixels, _, _ in items]))
    labels = torch.tensor([label for _, label, _ in items], dtype=torch.int64)
    return images, labels, [name for _, _, failed in items for name in failed]


def _one_thread(_: int) -> None:
    # Each worker decodes one image at a time; torch's intra-op threads would only fight.
    torch.set_num_threads(1)


class StreamSplit:
    """A split read from `samples` through `transform` while training.

    `transform(source, rng) -> uint8 (C, H, W)`: the train crop for the training split, the
    eval crop (which ignores rng) for the others."""

    storage = "stream"

    def __init__(self, samples: Samples, transform: Callable, channels: int, workers: int, prefetch: int,
                 pin_memory: bool = False, seed: int = 0, where: str = ""):
        self.samples, self.transform, self.channels = samples, transform, channels
        self.workers, self.prefetch, self.pin_memory = workers, prefetch, pin_memory
        self.seed, self.where = seed, where
        self.skipped: list[str] = []
        self._dataset = _Decoded(samples, transform, seed)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        return torch.as_tensor(self.samples.labels, dtype=torch.int64)

    def with_samples(self, samples: Samples) -> "StreamSplit":
        return StreamSplit(samples, self.transform, self.channels, self.workers, self.prefetch, self.pin_memory,
                           self.seed, self.where)

    def subset(self, index: torch.Tensor) -> "StreamSplit":
        return self.with_samples(self.samples.subset(index.tolist()))

    def _batches(self, keys: list[list[tuple[int, int]]]) -> Iterator[Batch]:
        if not keys:
            return
        loader = DataLoader(
            self._dataset, batch_sampler=keys, num_workers=self.workers, collate_fn=_collate,
            pin_memory=self.pin_memory, worker_init_fn=_one_thread if self.workers else None,
            prefetch_factor=self.prefetch if self.workers else None,
            multiprocessing_context="fork" if self.workers and "fork" in _start_methods() else None)
        batches = iter(loader)
        try:
            for images, labels, failed in batches:
                self._note_skipped(failed)
                yield images, labels
        except (RuntimeError, ConnectionError, EOFError) as exc:
            # Only the loader raises here. A killed worker shows as torch's RuntimeError, or,
            # when the main process was reading that worker's queue, as a reset connection.
            died = loader_death(exc, from_loader=True)
            if died is None:
                raise
            raise died from None
        finally:
            # At once, not when the garbage collector gets to it: until the loader forgets its
            # workers, torch's SIGCHLD handler raises again wherever the program is when any
            # child process exits (an exception's traceback keeps this frame alive).
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

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
        return self._batches(keys)

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


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def default_workers(requested: Optional[int]) -> int:
    """data.workers, or one per core up to 8 (the main process keeps training meanwhile)."""
    if requested is not None:
        return requested
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def loader_settings(cfg: Any, device: torch.device) -> dict[str, Any]:
    return {"workers": default_workers(cfg.workers), "prefetch": cfg.prefetch, "pin_memory": device.type == "cuda"}
