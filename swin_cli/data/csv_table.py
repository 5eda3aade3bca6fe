"""data=csv: images listed in tables, one row per image, with the images anywhere.

data.train_table, data.val_table and data.test_table are each a CSV file with a header row, or
a JSON-lines file (.jsonl, .ndjson: one object per line). data.image_column (default `path`)
holds an image's path: absolute, or relative to data.root when it is set, else to the table's
own folder. data.label_column (default `label`) holds its class: integers 0..K-1 (the classes
are then "0".."K-1", K from the largest label of the training table), or names (the classes
are the training table's sorted names, as an image folder's are its sorted folders).

With data.task=multilabel a label cell holds several labels separated by data.label_separator
(default a space: "haze primary water", as Planet's Amazon tags; a JSON-lines cell may also be a
list), the classes are the sorted union over the training table, and an empty cell is an image
with no labels (allowed, counted and said once per table). Each sample's label is then the
sorted tuple of its classes' indices, and the splits' labels multi-hot rows (sources.label_tensor).

Without a val table, validation is held out of train (data.val_fraction); without a test table,
the final test is on the val table. The images are image files like a folder's (`FileSamples`):
memory or stream storage, an unreadable image skipped and named, and a listed file that does not
exist named and left out (a table whose files all do not exist is an error).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import torch

from swin_cli.data.decode import guess_channels
from swin_cli.data.schema import first_problem, plain
from swin_cli.data.sources import DataError, FileSamples, SourceData, first_of_each_class
from swin_cli.text import plural

log = logging.getLogger(__name__)

JSON_LINES = (".jsonl", ".ndjson")
INTEGER = re.compile(r"\s*[+-]?\d+\s*")

Rows = list[tuple[int, dict[str, Any]]]  # (line number, row) pairs


class Table(NamedTuple):
    """A table's image and label columns as written, with the line each row is on."""

    path: Path
    images: list[str]
    labels: list[Any]
    lines: list[int]


def multilabel(cfg: Any) -> bool:
    return plain(cfg.get("task") or "single") == "multilabel"


def problem(cfg: Any) -> Optional[str]:
    return first_problem(
        (bool(cfg.train_table), "data=csv needs data.train_table=/path/to/train.csv (a path,label table)"),
        (bool(cfg.test_table or cfg.val_table),
         "data=csv needs data.test_table (or data.val_table, which the final test then uses)"),
        (bool(cfg.image_column) and bool(cfg.label_column),
         "data=csv needs data.image_column and data.label_column (the tables' columns)"),
    )


# ------------------------------------------------------------------------------- reading


def _csv_rows(path: Path) -> tuple[list[str], Rows]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        try:
            rows = [(reader.line_num, row) for row in reader]
        except csv.Error as exc:
            raise DataError(f"{path} line {reader.line_num} is not CSV ({exc})") from None
        return list(reader.fieldnames or []), rows


def _json_rows(path: Path) -> tuple[list[str], Rows]:
    rows: Rows = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {number} is not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {number} is not a JSON object (a JSON-lines table has one per line)")
            rows.append((number, row))
    return (list(rows[0][1]) if rows else []), rows


def read_table(cfg: Any, key: str) -> Table:
    """The table of data.<key>; one line naming the key when the table is missing, empty, or
    lacks a column, or a row has no image (or no label, unless data.task=multilabel)."""
    given = cfg.get(key)
    path = Path(os.path.abspath(os.path.expanduser(str(given))))
    if not path.is_file():
        raise DataError(f"data.{key}={given} does not exist or is not a file")
    try:
        columns, rows = (_json_rows if path.suffix.lower() in JSON_LINES else _csv_rows)(path)
    except UnicodeDecodeError:
        raise DataError(f"data.{key}={given} is not UTF-8 text (a CSV or JSON-lines table)") from None
    if not rows:
        raise DataError(f"data.{key}={given} has no rows")
    values: dict[str, list[Any]] = {}
    for column_key in ("image_column", "label_column"):
        column = cfg.get(column_key)
        if column not in columns:
            raise DataError(f"data.{column_key}={column} is not a column of {path} "
                            f"(its columns: {', '.join(map(str, columns)) or 'none'})")
        values[column_key] = []
        may_be_empty = column_key == "label_column" and multilabel(cfg)  # an image with no labels
        for number, row in rows:
            value = row.get(column)
            if not may_be_empty and (value is None or (isinstance(value, str) and not value.strip())):
                raise DataError(f"{path} line {number} has no {column} (data.{column_key})")
            values[column_key].append(value)
    return Table(path, [str(v) for v in values["image_column"]], values["label_column"],
                 [number for number, _ in rows])


# ------------------------------------------------------------------------------- labels


def _integer(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and INTEGER.fullmatch(value) else None


def _name(value: Any) -> str:
    return value.strip() if isinstance(value, str) else str(value)


def class_names(train_labels: list[Any], key: str = "train_table") -> tuple[list[str], Callable[[Any], Optional[int]]]:
    """(the classes, label as written -> its index or None) from the training table's labels:
    "0".."K-1" when every label is an integer, else the sorted distinct names."""
    integers = [_integer(v) for v in train_labels]
    if all(i is not None for i in integers):
        if min(integers) < 0:
            raise DataError(f"data.{key} has label {min(integers)}: integer labels must be >= 0")
        count = max(integers) + 1

        def index_of_integer(value: Any) -> Optional[int]:
            i = _integer(value)
            return i if i is not None and 0 <= i < count else None

        return [str(i) for i in range(count)], index_of_integer
    names = sorted({_name(v) for v in train_labels})
    index = {name: i for i, name in enumerate(names)}
    return names, lambda value: index.get(_name(value))


def label_set(cell: Any, separator: str) -> list[Any]:
    """The labels of one multi-label cell, as written: split at `separator`, blanks dropped; a
    JSON-lines list as it is; an empty cell (or JSON null) none."""
    if cell is None:
        return []
    if isinstance(cell, list):
        return [v for v in cell if v is not None and _name(v)]
    if isinstance(cell, str):
        return [part.strip() for part in cell.split(separator) if part.strip()]
    return [cell]


# ------------------------------------------------------------------------------- samples


def _existing(cfg: Any, key: str, path: Path, images: list[str]) -> list[Optional[str]]:
    """Each listed image's file, or None where it does not exist (warned about, by name)."""
    origin, base = ("data.root", Path(os.path.expanduser(cfg.root))) if cfg.get("root") else \
        ("the table's folder", path.parent)
    files = [os.path.abspath(base / os.path.expanduser(image)) for image in images]
    missing = [f for f in files if not os.path.isfile(f)]
    if len(missing) == len(files):
        raise DataError(f"none of the {plural(len(files), 'image')} of data.{key}={cfg.get(key)} exist "
                        f"(e.g. {missing[0]}); "
                        f"relative paths are read from {origin} ({base})")
    if missing:
        log.warning(f"data.{key}: {len(missing):,} of {len(files):,} listed images do not exist, left out: "
                    f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    gone = set(missing)
    return [f if f not in gone else None for f in files]


def _samples(cfg: Any, key: str, table: Table, index_of: Callable[[Any], Optional[int]],
             classes: list[str]) -> FileSamples:
    several = multilabel(cfg)
    paths, indices, unlabelled = [], [], 0
    for file, cell, line in zip(_existing(cfg, key, table.path, table.images), table.labels, table.lines):
        written = label_set(cell, cfg.label_separator) if several else [cell]
        found = [index_of(label) for label in written]
        for label, index in zip(written, found):
            if index is None:
                raise DataError(f"data.{key}={cfg.get(key)} has label {_name(label)!r}, which data.train_table has "
                                f"not (its classes: {', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}), "
                                f"on line {line}")
        if file is not None:
            paths.append(file)
            indices.append(tuple(sorted(set(found))) if several else found[0])
            unlabelled += not found
    if unlabelled:
        log.info(f"data.{key}: {plural(unlabelled, 'row')} of {len(paths):,} {'has' if unlabelled == 1 else 'have'} "
                 f"no labels (images with none of the classes, as data.task=multilabel allows)")
    return FileSamples(paths, indices, str(table.path), len(classes) if several else 0)


def _classes(cfg: Any, train: Table) -> tuple[list[str], Callable[[Any], Optional[int]]]:
    """class_names of the training table: of its cells, or of every label in them (multilabel)."""
    if not multilabel(cfg):
        return class_names(train.labels)
    labels = [label for cell in train.labels for label in label_set(cell, cfg.label_separator)]
    if not labels:
        raise DataError(f"data.train_table={cfg.get('train_table')} has no labels in any row "
                        f"(data.task=multilabel, data.label_separator={cfg.label_separator!r})")
    return class_names(labels)


def load(cfg: Any) -> SourceData:
    tables = {key: read_table(cfg, key) for key in ("train_table", "val_table", "test_table") if cfg.get(key)}
    classes, index_of = _classes(cfg, tables["train_table"])
    found = {key: _samples(cfg, key, table, index_of, classes) for key, table in tables.items()}
    train, val, test = found["train_table"], found.get("val_table"), found.get("test_table")
    channels = guess_channels(train.read(0))
    # Log lines read "<where> test": the tables' folder says that, where the train table's path would not.
    folders = {str(Path(str(cfg.get(key))).expanduser().resolve().parent) for key in tables}
    where = folders.pop() if len(folders) == 1 else train.where
    task = "multilabel" if multilabel(cfg) else "single"
    if test is None:  # train and val tables only: the val table becomes the test split
        log.info(f"data: no data.test_table, so the final test is on data.val_table={cfg.get('val_table')} "
                 f"(validation holds out data.val_fraction of train instead)")
        return SourceData(train, None, val, classes, channels, "val", where=where, task=task)
    return SourceData(train, val, test, classes, channels, where=where, task=task)


def class_count(cfg: Any) -> tuple[Optional[int], str]:
    """The training table's classes, without reading an image (benchmark's shapes)."""
    try:
        return len(_classes(cfg, read_table(cfg, "train_table"))[0]), ""
    except DataError as exc:
        return None, str(exc)


def first_images(cfg: Any, view: Callable, count: int) -> tuple[torch.Tensor, str]:
    """The first images of the test split, one class after another, decoded directly."""
    test = load(cfg).test
    decoded = first_of_each_class(test, view, count)
    if not decoded:
        return torch.empty(0, view.channels, view.size, view.size, dtype=torch.uint8), test.where
    return torch.from_numpy(np.stack(decoded)), f"images of {test.where}"
