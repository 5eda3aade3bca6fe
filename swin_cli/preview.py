"""mode=preview: what the model sees. A grid of training images after the configured
augmentation (the same TrainBatch every training step runs), with their targets, written to
<run dir>/augment_preview.png; nothing is trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from swin_cli import plots
from swin_cli.augment import TrainBatch
from swin_cli.data import load_data, settle_auto
from swin_cli.errors import SwinCliError
from swin_cli.summary import augment_text

PREVIEW_IMAGES = 32
# Target mass below this is label smoothing, not a mixed-in class.
SHOWN_WEIGHT = 0.1


def target_text(target: torch.Tensor, classes: list[str]) -> str:
    """A class index as its name; a multi-hot row as its names ("cat dog"); class probabilities
    as "cat .62 + dog .38" (largest first)."""
    if target.ndim == 0:
        return classes[int(target)]
    if not target.is_floating_point():
        return " ".join(name for name, yes in zip(classes, target.tolist()) if yes) or "(no labels)"
    weights, index = target.sort(descending=True)
    shown = [(classes[int(i)], float(w)) for w, i in zip(weights, index) if w >= SHOWN_WEIGHT]
    if len(shown) == 1:
        return shown[0][0]
    return " + ".join(f"{name} {weight:.2f}".replace("0.", ".") for name, weight in shown)


def preview_title(aug: Any) -> str:
    """What was applied, not what the preset is called: digits' aug=none with
    aug.auto_augment=trivialaugment applies TrivialAugment."""
    applied = augment_text(aug)
    return "training batch, no augmentation" if applied == "none" else f"training batch after {applied}"


def write_preview(cfg: Any, run_dir: Path) -> Path:
    data = load_data(cfg.data, settled=settle_auto(cfg))  # the size and aug=auto a run would settle on
    prepare = TrainBatch(cfg.aug, data.num_classes, cfg.train.label_smoothing, data.mean, data.std,
                         torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    x, targets = prepare(*data.train.sample(min(PREVIEW_IMAGES, len(data.train)), cfg.seed))
    # Back from normalised values to [0, 1] pixels (erased noise shows as static).
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    pixels = (x * std + mean).clamp(0.0, 1.0)
    titles = [target_text(t, data.classes) for t in targets]
    path = Path(run_dir) / "augment_preview.png"
    if plots.plot_image_grid(pixels, titles, path, preview_title(cfg.aug)) is None:
        raise SwinCliError('mode=preview draws with matplotlib: pip install "swin-cli[plots]"')
    return path
