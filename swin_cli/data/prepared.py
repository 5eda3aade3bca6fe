"""A prepared copy of a split for the stream storage (data.prepare=true): every image re-encoded
as a JPEG whose shorter side is at most data.prepare_side (default 1.15 x image_size), packed into
a few shard files under data.cache_dir.

Decoding dominates a streaming loader's cost, and it grows with the pixels decoded: a 500x375
photo cropped and resized to 224 px decodes 2.1x the pixels of its 344x258 copy, which still
has more pixels than any crop of it needs (FFCV's max_resolution). Reading a few large files
instead of many small ones also spares the file system a lookup per image.

The copy is built once, in parallel, with progress and an ETA, a shard at a time: each shard is
written atomically, so an interrupted build resumes at the first missing shard. The key covers
every source file's name, size and mtime and the settings, so a changed folder gets a new copy.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from swin_cli.atomic_io import atomic_file
from swin_cli.data.cache_notes import note_written
from swin_cli.data.decode import GREY_MODES, open_image, to_mode
from swin_cli.data.sources import FileSamples, Label, Samples
from swin_cli.data.transforms import _draft, resized_shape
from swin_cli.text import plural

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
IMAGES_PER_SHARD = 2048
JPEG_QUALITY = 90
# Seconds between progress lines while building.
PROGRESS_EVERY_S = 5.0


def _shrink(job: tuple[Any, int]) -> Optional[bytes]:
    """One image as JPEG bytes with the shorter side at most `side` (smaller ones keep their
    size and are re-encoded only if they are not JPEGs already); None when unreadable."""
    source, side = job
    try:
        with open_image(source) as im:
            w, h = im.size
            target = resized_shape(w, h, (side, side)) if min(w, h) > side else (w, h)
            _draft(im, *target)
            im = to_mode(im, 1 if im.mode in GREY_MODES else 3)
            if im.size != target:
                from PIL import Image

                im = im.resize(target, Image.Resampling.BILINEAR)
            out = io.BytesIO()
            im.save(out, format="JPEG", quality=JPEG_QUALITY)
            return out.getvalue()
    except Exception:  # PIL raises many types for truncated/corrupt files
        return None


@dataclass
class PreparedSamples:
    """Samples read back from the shards: read(i) is one pread of the image's bytes."""

    folder: str
    shard_of: np.ndarray  # per sample: shard number, byte offset, byte length
    offset: np.ndarray
    length: np.ndarray
    labels: list[Label]
    names: list[str]
    multilabel_classes: int = 0  # see sources.Samples
    _files: dict[int, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> bytes:
        if self.length[i] == 0:
            raise OSError(f"{self.names[i]} was unreadable when the copy was prepared")
        shard = int(self.shard_of[i])
        fd = self._files.get(shard)
        if fd is None:  # opened lazily in each worker process: descriptors do not cross a fork well
            fd = self._files[shard] = os.open(os.path.join(self.folder, f"shard-{shard:05d}.bin"), os.O_RDONLY)
        return os.pread(fd, int(self.length[i]), int(self.offset[i]))

    def name(self, i: int) -> str:
        return self.names[i]

    def subset(self, index: list[int]) -> "PreparedSamples":
        return PreparedSamples(self.folder, self.shard_of[index], self.offset[index], self.length[index],
                               [self.labels[i] for i in index], [self.names[i] for i in index],
                               self.multilabel_classes)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}


def prepare(samples: Samples, side: int, cache_dir: Path, where: str) -> Samples:
    """The prepared copy of `samples` (built now if it is not in cache_dir yet). Samples that are
    not image files (a Hugging Face dataset) are returned as they are."""
    if not isinstance(samples, FileSamples) or len(samples) == 0:
        return samples
    folder = cache_dir / f"prepared-{samples.fingerprint(f'v{FORMAT_VERSION}|{side}|{JPEG_QUALITY}')}"
    folder.mkdir(parents=True, exist_ok=True)
    shards = range((len(samples) + IMAGES_PER_SHARD - 1) // IMAGES_PER_SHARD)
    missing = [s for s in shards if not (folder / f"shard-{s:05d}.json").is_file()]
    if missing:
        _build(samples, side, folder, missing, where)
        note_written(folder, where, samples.paths)  # for mode=cache's listing and the panel
    shard_of, offset, length = [], [], []
    for s in shards:
        index = json.loads((folder / f"shard-{s:05d}.json").read_text())
        shard_of += [s] * len(index["offset"])
        offset += index["offset"]
        length += index["length"]
    return PreparedSamples(str(folder), np.array(shard_of), np.array(offset, dtype=np.int64),
                           np.array(length, dtype=np.int64), list(samples.labels), list(samples.paths),
                           samples.multilabel_classes)


def _build(samples: FileSamples, side: int, folder: Path, missing: list[int], where: str) -> None:
    todo = sum(min(IMAGES_PER_SHARD, len(samples) - s * IMAGES_PER_SHARD) for s in missing)
    log.info(f"preparing a copy of {where} with the shorter side at most {side} px: {plural(todo, 'image')} "
             f"into {folder} (once; an interrupted build resumes)")
    workers = min(8, os.cpu_count() or 1)
    started, done, last_report = time.perf_counter(), 0, time.perf_counter()
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        for s in missing:
            paths = samples.paths[s * IMAGES_PER_SHARD:(s + 1) * IMAGES_PER_SHARD]
            jobs = [(p, side) for p in paths]
            encoded = list(pool.map(_shrink, jobs, chunksize=32)) if pool else [_shrink(j) for j in jobs]
            offsets, lengths, position = [], [], 0
            with atomic_file(folder / f"shard-{s:05d}.bin") as f:
                for data in encoded:
                    data = data or b""
                    f.write(data)
                    offsets.append(position)
                    lengths.append(len(data))
                    position += len(data)
            # The index is written last: a shard counts as built only once its index exists.
            with atomic_file(folder / f"shard-{s:05d}.json", "w") as f:
                json.dump({"offset": offsets, "length": lengths}, f)
            done += len(paths)
            now = time.perf_counter()
            if now - last_report >= PROGRESS_EVERY_S or done == todo:
                rate = done / (now - started)
                eta = (todo - done) / max(rate, 1e-9)
                log.info(f"  prepared {done:,}/{todo:,} ({done / todo:.0%}), {rate:.0f} img/s, ETA {eta:.0f} s")
                last_report = now
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
