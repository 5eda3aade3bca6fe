"""data.cache_dir: each entry says where it came from, the panel shows the cache's size when a
run writes to it, and mode=cache lists it and clears it (all, by folder, by name)."""

from __future__ import annotations

import re

import pytest
from conftest import make_config, run_cli_together
from test_data import folder_config, write_folder

from swin_cli.cache import CacheError, cache_entries, run_cache_mode, written_cache_line
from swin_cli.data import cache_notes, load_data


@pytest.fixture
def cached_folders(tmp_path, monkeypatch):
    """Two image folders decoded into one cache (train, held-out val and test each)."""
    monkeypatch.setattr(cache_notes, "_written", set())
    roots = [write_folder(tmp_path / name, per_class=2) for name in ("pets", "cars")]
    for root in roots:
        load_data(folder_config(root, tmp_path, "data.val_fraction=0.5"))
    return tmp_path / "cache", roots


def cache_config(cache, *extra):
    return make_config("mode=cache", f"data.cache_dir={cache}", *extra)


def test_each_decoded_split_names_its_folder_and_the_panel_line_counts_them(cached_folders):
    cache, (pets, cars) = cached_folders
    entries = cache_entries(cache)
    assert len(entries) == 6 and all(e.nbytes > 0 for e in entries)
    assert sorted(e.folder for e in entries if e.what.endswith(" train")) == sorted([str(pets / "train"),
                                                                                    str(cars / "train")])
    assert all(e.what.startswith(f"decoded images of {e.folder.rsplit('/', 1)[0]}") for e in entries)
    line = written_cache_line()
    assert line.startswith(f"{cache}: ") and " in 6 entries " in line and "mode=cache" in line


def test_nothing_written_puts_no_cache_line_in_the_panel(monkeypatch):
    monkeypatch.setattr(cache_notes, "_written", set())
    assert written_cache_line() is None


def test_clear_by_folder_then_by_name_then_all(cached_folders):
    cache, (pets, cars) = cached_folders
    listing = run_cache_mode(cache_config(cache))
    assert listing.startswith(f"cache {cache}: ") and " in 6 entries" in listing.splitlines()[0]
    assert sum(f"decoded images of {pets} " in line for line in listing.splitlines()) == 3

    out = run_cache_mode(cache_config(cache, f"cache.clear={pets}"))
    assert out.startswith("removed 3 entries (") and str(pets) not in out and str(cars) in out
    assert {e.folder.rsplit("/", 1)[0] for e in cache_entries(cache)} == {str(cars)}
    assert len(list(cache.glob("*.about.json"))) == 3  # the removed entries' notes went with them

    one = cache_entries(cache)[0].name
    out = run_cache_mode(cache_config(cache, f"cache.clear={one}"))
    assert out.startswith("removed 1 entry (") and one not in out

    out = run_cache_mode(cache_config(cache, "cache.clear=all"))
    assert out.startswith("removed 2 entries (") and out.endswith(f"cache {cache}: empty")
    assert list(cache.iterdir()) == []


def test_clear_of_a_folder_with_nothing_cached_removes_nothing(cached_folders, tmp_path):
    cache, _ = cached_folders
    (tmp_path / "elsewhere").mkdir()
    out = run_cache_mode(cache_config(cache, f"cache.clear={tmp_path / 'elsewhere'}"))
    assert out.startswith("removed 0 entries (0 bytes)") and len(cache_entries(cache)) == 6


def test_clear_naming_nothing_is_a_one_line_error(cached_folders, tmp_path):
    cache, _ = cached_folders
    with pytest.raises(CacheError, match=r"^cache.clear=\S+ is neither all, an entry of the cache, nor a folder"):
        run_cache_mode(cache_config(cache, f"cache.clear={tmp_path / 'no-such-folder'}"))


@pytest.mark.e2e  # a subprocess
def test_mode_cache_from_the_command_line_lists_writes_no_run_dir_and_rejects_bad_values(cached_folders,
                                                                                          tmp_path):
    cache, (pets, _) = cached_folders
    listed, bad, misplaced = run_cli_together([
        ["mode=cache", f"data.cache_dir={cache}", "threads=1"],
        ["mode=cache", f"data.cache_dir={cache}", "cache.clear=nowhere", "threads=1", "hydra.run.dir=bad"],
        ["mode=train", "cache.clear=all", "threads=1", "hydra.run.dir=misplaced"]], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert f"decoded images of {pets} train" in listed.stdout + listed.stderr
    assert not list(tmp_path.rglob(".hydra"))  # mode=cache makes no run dir; failures leave none
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "swin-train: error: cache.clear=nowhere is neither all, an entry of the cache, nor a folder "
        "(mode=cache lists the entries)"]
    assert misplaced.returncode == 2
    assert misplaced.stderr.strip() == "swin-train: error: cache.clear is read by mode=cache only (got mode=train)"
    assert len(cache_entries(cache)) == 6


def test_the_start_panel_shows_the_cache_it_wrote_to(cached_folders):
    from swin_cli.build import build_model
    from swin_cli.summary import start_panel

    cache, _ = cached_folders
    cfg = make_config("data=digits", "epochs=1", "model.depths=[1]", "model.num_heads=[2]", "model.embed_dim=8",
                      "data.image_size=8")
    data = type("Data", (), {"sizes": lambda self: "train 1 / val 0 / test 1", "num_classes": 10, "in_chans": 1,
                             "storage": "memory", "storage_reason": "a test"})()
    panel = start_panel(cfg, build_model(cfg.model, 8, 1, 10), data, "run", "cpu, 1 thread", 1, 64)
    squashed = re.sub(r"[\s│]", "", panel)  # the panel wraps a long line inside its border
    assert f"cache{cache}:" in squashed and "in6entries(swin-trainmode=cachelistsandclearsit)" in squashed
