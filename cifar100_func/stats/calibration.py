"""Calibration of predicted probabilities: NLL, expected calibration error, Brier score, the reliability diagram's
bins, and temperature scaling fitted on a validation split.

Every function takes ``probs`` (N, C), rows that sum to 1 (a model's softmax, or an ensemble's mean of its members'
softmax), and labels ``y`` (N,), and computes in float64. Temperature scaling acts on ``log(probs)``: for one model
that is its logits up to a constant per row, for an ensemble the log of the mean of its members' softmax.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from ._arrays import as_probs, log_probs, probs_and_labels

BINS = 15
# the temperatures fit_temperature searches (a fitted value at either end means the optimum lies beyond it)
T_MIN, T_MAX = 1e-3, 1e3


def nll(probs, y) -> float:
    """Mean negative log-likelihood of the labels (a zero probability counts as the float64 floor, not infinity)."""
    p, y = probs_and_labels(probs, y)
    return float(-log_probs(p[np.arange(len(y)), y]).mean())


def brier(probs, y) -> float:
    """Multi-class Brier score: the mean over images of the sum over classes of the squared difference between the
    probability and the one-hot label (0 is perfect, 2 the worst; not divided by the number of classes)."""
    p, y = probs_and_labels(probs, y)
    err = p.copy()
    err[np.arange(len(y)), y] -= 1.0
    return float((err**2).sum(axis=1).mean())


def accuracy(probs, y) -> float:
    """Top-1 accuracy (ties go to the lowest class index)."""
    p, y = probs_and_labels(probs, y)
    return float((p.argmax(axis=1) == y).mean())


def _binned(p: np.ndarray, y: np.ndarray, bins: int):
    """Top-1 confidence, correctness and bin index: equal-width bins [lo, hi) on [0, 1], a confidence of exactly 1
    in the last one."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    return conf, correct, idx, edges


def reliability(probs, y, bins: int = BINS) -> dict:
    """The reliability diagram's data: per equal-width bin of top-1 confidence the number of images, their mean
    confidence and their accuracy (NaN for an empty bin), the bin edges, and the ECE they give. Plain lists, ready
    for JSON (``runtime.io`` writes NaN as null)."""
    p, y = probs_and_labels(probs, y)
    conf, correct, idx, edges = _binned(p, y, bins)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
        acc = np.bincount(idx, weights=correct, minlength=bins) / count
    gap = np.where(count > 0, np.abs(acc - mean_conf), 0.0)
    return {"edges": edges.tolist(), "count": count.astype(int).tolist(), "confidence": mean_conf.tolist(),
            "accuracy": acc.tolist(), "ece": float((gap * count).sum() / count.sum())}


def ece(probs, y, bins: int = BINS) -> float:
    """Expected calibration error: over equal-width bins of top-1 confidence, the sum of |accuracy - mean
    confidence| weighted by the fraction of images in the bin (L1, Guo et al. 2017)."""
    return reliability(probs, y, bins)["ece"]


def _tempered_log_softmax(z: np.ndarray, t: float) -> np.ndarray:
    s = z / t
    return s - logsumexp(s, axis=1, keepdims=True)


def with_temperature(probs, T: float) -> np.ndarray:  # noqa: N803
    """softmax(log(probs) / T): T > 1 softens over-confident probabilities, T < 1 sharpens under-confident ones."""
    if not T > 0:
        raise ValueError(f"temperature must be positive, got {T}")
    return np.exp(_tempered_log_softmax(log_probs(as_probs(probs)), float(T)))


def fit_temperature(probs, y) -> float:
    """The temperature T that minimises the NLL of softmax(log(probs) / T) on (validation) labels ``y``.

    The NLL is convex in 1/T, so it has one minimum along log T; bounded Brent search on log T in [T_MIN, T_MAX]
    finds it deterministically. A result at a bound means the optimum lies beyond it (for example T_MAX when the
    predictions carry no information about the labels)."""
    p, y = probs_and_labels(probs, y)
    z = log_probs(p)
    zy = z[np.arange(len(y)), y]

    def loss(log_t: float) -> float:
        t = np.exp(log_t)
        return float((logsumexp(z / t, axis=1) - zy / t).mean())

    res = minimize_scalar(loss, bounds=(np.log(T_MIN), np.log(T_MAX)), method="bounded",
                          options={"xatol": 1e-10, "maxiter": 500})
    return float(np.exp(res.x))


def _metrics(p: np.ndarray, y: np.ndarray, bins: int) -> dict:
    return {"nll": nll(p, y), "ece": ece(p, y, bins), "brier": brier(p, y), "acc": accuracy(p, y)}


def calibration(probs, y, T: float | None = None, bins: int = BINS) -> dict:  # noqa: N803
    """``{"nll", "ece", "brier", "acc"}`` of ``probs`` on ``y``; with a temperature ``T`` (fitted on validation,
    applied here to any split) also ``"temperature"`` and ``"scaled"``: the same four after scaling."""
    p, labels = probs_and_labels(probs, y)
    out = _metrics(p, labels, bins)
    if T is not None:
        out["temperature"] = float(T)
        out["scaled"] = _metrics(with_temperature(p, T), labels, bins)
    return out


def calibration_and_reliability(probs, y, T: float | None = None, bins: int = BINS) -> dict:  # noqa: N803
    """``{"calibration": calibration(probs, y, T), "reliability": {"before": ..., "after": ...}}``: the metrics and
    the reliability diagram's bins, before and (with ``T``) after temperature scaling."""
    out = {"calibration": calibration(probs, y, T, bins), "reliability": {"before": reliability(probs, y, bins)}}
    if T is not None:
        out["reliability"]["after"] = reliability(with_temperature(probs, T), y, bins)
    return out
