"""The data source registry: one yaml per source, data.name checked against it at start-up, each
source checking only its own keys, shapes without loading, and a data package without import
cycles."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONF, ROOT, make_config, run_cli

from swin_cli.config import ConfigError, validate
from swin_cli.data import SOURCES, DataError, ImageSplit, data_shape, data_source, debug_subset, load_data


def test_every_source_has_its_yaml_and_every_yaml_its_source():
    named = {}
    for path in (CONF / "data").glob("*.yaml"):
        conf = yaml.safe_load(path.read_text())
        named[path.stem] = conf.get("data", conf)["name"]  # digits.yaml is a _global_ package
    assert named == {name: name for name in SOURCES}


@pytest.mark.e2e  # a subprocess
def test_an_unknown_source_is_one_line_naming_the_sources(tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(make_config("data.name=parquet"))
    assert str(err.value) == f"data=parquet is not a data source (the sources: {', '.join(sorted(SOURCES))})"
    with pytest.raises(DataError, match="unknown data source 'parquet'"):
        data_source("parquet")  # a checkpoint's name, say
    proc = run_cli("data.name=parquet", cwd=tmp_path, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "data=parquet is not a data source" in lines[0], proc.stderr


def test_an_unknown_data_key_still_fails_naming_it():
    with pytest.raises(Exception, match="train_tabel"):
        make_config("data=csv", "data.train_tabel=/t.csv")


@pytest.mark.parametrize("key", ["data.shuffle_buffer=-1", "data.image_key=' ;'", "data.label_key=' '"])
def test_a_sources_own_keys_are_checked_only_for_it(key):
    validate(make_config("data=digits", key))  # digits reads no shards
    with pytest.raises(ConfigError, match=key.split("=")[0]):
        validate(make_config("data=webdataset", "data.train_urls=/s.tar", "data.test_urls=/t.tar", key))


def test_sources_held_by_their_reader_refuse_streams_naming_the_file_sources():
    with pytest.raises(ConfigError) as err:
        validate(make_config("data=cifar10", "data.storage=stream"))
    assert str(err.value).endswith("are for image files (data=imagefolder, webdataset, huggingface, csv)")
    with pytest.raises(ConfigError, match="which data=webdataset does not give"):
        validate(make_config("data=webdataset", "data.train_urls=/s.tar", "data.test_urls=/t.tar", "data.repeats=2"))
    assert [s.storages for s in (SOURCES["digits"], SOURCES["csv"], SOURCES["webdataset"])] == \
        [("memory",), ("memory", "stream"), ("stream",)]


@pytest.mark.parametrize("source, shape", [("digits", (1, 10, "")), ("cifar100", (3, 100, "")),
                                           ("huggingface", (3, 10, ""))])
def test_shapes_known_without_loading(source, shape):
    assert data_shape(make_config(f"data={source}").data) == shape
    assert data_shape(make_config(f"data={source}", "data.channels=3").data)[0] == 3


def test_a_split_without_random_access_cannot_make_a_debug_subset():
    class Shards(ImageSplit):
        random_access = False

    whole = load_data(make_config("data=digits").data)
    data = dataclasses.replace(whole, train=Shards(whole.train.images, whole.train.labels))
    cfg = make_config("data=digits", "debug=fast", "data.eval_batch_size=100")
    with pytest.raises(DataError, match="need random access to the data, which data=digits does not give"):
        debug_subset(data, cfg, 1)
    small = debug_subset(whole, cfg, 1)
    assert len(small.test) == 100 and torch.equal(small.test.images, whole.test.images[:100])


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The swin_cli modules a module imports, at its top or inside its functions; a name the
    data package hands out lazily counts as its defining module."""
    from swin_cli.data import _HOMES

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("swin_cli"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                if name in modules:
                    found.add(name)
                elif node.module == "swin_cli.data" and alias.name in _HOMES:
                    found.add(f"swin_cli.data.{_HOMES[alias.name]}")
                else:
                    found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("swin_cli")}
    return found


def test_no_import_cycle_runs_through_the_data_package():
    """Not even through a function's import (storage and webdataset once imported each other so)."""
    paths = {_module_of(p): p for p in (ROOT / "swin_cli").rglob("*.py")}
    graph = {module: _imports(path, set(paths)) for module, path in paths.items()}

    def reaches(start: str, target: str) -> list[str]:
        seen, stack = set(), [(start, [start])]
        while stack:
            module, path = stack.pop()
            for imported in graph.get(module, ()):
                if imported == target:
                    return path + [target]
                if imported not in seen:
                    seen.add(imported)
                    stack.append((imported, path + [imported]))
        return []

    for module in (m for m in graph if m.startswith("swin_cli.data.")):
        assert not reaches(module, module), " -> ".join(reaches(module, module))
