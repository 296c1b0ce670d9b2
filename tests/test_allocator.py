"""The allocator setting is applied once and is harmless where it does not apply."""

from __future__ import annotations

import platform

import torch

from cifar100_func.runtime.allocator import reuse_freed_memory


def test_reuse_freed_memory_is_idempotent_and_applies_on_glibc():
    first = reuse_freed_memory()
    assert reuse_freed_memory() == first
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first
    x = torch.ones(40_000_000)  # 160 MB, above glibc's default mmap threshold: still a working allocation
    assert float(x.sum()) == 40_000_000.0


def test_freed_large_blocks_are_reused_without_page_faults():
    """A freed 64 MiB block comes back from the heap: no fresh pages (page faults) for the next one.

    Allocated as PyTorch's CPU allocator does (64-byte aligned ``posix_memalign``), written, freed, 20 times.
    With glibc's defaults each block is a new mmap faulted in page by page (16,384 faults); with a zero trim
    threshold the heap is trimmed on every free, with the same result.
    """
    if not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"):
        return
    import ctypes
    import resource

    assert reuse_freed_memory()
    libc = ctypes.CDLL("libc.so.6")
    libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 << 20

    def cycle() -> None:
        ptr = ctypes.c_void_p()
        assert libc.posix_memalign(ctypes.byref(ptr), 64, size) == 0
        libc.memset(ptr, 1, size)
        libc.free(ptr)

    faulting = 0
    for _ in range(20):  # aligned blocks grow the heap a few times before the freed ones fit: count the cycles
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cycle()
        faulting += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before > 4096
    assert faulting <= 8, f"{faulting} of 20 cycles of a freed 64 MiB block faulted its pages in again"
