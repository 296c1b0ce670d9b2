"""Inputs as float64 numpy arrays, whatever they came as (numpy, a torch tensor on any device, a list)."""

from __future__ import annotations

import numpy as np


def as_numpy(x, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu()
        x = x.double() if dtype == np.float64 and x.is_floating_point() else x
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def as_log_probs(log_probs) -> np.ndarray:
    """``log_probs`` (N, C) as float64, its shape checked, and that they are logs (no value above 0: probabilities,
    whose largest in a row is at least 1 / C, are turned away)."""
    z = as_numpy(log_probs, np.float64)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"expected log-probabilities of shape (N, C) with N > 0, got {z.shape}")
    if np.nanmax(z) > 1e-6:
        raise ValueError(f"expected log-probabilities (at most 0), got values up to {np.nanmax(z):.4g}: "
                         "probabilities or logits? pass log_softmax of the logits")
    return z


def log_probs_and_labels(log_probs, y) -> tuple[np.ndarray, np.ndarray]:
    """``log_probs`` (N, C) as float64 and ``y`` (N,) as int64, with their shapes checked."""
    z, labels = as_log_probs(log_probs), as_numpy(y).astype(np.int64)
    if labels.shape != (z.shape[0],):
        raise ValueError(f"expected labels of shape ({z.shape[0]},), got {labels.shape}")
    if labels.min() < 0 or labels.max() >= z.shape[1]:
        raise ValueError(f"labels must lie in [0, {z.shape[1]}), got [{labels.min()}, {labels.max()}]")
    return z, labels
