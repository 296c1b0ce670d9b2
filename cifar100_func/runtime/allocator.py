"""Keep freed host memory for reuse instead of handing it back to the kernel (glibc ``mallopt``).

By default glibc serves every allocation above its mmap threshold (32 MiB at most) with fresh pages from the
kernel and unmaps them on free, and trims the top of its heap when more than 128 KiB there is free, so each large
activation tensor of a training step costs page faults and zeroing again, step after step. Measured here
(``python benchmarks/bench_grid.py --ks 6 --modes eager`` with and without ``--no-malloc-tuning``): standard path
294 -> 378 images/s, a stack of six 129 -> 338 model-images/s, whose activations are six times larger. Raising the
mmap threshold to 1 GiB and turning trimming off makes freed blocks stay in the heap and be reused, as a caching
allocator would. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # allocations below 1 GiB come from (and return to) the heap
TRIM_THRESHOLD = -1  # never give freed heap memory back to the kernel (mallopt(3): -1 disables trimming)

_done = False


def reuse_freed_memory() -> bool:
    """Apply the settings once per process; True when they took effect."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]  # an int argument: no silent truncation
        libc.mallopt.restype = ctypes.c_int
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                        TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): keep the platform's allocator
        return False
    _done = ok
    return ok
