"""data=digits: scikit-learn's bundled handwritten digits (1,797 8x8 greyscale images), offline.
Held in memory as tensors; a fixed 20% of it is the test split."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swin_cli.data.sources import SourceData, hold_out_order
from swin_cli.data.splits import ImageSplit


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images N x 8 x 8 of 0..16 counts, labels). Read straight from the
    CSV that scikit-learn bundles where it can be found: importing sklearn (and with it scipy)
    takes longer than a tiny model's whole run, and digits is the default data set."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if bundled.is_file():
            table = np.loadtxt(bundled, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return digits.images, digits.target.astype(np.int64)


def load(cfg: Any = None) -> SourceData:
    images, labels = digits_arrays()
    # Pixel values are 0..16 counts; spread them over the uint8 range.
    images = torch.from_numpy(np.rint(images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    whole = ImageSplit(images, torch.from_numpy(labels))
    # sklearn ships no test split: a fixed 20% of the set, independent of data.split_seed so
    # that test accuracy is comparable across runs with different validation splits.
    kept, held = hold_out_order(len(whole), 0.2, seed=1234)
    return SourceData(whole.subset(kept), None, whole.subset(held), [str(d) for d in range(10)], 1,
                      where="scikit-learn digits")
