"""Explicit randomness: every random draw comes from a ``torch.Generator`` seeded from (seed, purpose, ...).

Deriving each stream's seed from its purpose and epoch (instead of threading one global generator through
the run) makes every epoch reproducible on its own, which is what makes ``--resume`` exact.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``keys`` (stable across processes and platforms)."""
    text = repr((int(seed),) + tuple(str(k) for k in keys)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator for the stream named by ``keys`` (CPU draws make CPU and CUDA runs identical)."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))
