"""One model at any H x W (issue 28 A/B): data.image_size as [H, W] from the config to the views,
the storages and the checkpoint, and swin-eval scoring one checkpoint at several sizes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, make_config, run_cli
from PIL import Image
from test_data import write_folder

from swin_cli.data.transforms import CenterCrop, RandomResizedCrop, Squash
from swin_cli.sizes import SizeError, hw, plain_size, size_text

# TINY_MODEL without its square size: each test names the size it is about.
TINY = [o for o in TINY_MODEL if not o.startswith("data.image_size")]


def test_a_size_is_a_side_or_a_box():
    assert hw(32) == (32, 32) and hw([24, 40]) == (24, 40) and hw([28]) == (28, 28)
    assert plain_size([32, 32]) == 32 and plain_size([24, 40]) == (24, 40)
    assert size_text(32) == "32 px" and size_text([24, 40]) == "24x40 px"
    for bad in (0, [24, 0], [1, 2, 3], "big", True, [24.5, 30]):
        with pytest.raises(SizeError):
            hw(bad)


def test_the_views_make_boxes(tmp_path):
    # A 60 x 40 (W x H) photo: the eval view covers 24x40 / 0.875 with the aspect kept, then crops.
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    assert CenterCrop((24, 40), 3, 0.875)(str(path)).shape == (3, 24, 40)
    assert CenterCrop((40, 24), 3, 1.0)(str(path)).shape == (3, 40, 24)
    assert RandomResizedCrop((24, 40), 3)(str(path), random.Random(0)).shape == (3, 24, 40)
    assert Squash((16, 32), 1)(str(path)).shape == (1, 16, 32)
    # A square size is what it always was: the shorter side to size / crop_pct, the centre square.
    assert CenterCrop(32, 3, 0.875)(str(path)).shape == (3, 32, 32)


@pytest.mark.parametrize("override,message", [
    ("data.image_size=[16,abc]", "data.image_size must be a number or [H, W]"),
    ("data.image_size=[16,0]", "data.image_size must be >= 1"),
    ("data.image_size=[16,15]", "data.image_size=16x15 is not divisible by model.patch_size=2"),
    ("eval.image_sizes=[16,[16,abc]]", "eval.image_sizes[1] must be a number or [H, W]"),
    ("eval.image_sizes=[]", "eval.image_sizes must list at least one size"),
])
def test_a_bad_size_is_one_line_naming_the_key(override, message):
    from swin_cli.config import ConfigError, validate

    mode = ["mode=eval", "ckpt=some/run"] if override.startswith("eval.") else []
    with pytest.raises(ConfigError) as raised:
        validate(make_config(*TINY, "data=digits", override, *mode))
    assert message in str(raised.value)


def test_a_bad_size_stops_swin_train_in_one_line(tmp_path):
    proc = run_cli(*TINY, "data=digits", "data.image_size=[16,15]", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "data.image_size=16x15 is not divisible by model.patch_size=2" in proc.stderr, proc.stderr


def test_eval_image_sizes_is_for_swin_eval_only():
    from swin_cli.config import ConfigError, validate

    with pytest.raises(ConfigError, match="eval.image_sizes is read by mode=eval"):
        validate(make_config(*TINY, "data=digits", "eval.image_sizes=[16]"))


@pytest.mark.e2e
def test_a_box_trains_and_swin_eval_scores_it_at_several_sizes(tmp_path):
    """Train on an image folder at 16 x 24, then score the checkpoint at three sizes in one
    swin-eval call: a row per size, the training size's row equal to the run's own test score
    (on val/, the folder having no test/)."""
    root = write_folder(tmp_path / "folder", splits=("train", "val"), per_class=8, size=(36, 24))
    run = tmp_path / "run"
    proc = run_cli(*TINY, "data=imagefolder", f"data.root={root}", "data.image_size=[16,24]", "epochs=1",
                   "data.batch_size=8", f"data.cache_dir={tmp_path / 'cache'}", "threads=1",
                   f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3x16x24" in proc.stdout + proc.stderr  # the panel's data line
    results = json.loads((run / "results.json").read_text())

    cached = sorted((tmp_path / "cache").rglob("*"))
    exe = Path(sys.executable).with_name("swin-eval")
    scored = subprocess.run([str(exe), f"ckpt={run}", "eval.image_sizes=[16,[16,24],24]", "threads=1",
                             f"hydra.run.dir={tmp_path / 'eval'}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert scored.returncode == 0, scored.stderr
    said = scored.stdout + scored.stderr
    for size in ("16 px", "16x24 px", "24 px"):
        assert f"{size}: test acc" in said, said
    assert "16x24 px: test acc" in said and "(the training size)" in said
    assert "best test acc:" in said
    assert said.count("has no test/ folder") == 1  # the folder scanned once, not once per size
    table = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert [row["image_size"] for row in table["sizes"]] == [[16, 16], [16, 24], [24, 24]]
    assert table["trained_image_size"] == [16, 24]
    trained = next(row for row in table["sizes"] if row["image_size"] == [16, 24])
    assert trained["acc"] == pytest.approx(results["test_acc"], abs=1e-6)
    assert table["best_image_size"] in [row["image_size"] for row in table["sizes"]]
    assert sorted((tmp_path / "cache").rglob("*")) == cached  # streamed: no split decoded into the cache

    # The export takes the box: a fixed 16 x 24 input, said in the sidecar, checked against torch.
    pytest.importorskip("onnxruntime")
    exported = subprocess.run([str(Path(sys.executable).with_name("swin-export")), f"ckpt={run}", "exporter=legacy"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr
    sidecar = json.loads((run / "best.onnx.json").read_text())
    assert sidecar["image_size"] == [16, 24] and sidecar["input"]["shape"][2:] == [16, 24]

    # A size the checkpoint's patch does not divide stops before any image is decoded.
    bad = subprocess.run([str(exe), f"ckpt={run}", "eval.image_sizes=[16,17]", f"hydra.run.dir={tmp_path / 'e2'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "17 px is not divisible by the checkpoint's model.patch_size=2" in bad.stderr
