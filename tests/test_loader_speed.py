"""The trainer's host-side data path keeps the two savings issue 29 measured (benchmarks/RESULTS.md,
"The trainer's data path"): a step's large host tensors reuse the last step's memory instead of
fresh pages from the kernel, and a stream worker stacks its batch straight into shared memory."""

from __future__ import annotations

import platform
import resource

import numpy as np
import pytest
import torch
from conftest import FAST, make_config

import swin_cli.data.loader as loader
from swin_cli.step import build_train_step

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.mark.skipif(not GLIBC, reason="the mmap threshold is glibc's")
def test_a_train_step_normalises_a_224_px_batch_into_reused_memory():
    cfg = make_config(*FAST, "aug=none")
    step = build_train_step(cfg, torch.device("cpu"), 3, 10, [0.5] * 3, [0.25] * 3, 32, 4, 4)
    # The 224 px batch of benchmarks/loader.py's trainer rows: 38.5 MB as floats, over glibc's
    # default mmap threshold, so without the fix every call maps (and faults in) 9,400 new pages.
    images = torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8)
    normalize = step.prepare.normalize
    # A call holds two such blocks (the float copy and the result). The first calls may grow the
    # heap: after other tests its free holes can fit one block but not both, and CI once saw one
    # batch's pages of growth on the first measured call after a single warm-up.
    for _ in range(3):
        normalize(images)
    before = minor_faults()
    for _ in range(4):
        normalize(images)
    pages = 64 * 3 * 224 * 224 * 4 // 4096
    # Without the fix the four calls fault 8 x pages; with it they fault almost none.
    assert minor_faults() - before < pages, "the normalised batch got fresh pages every call"


def test_a_stream_worker_stacks_its_batch_in_shared_memory(monkeypatch):
    pixels = [np.full((3, 8, 6), i, dtype=np.uint8) for i in range(5)]
    in_main = loader.stacked(pixels)
    assert not in_main.is_shared()
    monkeypatch.setattr(loader, "get_worker_info", lambda: object())  # as inside a DataLoader worker
    in_worker = loader.stacked(pixels)
    # Shared already, so the worker's queue sends its handle instead of copying it once more.
    assert in_worker.is_shared() and in_worker.dtype == torch.uint8 and in_worker.shape == (5, 3, 8, 6)
    assert torch.equal(in_worker, in_main) and torch.equal(in_main, torch.from_numpy(np.stack(pixels)))
