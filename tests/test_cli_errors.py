"""What a user sees when the environment is wrong: one `swin-train: error: ...` line, no traceback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from conftest import TINY_MODEL, run_cli

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e


def assert_one_error_line(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("swin-train: error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@contextmanager
def folder_refusing_writes(folder: Path) -> Iterator[Path]:
    """An existing folder that refuses new files even to root (chmod does not stop root): made
    immutable with chattr +i, or read-only by mode for other users. Skips where neither works."""
    folder.mkdir()
    immutable = False
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        immutable = chattr is not None and subprocess.run([chattr, "+i", str(folder)],
                                                          capture_output=True).returncode == 0
        if not immutable:
            pytest.skip("running as root without chattr +i here: no folder refuses root's writes")
    else:
        folder.chmod(0o555)
    try:
        try:
            (folder / "probe").write_bytes(b"")
        except OSError:
            pass
        else:
            pytest.skip(f"{folder} still takes files")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def test_an_existing_run_dir_that_refuses_writes_is_one_line(tmp_path):
    with folder_refusing_writes(tmp_path / "locked") as locked:
        proc = run_cli(f"hydra.run.dir={locked}", *TINY_MODEL, "epochs=1", cwd=tmp_path, timeout=120)
    assert_one_error_line(proc, 1, f"cannot write {locked}/swin-train.log")


def test_slurm_launcher_without_slurm_is_one_line(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    # A PATH with python's folder but no srun on it.
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    assert shutil.which("srun", path=env["PATH"]) is None
    proc = run_cli("-m", "hydra/launcher=slurm", *TINY_MODEL, "epochs=1", cwd=tmp_path, env=env, timeout=120)
    assert_one_error_line(proc, 1, "no SLURM here", "hydra/launcher=submitit_local")
    assert not (tmp_path / "outputs").exists()  # no sweep dir left behind


def test_only_rank_0_prints_the_error_line(monkeypatch, capsys):
    from swin_cli import main

    monkeypatch.setenv("RANK", "1")
    main.report_error("data.root=/nope does not exist")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    main.report_error("data.root=/nope does not exist")
    assert capsys.readouterr().err == "swin-train: error: data.root=/nope does not exist\n"


def test_more_torchrun_processes_than_gpus_stops_every_rank_with_one_line(monkeypatch):
    import torch

    from swin_cli import distributed
    from swin_cli.errors import SwinCliError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for rank in ("0", "1"):  # every rank, rank 0 too, which would otherwise wait for the others
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        with pytest.raises(SwinCliError, match="started 2 processes on this node but it has 1 GPU: "
                                               "use --nproc_per_node=1"):
            distributed.setup()


@pytest.mark.slow
def test_torchrun_reports_a_bad_value_once_and_every_rank_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "swin_cli", *TINY_MODEL, "model.window_size=0", "epochs=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("swin-train: error: ")]
    assert errors == ["swin-train: error: model.window_size must be >= 1 (got 0)"], proc.stderr
    # torchrun's own failure summary lists both ranks with our exit code, and no trace of ours.
    assert len(re.findall(r"exitcode\s*:\s*2\b", proc.stderr)) == 2, proc.stderr
    assert "swin_cli/" not in proc.stderr


def test_the_quoting_hint_never_shows_a_value_the_shell_cut_at_a_space(monkeypatch):
    from swin_cli.main import one_line

    # `swin-train data.root=/data/dáta set`: the shell passed the value in two words.
    monkeypatch.setattr(sys, "argv", ["swin-train", "data.root=/data/dáta", "set", "epochs=1"])
    line = one_line("LexerNoViableAltException: data.root=/data/dáta\n    ^\ntoken recognition error at: 'á'")
    assert """'data.root="..."' with the whole value between the double quotes""" in line
    assert '"/data/dáta"' not in line
