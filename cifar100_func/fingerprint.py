"""One fingerprint of a typed value: sha256 of its canonical JSON.

The study's cache, the grid's per-stack records and ``train --resume`` decide "is this the same computation?" by
comparing fingerprints of the values a stage consumes (:mod:`.inputs` says which values those are). Canonical means:
dataclasses and pydantic models become their fields, mappings are sorted, tuples and lists are lists, floats keep
their exact value (``repr``), and a tensor or array is its dtype, shape and a hash of its bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import PurePath
from typing import Any

import numpy as np
import torch


def canonical(value: Any) -> Any:
    """``value`` as plain JSON-able data (see the module docstring); the same for equal values, whatever their
    container types (a tuple and a list of the same items are equal)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump") and not isinstance(value, type):  # a pydantic model
        return canonical(value.model_dump())
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        flat = t.reshape(-1)
        raw = flat.to(torch.uint8) if t.dtype == torch.bool else flat.view(torch.uint8)
        return {"tensor": str(t.dtype), "shape": list(t.shape),
                "sha256": hashlib.sha256(raw.numpy().tobytes()).hexdigest()}
    if isinstance(value, np.ndarray):
        return canonical(torch.from_numpy(np.ascontiguousarray(value)))
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else repr(f)  # JSON has no inf/nan
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"fingerprint: cannot make {type(value).__name__} canonical")


def fingerprint(value: Any) -> str:
    """Hex sha256 of the canonical JSON of ``value`` (16 characters: a cache key, not a security hash)."""
    text = json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The dotted key of the first place where the canonical forms of ``a`` and ``b`` differ, with both values
    (``"train.seed: 1 -> 2"``), or None when they are equal: says *why* two fingerprints differ."""
    a, b = canonical(a), canonical(b)
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    if a != b:
        return f"{prefix.rstrip('.') or '(value)'}: {a!r} -> {b!r}"
    return None
