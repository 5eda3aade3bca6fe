"""Memory storage: decode a split once, in parallel, into one uint8 tensor, and keep it in a cache
under data.cache_dir keyed by the files' names, sizes and mtimes and the decode settings, so later
runs start in seconds. The fastest storage for sets that fit (CIFAR-10: 184 MB)."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from swin_cli.atomic_io import atomic_file
from swin_cli.data.cache_notes import note_written
from swin_cli.data.sources import DataError, FileSamples, Samples, label_tensor
from swin_cli.data.splits import ImageSplit
from swin_cli.text import plural

log = logging.getLogger(__name__)

# Bumped whenever the cached tensor layout or decoding changes, so stale caches are ignored.
CACHE_VERSION = 3

_worker_state: dict[str, Any] = {}


def _init_worker(samples: Samples, transform: Callable) -> None:
    _worker_state["samples"], _worker_state["transform"] = samples, transform


def _decode_one(i: int) -> Optional[np.ndarray]:
    samples, transform = _worker_state["samples"], _worker_state["transform"]
    try:
        return transform(samples.read(i))
    except Exception:  # PIL raises many types for truncated/corrupt files
        return None


def warn_skipped(names: list[str], where: str) -> None:
    if names:
        log.warning(f"skipped {plural(len(names), 'unreadable image')} in {where}: "
                    f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''}")


def decode_split(samples: Samples, transform: Callable, where: str) -> ImageSplit:
    """Every sample through `transform` (to uint8 C x H x W) into one tensor; unreadable ones are
    skipped with a warning naming them, and listed in the split's `skipped`."""
    log.info(f"decoding {plural(len(samples), 'image')} of {where} into memory")
    _init_worker(samples, transform)
    workers = min(8, os.cpu_count() or 1)
    if workers > 1 and len(samples) > 2000:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(samples, transform)) as pool:
            decoded = list(pool.map(_decode_one, range(len(samples)), chunksize=256))
    else:
        decoded = [_decode_one(i) for i in range(len(samples))]
    bad = [samples.name(i) for i, pixels in enumerate(decoded) if pixels is None]
    warn_skipped(bad, where)
    good = [i for i, pixels in enumerate(decoded) if pixels is not None]
    if not good:
        raise DataError(f"no readable images in {where}")
    images = torch.from_numpy(np.stack([decoded[i] for i in good]))
    # int64 (N,), or with data.task=multilabel multi-hot uint8 (N, classes).
    labels = label_tensor([samples.labels[i] for i in good], getattr(samples, "multilabel_classes", 0))
    return ImageSplit(images, labels, skipped=bad)


class DecodeCache:
    """decode_split, remembered on disk for file samples (other samples are decoded each run)."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir

    def load(self, samples: Samples, transform: Callable, where: str) -> ImageSplit:
        if not isinstance(samples, FileSamples):
            return decode_split(samples, transform, where)
        path = self.cache_dir / f"imagefolder-{samples.fingerprint(f'v{CACHE_VERSION}|{transform!r}')}.pt"
        if path.is_file():
            try:
                cached = torch.load(path, weights_only=True)
                split = ImageSplit(cached["images"], cached["labels"], skipped=list(cached.get("skipped", [])))
                warn_skipped(split.skipped, where)  # a cached run warns as the first one did
                return split
            except Exception:
                log.warning(f"ignoring unreadable cache {path}; decoding again")
        split = decode_split(samples, transform, where)
        if self._store(path, split):
            note_written(path, where, samples.paths)  # for mode=cache's listing and the panel
        return split

    def _store(self, path: Path, split: ImageSplit) -> bool:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as f:
                torch.save({"images": split.images, "labels": split.labels, "skipped": split.skipped}, f)
        except OSError as exc:  # a read-only or full cache dir costs speed, not correctness
            log.warning(f"could not write the image cache {path} ({exc.strerror}); continuing without it")
            return False
        return True
