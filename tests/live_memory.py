"""Bytes of tensor memory alive, counted op by op: a deterministic stand-in on the CPU for CUDA's
memory_allocated / max_memory_allocated (the CPU allocator keeps no statistics)."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """Counts every storage an op creates while the mode is on, until its last tensor is freed.
    Tensors made before (parameters, inputs) are not counted. `now`: bytes alive; `peak`: the
    most at any point."""

    def __init__(self):
        super().__init__()
        self.storages: dict[int, list[int]] = {}  # data_ptr -> [bytes, live tensors on it]
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if key == 0 or size == 0:
            return
        entry = self.storages.get(key)
        if entry is None:
            entry = self.storages[key] = [size, 0]
            self.now += size
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        # Runs when the tensor itself is freed (torch keeps its Python object while C++ holds it).
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.storages[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self.storages[key]
            self.now -= entry[0]
