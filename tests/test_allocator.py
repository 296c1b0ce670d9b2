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
