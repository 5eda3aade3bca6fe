"""The config tree ships inside the wheel: an installed, non-editable swin-train finds it."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import CONF, ROOT

# Runs swin-train (a subprocess or a whole Trainer): the end-to-end tier (README, Tests).
pytestmark = pytest.mark.e2e


def test_wheel_carries_conf_and_installed_cli_composes_from_elsewhere(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheel_dir.glob("swin_cli-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"swin_cli/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*.yaml")}
    assert "swin_cli/conf/config.yaml" in expected and expected <= names

    # A fresh venv that sees torch & co. from the environment running these tests (a virtualenv
    # or not: system_site_packages would show the base interpreter's packages instead), with the
    # wheel installed non-editable.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # Appended after the venv's own site-packages, so the installed wheel wins over this checkout.
    (Path(site) / "running-env.pth").write_text("\n".join(sorted(ours)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    "--force-reinstall", str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([str(env_dir / "bin" / "swin-train"), "--cfg", "job", "model=small"], cwd=elsewhere,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "depths:\n  - 2\n  - 2\n  - 18\n  - 2" in proc.stdout
    located = subprocess.run([str(python), "-c", "import swin_cli.conf, os; print(swin_cli.conf.__file__)"],
                             cwd=elsewhere, capture_output=True, text=True, check=True)
    assert str(env_dir) in located.stdout  # the installed copy, not this checkout
