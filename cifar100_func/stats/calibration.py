"""Calibration of predicted probabilities: NLL, expected calibration error, Brier score, the reliability diagram's
bins, and temperature scaling fitted on a validation split.

Every function takes ``log_probs`` (N, C), the log of rows that sum to 1 (a model's log_softmax, or the log of an
ensemble's mean of its members' softmax, :func:`..runtime.predict.mean_log_probs`), and labels ``y`` (N,), and
computes in float64. Log-probabilities keep the NLL of a confidently wrong prediction exact where a probability
would underflow. Temperature scaling acts on them directly: for one model they are its logits up to a constant per
row.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from ._arrays import as_log_probs, log_probs_and_labels

BINS = 15
# the temperatures fit_temperature searches (a fitted value at either end means the optimum lies beyond it)
T_MIN, T_MAX = 1e-3, 1e3


def nll(log_probs, y) -> float:
    """Mean negative log-likelihood of the labels."""
    z, y = log_probs_and_labels(log_probs, y)
    return float(-z[np.arange(len(y)), y].mean())


def brier(log_probs, y) -> float:
    """Multi-class Brier score: the mean over images of the sum over classes of the squared difference between the
    probability and the one-hot label (0 is perfect, 2 the worst; not divided by the number of classes)."""
    z, y = log_probs_and_labels(log_probs, y)
    err = np.exp(z)
    err[np.arange(len(y)), y] -= 1.0
    return float((err**2).sum(axis=1).mean())


def accuracy(log_probs, y) -> float:
    """Top-1 accuracy (ties go to the lowest class index)."""
    z, y = log_probs_and_labels(log_probs, y)
    return float((z.argmax(axis=1) == y).mean())


def _binned(p: np.ndarray, y: np.ndarray, bins: int):
    """Top-1 confidence, correctness and bin index: equal-width bins [lo, hi) on [0, 1], a confidence of exactly 1
    in the last one."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    return conf, correct, idx, edges


def reliability(log_probs, y, bins: int = BINS) -> dict:
    """The reliability diagram's data: per equal-width bin of top-1 confidence the number of images, their mean
    confidence and their accuracy (NaN for an empty bin), the bin edges, and the ECE they give. Plain lists, ready
    for JSON (``runtime.io`` writes NaN as null)."""
    z, y = log_probs_and_labels(log_probs, y)
    conf, correct, idx, edges = _binned(np.exp(z), y, bins)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
        acc = np.bincount(idx, weights=correct, minlength=bins) / count
    gap = np.where(count > 0, np.abs(acc - mean_conf), 0.0)
    return {"edges": edges.tolist(), "count": count.astype(int).tolist(), "confidence": mean_conf.tolist(),
            "accuracy": acc.tolist(), "ece": float((gap * count).sum() / count.sum())}


def ece(log_probs, y, bins: int = BINS) -> float:
    """Expected calibration error: over equal-width bins of top-1 confidence, the sum of |accuracy - mean
    confidence| weighted by the fraction of images in the bin (L1, Guo et al. 2017)."""
    return reliability(log_probs, y, bins)["ece"]


def _tempered_log_softmax(z: np.ndarray, t: float) -> np.ndarray:
    s = z / t
    return s - logsumexp(s, axis=1, keepdims=True)


def with_temperature(log_probs, T: float) -> np.ndarray:  # noqa: N803
    """log_softmax(log_probs / T): T > 1 softens over-confident predictions, T < 1 sharpens under-confident ones."""
    if not T > 0:
        raise ValueError(f"temperature must be positive, got {T}")
    return _tempered_log_softmax(as_log_probs(log_probs), float(T))


def fit_temperature(log_probs, y) -> float:
    """The temperature T that minimises the NLL of softmax(log_probs / T) on (validation) labels ``y``.

    The NLL is convex in 1/T, so it has one minimum along log T; bounded Brent search on log T in [T_MIN, T_MAX]
    finds it deterministically. A result at a bound means the optimum lies beyond it (for example T_MAX when the
    predictions carry no information about the labels)."""
    z, y = log_probs_and_labels(log_probs, y)
    zy = z[np.arange(len(y)), y]

    def loss(log_t: float) -> float:
        t = np.exp(log_t)
        return float((logsumexp(z / t, axis=1) - zy / t).mean())

    res = minimize_scalar(loss, bounds=(np.log(T_MIN), np.log(T_MAX)), method="bounded",
                          options={"xatol": 1e-10, "maxiter": 500})
    return float(np.exp(res.x))


def _metrics(z: np.ndarray, y: np.ndarray, bins: int) -> dict:
    return {"nll": nll(z, y), "ece": ece(z, y, bins), "brier": brier(z, y), "acc": accuracy(z, y)}


def calibration(log_probs, y, T: float | None = None, bins: int = BINS) -> dict:  # noqa: N803
    """``{"nll", "ece", "brier", "acc"}`` of ``log_probs`` on ``y``; with a temperature ``T`` (fitted on
    validation, applied here to any split) also ``"temperature"`` and ``"scaled"``: the same four after scaling."""
    z, labels = log_probs_and_labels(log_probs, y)
    out = _metrics(z, labels, bins)
    if T is not None:
        out["temperature"] = float(T)
        out["scaled"] = _metrics(with_temperature(z, T), labels, bins)
    return out


def calibration_and_reliability(log_probs, y, T: float | None = None, bins: int = BINS) -> dict:  # noqa: N803
    """``{"calibration": calibration(log_probs, y, T), "reliability": {"before": ..., "after": ...}}``: the metrics
    and the reliability diagram's bins, before and (with ``T``) after temperature scaling."""
    z = as_log_probs(log_probs)
    out = {"calibration": calibration(z, y, T, bins), "reliability": {"before": reliability(z, y, bins)}}
    if T is not None:
        out["reliability"]["after"] = reliability(with_temperature(z, T), y, bins)
    return out
