"""The allocator setting is applied once and is harmless where it does not apply."""

from __future__ import annotations

import platform

import torch

from cifar100_func.allocator import reuse_freed_memory


def test_reuse_freed_memory_is_idempotent_and_applies_on_glibc():
    first = reuse_freed_memory()
    assert reuse_freed_memory() == first
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first
    x = torch.ones(40_000_000)  # 160 MB, above glibc's default mmap threshold: still a working allocation
    assert float(x.sum()) == 40_000_000.0


def test_freed_large_blocks_are_reused_without_page_faults():
    """A freed 64 MiB block comes back from the heap: no fresh pages (page faults) for the next one.

    With glibc's defaults each such allocation is a new mmap, faulted in page by page (16,384 faults).
    """
    if not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"):
        return
    import resource

    assert reuse_freed_memory()
    n = 16 * 2**20  # 64 MiB of float32
    for _ in range(2):  # warm-up: the heap grows once
        torch.ones(n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(n)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 2000, f"{faults} page faults for 5 reused 64 MiB blocks"
