"""Inputs as float64 numpy arrays, whatever they came as (numpy, a torch tensor on any device, a list)."""

from __future__ import annotations

import numpy as np

TINY = np.finfo(np.float64).tiny  # the floor under a probability before its log: a zero gives a large, finite NLL


def as_numpy(x, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu()
        x = x.double() if dtype == np.float64 and x.is_floating_point() else x
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def as_probs(probs) -> np.ndarray:
    """``probs`` (N, C) as float64, its shape checked."""
    p = as_numpy(probs, np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"expected probs of shape (N, C) with N > 0, got {p.shape}")
    return p


def probs_and_labels(probs, y) -> tuple[np.ndarray, np.ndarray]:
    """``probs`` (N, C) as float64 and ``y`` (N,) as int64, with their shapes checked."""
    p, labels = as_probs(probs), as_numpy(y).astype(np.int64)
    if labels.shape != (p.shape[0],):
        raise ValueError(f"expected labels of shape ({p.shape[0]},), got {labels.shape}")
    if labels.min() < 0 or labels.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in [0, {p.shape[1]}), got [{labels.min()}, {labels.max()}]")
    return p, labels


def log_probs(p: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(p, TINY))
