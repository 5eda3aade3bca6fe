"""torch's DataLoader as both streaming storages use it (stream.py's image files, webdataset.py's
shards): worker processes forked with one thread each, and a worker's death turned into one
line, `LoaderDied`, whichever storage was reading."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from swin_cli.data.sources import DataError


class LoaderDied(DataError):
    """A worker process of a stream loader exited (killed, out of memory)."""


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


def _one_thread(_: int) -> None:
    # Each worker decodes one image at a time; torch's intra-op threads would only fight.
    torch.set_num_threads(1)


def stacked(pixels: Sequence[np.ndarray]) -> torch.Tensor:
    """Equal-shaped uint8 arrays as one (N, ...) tensor. In a worker process it is stacked
    straight into shared memory: a batch put on the worker's queue is otherwise copied there
    once more (9.6 MB at 64 x 224 px; torch's own collate avoids that copy the same way)."""
    shape = (len(pixels), *pixels[0].shape)
    if get_worker_info() is None:
        return torch.from_numpy(np.stack(pixels))
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
    images = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    np.stack(pixels, out=images.numpy())
    return images


def worker_loader(dataset: Dataset, workers: int, prefetch: int, **options: Any) -> DataLoader:
    """A DataLoader over `dataset` in `workers` forked processes (0: in this one), each with one
    thread and `prefetch` items ready."""
    if not workers:
        return DataLoader(dataset, num_workers=0, **options)
    fork = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    return DataLoader(dataset, num_workers=workers, worker_init_fn=_one_thread, prefetch_factor=prefetch,
                      multiprocessing_context=fork, **options)


def read_loader(loader: DataLoader) -> Iterator[Any]:
    """What `loader` yields; a dead worker raises LoaderDied, and the workers are shut down as
    soon as the reading stops, however it stops."""
    items = iter(loader)
    try:
        yield from items
    except (RuntimeError, ConnectionError, EOFError) as exc:
        # Only the loader raises here. A killed worker shows as torch's RuntimeError, or, when
        # the main process was reading that worker's queue, as a reset connection.
        died = loader_death(exc, from_loader=True)
        if died is None:
            raise
        raise died from None
    finally:
        # At once, not when the garbage collector gets to it: until the loader forgets its
        # workers, torch's SIGCHLD handler raises again wherever the program is when any child
        # process exits (an exception's traceback keeps this frame alive). A loader without
        # workers has nothing to shut down.
        shutdown = getattr(items, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def default_workers(requested: Optional[int]) -> int:
    """data.workers, or one per core up to 8 (the main process keeps training meanwhile)."""
    if requested is not None:
        return requested
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def loader_settings(cfg: Any, device: torch.device) -> dict[str, Any]:
    return {"workers": default_workers(cfg.workers), "prefetch": cfg.prefetch, "pin_memory": device.type == "cuda"}
