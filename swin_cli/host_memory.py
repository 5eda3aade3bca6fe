"""Keep freed host memory for reuse instead of handing it back to the kernel after every step.

glibc's malloc serves a request over its mmap threshold (32 MiB at most by default) with fresh
pages from the kernel and unmaps them on free. A 64 x 3 x 224 x 224 float batch is 38.5 MB, so
on a CPU every step paid for ~9,400 page faults, each zeroing a page, for the normalised batch
alone, and again for every activation of that size: half of what the normalisation cost
(benchmarks/RESULTS.md, "The trainer's data path"). Raising the mmap and trim thresholds lets
the heap keep such blocks, and the next step reuses them. Values are unchanged, only where the
bytes come from.

Other C libraries (musl, macOS) have no mallopt; there this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt's parameter numbers, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap, and up to this much free heap is kept. Larger
# blocks (a big model's activations) still go to mmap, so the heap's high-water mark is bounded
# by what a run holds at once anyway.
KEEP_BYTES = 1 << 30


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (and the workers it forks
    later). Returns whether it took effect; once per process."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # no C library found, or no mallopt in it
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
