"""Hugging Face datasets (`pip install "swin-cli[huggingface]"`): a folder written by
save_to_disk, a folder of parquet files, or a hub name, read with the `datasets` library.

Each split becomes `HFSamples`, random access over the memory-mapped Arrow table with the image
column cast to Image(decode=False): reading a row gives the encoded bytes (or a file path), and
decoding happens in our transform, in the stream loader's worker processes, like any other
image file. The Arrow table is memory-mapped, so forked workers share it instead of copying it.

With data.task=multilabel the label column holds a list per row: a Sequence (List) of ClassLabel,
whose names are the classes, or of plain values (ints or strings), whose sorted union is. An
empty list is an image with no labels (allowed, counted and said once per split).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from swin_cli.data.decode import ImageInput, guess_channels
from swin_cli.data.schema import plain
from swin_cli.data.sources import DataError, Label, SourceData
from swin_cli.text import plural

log = logging.getLogger(__name__)

VAL_SPLITS = ("validation", "val", "valid")


def problem(cfg: Any) -> Optional[str]:
    if not cfg.path:
        return ("data=huggingface needs data.path=/folder/saved/with/save_to_disk "
                "(or a folder of parquet files, or a hub name)")
    return None


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError('data=huggingface needs the datasets library: pip install "swin-cli[huggingface]"') from None
    return datasets


@dataclass
class HFSamples:
    """Rows `rows` of one split of a Hugging Face dataset, images still encoded."""

    table: Any  # datasets.Dataset holding only the image column, decode=False
    column: str
    labels: list[Label]
    rows: list[int]  # row of the table behind each sample (subsets keep the original rows)
    where: str  # "path[split]", for names in warnings
    multilabel_classes: int = 0  # see sources.Samples

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, i: int) -> ImageInput:
        value = self.table[self.rows[i]][self.column]
        if isinstance(value, dict):  # the Image feature undecoded: {"bytes": ..., "path": ...}
            if value.get("bytes") is not None:
                return value["bytes"]
            if value.get("path"):
                return value["path"]
            raise ValueError("an image with neither bytes nor a path")
        if value is None:
            raise ValueError("no image")
        return value  # bytes (a binary column), a path (a string column) or a PIL image

    def name(self, i: int) -> str:
        return f"{self.where}[{self.rows[i]}]"

    def subset(self, index: list[int]) -> "HFSamples":
        return HFSamples(self.table, self.column, [self.labels[i] for i in index], [self.rows[i] for i in index],
                         self.where, self.multilabel_classes)


def _is_local(path: str) -> bool:
    return os.path.isdir(os.path.expanduser(path))


def _load(datasets: Any, path: str) -> Any:
    """A DatasetDict (or a Dataset) from a saved folder, a parquet folder or a hub name."""
    folder = Path(os.path.expanduser(path))
    if folder.is_dir():
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            return datasets.load_from_disk(str(folder))
        if any(folder.rglob("*.parquet")):
            return datasets.load_dataset("parquet", data_dir=str(folder))
        raise DataError(f"data.path={path} is neither a folder saved with save_to_disk (no dataset_dict.json "
                        f"or state.json) nor a folder of parquet files")
    if folder.exists() or path.startswith((".", "/", "~")):
        raise DataError(f"data.path={path} is not a folder")
    try:
        return datasets.load_dataset(path)
    except Exception as exc:  # ConnectionError, FileNotFoundError, the hub's own errors...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"could not load hub dataset {path} (offline? {reason[:160]}): save it with "
                        f"datasets' save_to_disk on a machine with network and pass data.path=/that/folder") from None


def _holds_lists(feature: Any) -> bool:
    """Whether a column's feature is a list per row (Sequence / List of anything)."""
    return hasattr(feature, "feature") or isinstance(feature, list)


def _row_labels(value: Any) -> list[Any]:
    """A multi-label cell's values: a list as it is, a single value as one, None as none."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _class_names(splits: dict[str, Any], column: str,
                 several: bool) -> tuple[list[str], Optional[dict[Any, int]]]:
    """(class names, value -> label map, or None when the column is a ClassLabel already, or with
    `several` (data.task=multilabel) a list of ClassLabel)."""
    feature = splits["train"].features[column]
    if several and _holds_lists(feature):
        feature = feature.feature if hasattr(feature, "feature") else feature[0]
    names = getattr(feature, "names", None)
    if names:
        return list(names), None
    rows = (row for ds in splits.values() for row in _column(ds, column))
    found = {v for row in rows for v in (_row_labels(row) if several else [row])}
    values = sorted(found, key=lambda v: (str(type(v)), v))
    return [str(v) for v in values], {v: i for i, v in enumerate(values)}


def _column(ds: Any, column: str) -> list[Any]:
    # Through Arrow: one column of a million rows in a fraction of a second, without the images.
    return ds.with_format("arrow")[column].to_pylist()


def _samples(ds: Any, datasets: Any, split: str, cfg: Any, mapping: Optional[dict[Any, int]],
             classes: int) -> HFSamples:
    image, label = cfg.image_column, cfg.label_column
    values = _column(ds, label)
    index = (lambda v: int(v)) if mapping is None else mapping.__getitem__
    several = plain(cfg.get("task") or "single") == "multilabel"
    if several:
        labels: list[Label] = [tuple(sorted({index(v) for v in _row_labels(row)})) for row in values]
        lowest = min((min(s) for s in labels if s), default=0)
    else:
        labels = [index(v) for v in values]
        lowest = min(labels, default=0)
    if lowest < 0:  # hub test splits are often unlabelled (-1)
        raise DataError(f"data.label_column={label}: the {split} split of {cfg.path} has unlabelled rows "
                        f"(label {lowest}); save a labelled split and pass that folder")
    unlabelled = sum(not s for s in labels) if several else 0
    if unlabelled:
        log.info(f"data: {plural(unlabelled, 'row')} of {len(labels):,} in the {split} split of {cfg.path} "
                 f"{'has' if unlabelled == 1 else 'have'} no labels (images with none of the classes, as "
                 f"data.task=multilabel allows)")
    table = ds.select_columns([image])
    if isinstance(table.features[image], datasets.Image):
        table = table.cast_column(image, datasets.Image(decode=False))
    return HFSamples(table, image, labels, list(range(len(ds))), f"{cfg.path}[{split}]", classes if several else 0)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers at all. Without it, datasets retries for ~25 s, logging each
    try, before it fails; behind a proxy, the proxy decides, so say yes."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load(cfg: Any) -> SourceData:
    offline = any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if _is_local(cfg.path):
        # A local folder needs no network: keep datasets from asking the hub about anything.
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    elif not offline and not _hub_reachable():
        # No network: offline mode still finds a copy in the datasets cache, and fails at once
        # (with our one line) when there is none. Read when datasets is first imported.
        log.info("data: the Hugging Face hub is unreachable; looking for the data set in the local cache only")
        os.environ["HF_HUB_OFFLINE"] = "1"
    datasets = _import_datasets()
    if _is_local(cfg.path):
        datasets.disable_progress_bars()  # converting a local folder takes seconds; no bars in the log
    loaded = _load(datasets, cfg.path)
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    if "train" not in splits:
        raise DataError(f"data.path={cfg.path} has no train split (it has {', '.join(splits) or 'none'})")
    val_name = next((s for s in VAL_SPLITS if s in splits), None)
    used = {"train": splits["train"], **({"val": splits[val_name]} if val_name else {}),
            **({"test": splits["test"]} if "test" in splits else {})}
    if len(used) == 1:
        raise DataError(f"data.path={cfg.path} has only a train split (it has {', '.join(splits)}); "
                        f"it needs a test or validation split, e.g. saved from ds.train_test_split(test_size=0.1)")
    for key, column in (("image_column", cfg.image_column), ("label_column", cfg.label_column)):
        for split, ds in used.items():
            if column not in ds.column_names:
                raise DataError(f"data.{key}={column} is not a column of {cfg.path} {split} "
                                f"(its columns: {', '.join(ds.column_names)})")
    task = plain(cfg.get("task") or "single")
    if task == "single" and _holds_lists(used["train"].features[cfg.label_column]):
        raise DataError(f"data.label_column={cfg.label_column} of {cfg.path} holds a list of labels per row: "
                        f"set data.task=multilabel")
    classes, mapping = _class_names(used, cfg.label_column, task == "multilabel")
    names = {"train": "train", "val": val_name, "test": "test"}
    samples = {s: _samples(ds, datasets, names[s], cfg, mapping, len(classes)) for s, ds in used.items()}
    channels = guess_channels(samples["train"].read(0))
    where = f"Hugging Face dataset {cfg.path}"
    if "test" not in samples:  # train and validation only: validation becomes the test split
        log.info(f"data: {cfg.path} has no test split, so the final test is on {val_name} "
                 f"(validation holds out data.val_fraction of train instead)")
        return SourceData(samples["train"], None, samples["val"], classes, channels, "val", where=where, task=task)
    return SourceData(samples["train"], samples.get("val"), samples["test"], classes, channels, where=where,
                      task=task)
