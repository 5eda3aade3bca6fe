"""WebDataset tar shards (`pip install "swin-cli[webdataset]"`), read with the webdataset library:
sequential reads of whole shards, the layout made for cluster file systems and many nodes.

A sample is the tar members sharing a key: <key>.jpg (data.image_key) and <key>.cls holding its
integer label (data.label_key). Shards are not random access, so a split here is its own
stream storage (`ShardSplit`, the batch interface of swin_cli/data/splits.py):

- Epoch e shuffles the shard order with (seed, e); rank r of w takes every w-th shard of it,
  and each DataLoader worker every n-th shard of the rank's (wds.split_by_worker). Workers read
  with wds.tarfile_to_samples, shuffle within a buffer (data.shuffle_buffer), and decode with
  our own transforms; a sample's random crop is seeded by (seed, epoch, pass, shard, key), so
  the worker that decodes it does not change it.
- The schedule needs the number of samples: it is counted once per shard from the tar headers
  and cached under data.cache_dir by path, size and mtime.
- A rank whose shards hold fewer samples than the epoch's steps need reads them again (another
  pass, new crops): every rank yields exactly the same number of batches, or DDP would hang.
- Resuming at step s re-reads and discards the epoch's first s batches of the rank (whole
  passes are skipped by count). With the same data.workers the stream, and so the resumed run,
  is the uninterrupted one's; with another worker count the samples interleave differently.
- An unreadable sample (corrupt image, missing label) or shard is skipped, named in `skipped`
  and warned about once; the batch is filled from the samples that follow.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from swin_cli.data.cache_notes import note_written
from swin_cli.data.decode import guess_channels
from swin_cli.data.loader import default_workers, read_loader, worker_loader
from swin_cli.data.schema import first_problem
from swin_cli.data.sources import DataError, SourceData
from swin_cli.data.splits import Batch, EpochPlan, step_seed
from swin_cli.data.views import image_views
from swin_cli.text import plural

log = logging.getLogger(__name__)

Chunk = tuple[torch.Tensor, torch.Tensor, list[str]]  # images, labels, names of unreadable samples met
COUNTS_FILE = "webdataset-counts.json"
COUNTS_VERSION = 1  # bumped when what a count means changes
# Samples a worker hands over at a time: batches are cut from these chunks in the main process,
# so the memory in flight (chunk x prefetch x workers) does not grow with a 512-image eval batch.
CHUNK = 64


def problem(cfg: Any) -> Optional[str]:
    return first_problem(
        (bool(cfg.train_urls), "data=webdataset needs data.train_urls='/data/train-{0000..0127}.tar'"),
        (bool(cfg.test_urls or cfg.val_urls),
         "data=webdataset needs data.test_urls (or data.val_urls, which the final test then uses)"),
        (cfg.storage != "memory",
         "data=webdataset streams its shards: data.storage=memory cannot hold them (use stream or auto)"),
        (cfg.shuffle_buffer >= 0, f"data.shuffle_buffer must be >= 0 (got {cfg.shuffle_buffer})"),
        (bool(cfg.image_key.strip(" ;")), "data.image_key must name at least one extension, e.g. jpg;png"),
        (bool(cfg.label_key.strip()), "data.label_key must name the label's extension, e.g. cls"),
    )


def _import_wds() -> Any:
    try:
        import webdataset
    except ImportError:
        raise DataError('data=webdataset needs the webdataset library: pip install "swin-cli[webdataset]"') from None
    return webdataset


def expand_shards(pattern: str, key: str) -> list[str]:
    """The shard files of a brace pattern (webdataset's expansion) or a glob, in sorted order."""
    wds = _import_wds()
    if "://" in pattern or pattern.startswith("pipe:"):
        raise DataError(f"data.{key}={pattern}: only shard files on a (mounted) file system can be counted "
                        f"and split; copy or mount them locally")
    found: list[str] = []
    absent: list[str] = []
    for url in wds.shardlists.expand_urls(os.path.expanduser(pattern)):
        if glob.has_magic(url):
            found.extend(sorted(glob.glob(url)))
        else:
            (found if os.path.isfile(url) else absent).append(url)
    if not found:
        raise DataError(f"data.{key}={pattern} matches no files")
    if absent:  # a brace range a little too wide, or shards still being copied: say so, go on
        log.warning(f"data.{key}: {len(absent)} of {plural(len(found) + len(absent), 'shard')} do not exist "
                    f"(e.g. {absent[0]}); reading the others")
    return sorted(dict.fromkeys(found))


# ------------------------------------------------------------------------------- counting


def count_shard(path: str, image_exts: list[str], label_ext: str) -> tuple[int, int, int]:
    """(samples with an image and a label, largest label, smallest label) of one shard, from its
    tar headers; only the small label members are read. A shard unreadable part-way counts what
    came before (the reader skips the rest of it the same way)."""
    import tarfile

    from webdataset.tariterators import base_plus_ext

    has_image: dict[str, bool] = {}
    labels: dict[str, int] = {}
    try:
        with tarfile.open(path, "r:") as tar:  # "r:": plain tar, members seeked over, not read
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = base_plus_ext(member.name)
                if key is None:
                    continue
                ext = ext.lower()
                if ext in image_exts:
                    has_image[key] = True
                elif ext == label_ext:
                    try:
                        labels[key] = int(tar.extractfile(member).read().decode().strip())
                    except (ValueError, UnicodeDecodeError):
                        pass  # the reader skips this sample and names it
    except (tarfile.TarError, OSError, EOFError) as exc:
        log.warning(f"shard {path} is unreadable after {plural(len(has_image), 'image')} ({exc}); counting those")
    valid = [labels[k] for k in has_image if k in labels]
    return len(valid), max(valid, default=-1), min(valid, default=0)


def count_shards(shards: list[str], image_exts: list[str], label_ext: str, cache_dir: str) -> list[list[int]]:
    """count_shard for each shard, remembered in cache_dir keyed by path, size, mtime and keys."""
    cache = Path(os.path.expanduser(cache_dir)) / COUNTS_FILE
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    keys = []
    for path in shards:
        st = os.stat(path)
        keys.append(f"v{COUNTS_VERSION}|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|"
                    f"{';'.join(image_exts)}|{label_ext}")
    missing = [i for i, k in enumerate(keys) if k not in known]
    if missing:
        log.info(f"data: counting the samples of {len(missing):,} shard(s) (once; cached in {cache})")
        # Threads: the scan waits on the file system (seeks over image data), not on Python.
        with ThreadPoolExecutor(min(16, len(missing))) as pool:
            counted = list(pool.map(lambda i: count_shard(shards[i], image_exts, label_ext), missing))
        for i, result in zip(missing, counted):
            known[keys[i]] = list(result)
        _store_counts(cache, known)
    return [known[k] for k in keys]


def _store_counts(cache: Path, known: dict[str, Any]) -> None:
    from swin_cli.atomic_io import atomic_file

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(cache) as f:  # ranks racing each write a whole file; the last one wins
            f.write(json.dumps(known).encode())
        note_written(cache)  # the panel shows the cache's size
    except OSError as exc:  # a read-only cache dir costs a recount next time, nothing else
        log.warning(f"could not write the shard counts {cache} ({exc.strerror}); continuing without")


# ------------------------------------------------------------------------------- reading


class _ShardStream(IterableDataset):
    """One pass over `shards`, split by DataLoader worker: chunks of up to `chunk` decoded samples."""

    def __init__(self, shards: list[str], transform: Callable, image_exts: list[str], label_ext: str,
                 seed: int, chunk: int, shuffle_buffer: int):
        self.shards, self.transform, self.image_exts, self.label_ext = shards, transform, image_exts, label_ext
        self.seed, self.chunk, self.shuffle_buffer = seed, chunk, shuffle_buffer

    def __iter__(self) -> Iterator[Chunk]:
        import webdataset as wds

        failed: list[str] = []

        def note(exn: Exception) -> bool:  # a shard that cannot be read: name it, go on
            failed.append(f"{exn.args[-1] if len(exn.args) > 1 and exn.args[-1] else 'a shard'} ({exn.args[0]})")
            return True

        stages = [wds.SimpleShardList(self.shards), wds.split_by_worker, wds.tarfile_to_samples(handler=note)]
        if self.shuffle_buffer:
            info = get_worker_info()
            rng = random.Random(step_seed(self.seed, info.id if info else 0))
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng))
        pixels, labels = [], []
        for sample in wds.DataPipeline(*stages):
            if not any(e in sample for e in (*self.image_exts, self.label_ext)):
                continue  # other members (metadata, a README): not a sample, as the count saw it
            decoded = self._decode(sample)
            if decoded is None:
                failed.append(f"{sample.get('__url__')}:{sample.get('__key__')}")
                continue
            pixels.append(decoded[0])
            labels.append(decoded[1])
            if len(labels) == self.chunk:
                yield self._collate(pixels, labels, failed)
                pixels, labels, failed[:] = [], [], []
        if labels or failed:
            yield self._collate(pixels, labels, failed)

    def _decode(self, sample: dict[str, Any]) -> Optional[tuple[np.ndarray, int]]:
        image = next((sample[e] for e in self.image_exts if e in sample), None)
        try:
            label = int(sample[self.label_ext].decode().strip())
            # The crop depends on the sample, not on the worker or the shard's folder.
            name = f"{os.path.basename(sample['__url__'])}/{sample['__key__']}"
            rng = random.Random(step_seed(self.seed, zlib.crc32(name.encode())))
            return self.transform(image, rng), label
        except Exception:  # no image, no label, or PIL's many errors for a corrupt file
            return None

    def _collate(self, pixels: list[np.ndarray], labels: list[int], failed: list[str]) -> Chunk:
        images = torch.from_numpy(np.stack(pixels)) if pixels else torch.zeros(0, dtype=torch.uint8)
        return images, torch.tensor(labels, dtype=torch.int64), list(failed)


class ShardSplit:
    """A split of tar shards, streamed: the batch interface of swin_cli/data/splits.py."""

    storage = "stream"
    random_access = False

    def __init__(self, shards: list[str], counts: list[int], transform: Callable, eval_transform: Callable,
                 image_exts: list[str], label_ext: str, workers: int, prefetch: int, pin_memory: bool = False,
                 shuffle_buffer: int = 0, seed: int = 0, where: str = ""):
        self.shards, self.counts = shards, counts
        self.transform, self.eval_transform = transform, eval_transform
        self.image_exts, self.label_ext = image_exts, label_ext
        self.workers, self.prefetch, self.pin_memory = workers, prefetch, pin_memory
        self.shuffle_buffer, self.seed, self.where = shuffle_buffer, seed, where
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return sum(self.counts)

    # -- one pass over some shards, in chunks
    def _chunks(self, shards: list[str], transform: Callable, seed: int, chunk: int,
                shuffle_buffer: int) -> Iterator[Chunk]:
        dataset = _ShardStream(shards, transform, self.image_exts, self.label_ext, seed, chunk, shuffle_buffer)
        workers = min(self.workers, len(shards))  # a worker without a shard would only idle
        if not workers:
            yield from dataset
            return
        with closing(read_loader(worker_loader(dataset, workers, self.prefetch, batch_size=None))) as chunks:
            yield from chunks

    def _batches(self, chunks: Iterator[Chunk], size: int, skip: int = 0, keep_last: bool = False) -> Iterator[Batch]:
        """Chunks cut into batches of exactly `size` (the last one shorter when keep_last), the
        first `skip` samples dropped."""
        images: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        have = 0
        for x, y, failed in chunks:
            self._note_skipped(failed)
            if skip:
                drop = min(skip, len(y))
                x, y, skip = x[drop:], y[drop:], skip - drop
            if not len(y):
                continue
            images.append(x)
            labels.append(y)
            have += len(y)
            while have >= size:
                x_all, y_all = torch.cat(images), torch.cat(labels)
                yield self._pinned(x_all[:size]), y_all[:size]
                images, labels, have = [x_all[size:]], [y_all[size:]], have - size
        if keep_last and have:
            yield self._pinned(torch.cat(images)), torch.cat(labels)

    def _pinned(self, x: torch.Tensor) -> torch.Tensor:
        return x.pin_memory() if self.pin_memory else x

    def _note_skipped(self, failed: list[str]) -> None:
        for name in failed:
            if name not in self.skipped:
                self.skipped.append(name)
                log.warning(f"skipped unreadable data: {name} ({len(self.skipped)} so far)")

    # -- training
    def rank_shards(self, epoch: int, seed: int, rank: int, world: int) -> list[str]:
        """This rank's shards in epoch `epoch`: every world-th of the epoch's shuffled order."""
        order = list(self.shards)
        random.Random(step_seed(seed + 7919, epoch)).shuffle(order)
        mine = order[rank::world]
        if not mine:  # fewer shards than ranks: share one (make more shards for real runs)
            mine = [order[rank % len(order)]]
        return mine

    def _passes(self, shards: list[str], plan: EpochPlan, first_pass: int) -> Iterator[Chunk]:
        """Pass after pass over the rank's shards, each with its own crops and buffer order."""
        pass_no = first_pass
        while True:
            seed = step_seed(self.seed + 104_729 * plan.epoch, pass_no)
            got = 0
            with closing(self._chunks(shards, self.transform, seed, CHUNK, self.shuffle_buffer)) as chunks:
                for chunk in chunks:
                    got += len(chunk[1])
                    yield chunk
            if not got:
                raise DataError(f"no readable samples in the {len(shards)} shard(s) of {self.where} "
                                f"this rank reads ({shards[0]}, ...)")
            pass_no += 1

    def train_batches(self, plan: EpochPlan) -> Iterator[Batch]:
        mine = self.rank_shards(plan.epoch, plan.seed, plan.rank, plan.world)
        steps = plan.steps - plan.start_step
        skip = plan.start_step * plan.rank_images
        count_of = dict(zip(self.shards, self.counts))
        in_mine = sum(count_of[s] for s in mine)
        first_pass, skip = divmod(skip, in_mine) if in_mine else (0, skip)
        if steps <= 0:
            return
        with closing(self._passes(mine, plan, first_pass)) as chunks:
            for n, batch in enumerate(self._batches(chunks, plan.rank_images, skip), 1):
                yield batch
                if n == steps:
                    return

    # -- evaluation
    def eval_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        # Every world-th shard: the ranks' parts are disjoint and cover the split; evaluation
        # adds its sums over ranks once at the end, so uneven parts cannot hang it.
        mine = self.shards[rank::world]
        if not mine:
            return
        with closing(self._chunks(mine, self.eval_transform, 0, CHUNK, 0)) as chunks:
            yield from self._batches(chunks, batch_size, keep_last=True)

    def _first(self, count: int, seed: int, transform: Callable) -> Batch:
        order = list(self.shards)
        random.Random(seed).shuffle(order)
        images, labels = [], []
        with closing(self._chunks(order, transform, seed, CHUNK, self.shuffle_buffer)) as chunks:
            for batch in self._batches(chunks, min(count, 256), keep_last=True):
                images.append(batch[0])
                labels.append(batch[1])
                if sum(map(len, labels)) >= count:
                    break
        return torch.cat(images)[:count], torch.cat(labels)[:count]

    def sample(self, count: int, seed: int) -> Batch:
        """`count` images of randomly ordered shards through this split's transform (mode=preview)."""
        return self._first(count, seed, self.transform)

    def stats_sample(self, count: int, seed: int) -> Iterator[Batch]:
        """The same through the eval crop, in one batch: what the mean/std are estimated from."""
        yield self._first(count, seed, self.eval_transform)

    def subset(self, index: torch.Tensor) -> "ShardSplit":
        raise DataError("shards are read in sequence: a ShardSplit has no random access to take a subset of")


def _first_image(shard: str, image_exts: list[str]) -> Any:
    import webdataset as wds

    samples = wds.DataPipeline(wds.SimpleShardList([shard]), wds.tarfile_to_samples(handler=wds.ignore_and_continue))
    for sample in samples:
        image = next((sample[e] for e in image_exts if e in sample), None)
        if image is not None:
            return image
    return None


def load(cfg: Any) -> SourceData:
    _import_wds()
    image_exts = [e.strip().lower() for e in cfg.image_key.split(";") if e.strip()]
    label_ext = cfg.label_key.strip().lower()
    found: dict[str, tuple[list[str], list[list[int]]]] = {}
    for split in ("train", "val", "test"):
        key = f"{split}_urls"
        pattern = cfg.get(key)
        if not pattern:
            continue
        shards = expand_shards(str(pattern), key)
        counts = count_shards(shards, image_exts, label_ext, cfg.cache_dir)
        if not sum(c[0] for c in counts):
            raise DataError(f"data.{key}={pattern}: its {len(shards)} shard(s) hold no samples with an image "
                            f"({cfg.image_key}) and a .{label_ext} label (data.image_key, data.label_key)")
        found[split] = (shards, counts)
    largest = max(c[1] for _, counts in found.values() for c in counts)
    if min(c[2] for _, counts in found.values() for c in counts) < 0:
        raise DataError(f"the shards' .{label_ext} labels must be integers >= 0")
    if cfg.classes:
        classes = [str(c) for c in cfg.classes]
        if largest >= len(classes):
            raise DataError(f"data.classes names {plural(len(classes), 'class')} but the shards have label {largest}")
    else:
        classes = [str(i) for i in range(largest + 1)]
    first = _first_image(found["train"][0][0], image_exts)
    channels = cfg.channels or (guess_channels(first) if first is not None else 3)
    training, evaluation = image_views(cfg, channels)
    cuda = torch.cuda.is_available()  # pinned batches: the source does not know the run's device

    def split_of(name: str, transform: Callable) -> ShardSplit:
        shards, counts = found.get(name, ([], []))
        return ShardSplit(shards, [c[0] for c in counts], transform, evaluation, image_exts, label_ext,
                          default_workers(cfg.workers), cfg.prefetch, cuda,
                          shuffle_buffer=cfg.shuffle_buffer if name == "train" else 0, seed=cfg.split_seed,
                          where=str(cfg.get(f"{name}_urls") or ""))

    train, val = split_of("train", training), split_of("val", evaluation)
    where = f"WebDataset shards {cfg.train_urls}"
    if "test" not in found:  # the final test on val; no validation then
        log.info("data: no data.test_urls, so the final test is on data.val_urls (no validation)")
        return SourceData(train, split_of("none", evaluation), val, classes, channels, "val", where=where)
    return SourceData(train, val, split_of("test", evaluation), classes, channels, where=where)
