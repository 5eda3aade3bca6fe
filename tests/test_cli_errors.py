"""What a user sees when the environment is wrong: one `swin-train: error: ...` line, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from conftest import TINY_MODEL, run_cli


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
