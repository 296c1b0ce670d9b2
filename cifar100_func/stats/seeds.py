"""Statistics over seeds: what a configuration scores when trained with S seeds, whether one configuration beats
another by more than seed noise (a paired t-test: every configuration is trained with the same seeds), the verdict
in words, and how often a single seed would have picked a different winner than the seed mean.

A configuration whose seed diverged has a NaN among its values; it propagates (the mean is NaN), which is honest.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats

from ._arrays import as_numpy


class Summary(NamedTuple):
    """Mean over S seeds, the sample standard deviation (ddof=1; 0 for one seed), and the standard error of the
    mean (sd / sqrt(S))."""

    mean: float
    sd: float
    sem: float


def _values(values) -> np.ndarray:
    v = as_numpy(values, np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("no values")
    return v


def summarise(values) -> Summary:
    """Mean, sd and SEM of one configuration's metric over its seeds, ``values`` (S,)."""
    v = _values(values)
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return Summary(float(v.mean()), sd, sd / math.sqrt(v.size))


def paired(a, b) -> dict:
    """Paired comparison of two configurations over the same S seeds, ``a`` and ``b`` (S,): the mean of a - b
    (``diff``), its standard error (``se``), and the two-sided paired t-test (``t``, ``p``; ``scipy.stats.ttest_rel``).
    With one seed there is no test: ``se``, ``t`` and ``p`` are NaN and ``test`` is None. When every seed gives
    the same difference (no spread), t is infinite and p is 0 for a non-zero difference, t is NaN and p 1 for
    none."""
    x, z = _values(a), _values(b)
    if x.shape != z.shape:
        raise ValueError(f"paired values need the same seeds, got {x.size} and {z.size}")
    d = x - z
    n, diff = int(d.size), float(d.mean())
    if n < 2:
        return {"n": n, "diff": diff, "se": math.nan, "t": math.nan, "p": math.nan, "test": None}
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        t, p = (math.copysign(math.inf, diff), 0.0) if diff != 0 else (math.nan, 1.0)
    else:
        res = stats.ttest_rel(x, z)
        t, p = float(res.statistic), float(res.pvalue)
    return {"n": n, "diff": diff, "se": se, "t": t, "p": p, "test": "paired t-test, two-sided"}


def _num(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.2g}"


def verdict(a_name: str, b_name: str, result: dict, *, scale: float = 100.0, unit: str = "points",
            higher_is_better: bool = True, alpha: float = 0.05) -> str:
    """One sentence on ``paired(a, b)``'s ``result``: who beats whom, by how much (times ``scale``, in ``unit``)
    with its standard error, over how many seeds, the test (|t|: the words say the direction), and whether that is
    more than seed noise (p < ``alpha``). For a loss pass ``higher_is_better=False``."""
    diff, n = result["diff"], result["n"]
    better = diff > 0 if higher_is_better else diff < 0
    verb = "ties with" if diff == 0 else ("beats" if better else "trails")
    size = f" by {_num(abs(diff) * scale)}"
    if result["test"] is None:
        by = "" if diff == 0 else f"{size} {unit}"
        return f"{a_name} {verb} {b_name}{by} on a single seed: no paired test, so the seed noise is unknown"
    noise = "more than seed noise" if result["p"] < alpha else "within seed noise"
    return (f"{a_name} {verb} {b_name}{size} +- {_num(result['se'] * scale)} {unit} over {n} paired seeds "
            f"(t = {abs(result['t']):.1f}, p = {result['p']:.2g}): {noise}")


def binomial_se(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` images (the report's single-seed fallback)."""
    return math.sqrt(max(acc * (1 - acc), 1e-12) / max(n, 1))


def _ranked(scores: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Scores turned so that higher is better and NaN (a diverged run) is the worst."""
    s = scores if higher_is_better else -scores
    return np.where(np.isnan(s), -np.inf, s)


def single_seed_flips(per_seed_scores, higher_is_better: bool = True) -> float:
    """How often the winner by one seed alone differs from the winner by the seed mean: over the rows of
    ``per_seed_scores`` (S, configurations), the fraction whose best configuration is not the best by the mean
    (ties: the lowest configuration index)."""
    s = as_numpy(per_seed_scores, np.float64)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"expected scores of shape (seeds, configurations), got {s.shape}")
    by_mean = int(np.argmax(_ranked(s.mean(axis=0), higher_is_better)))
    by_seed = np.argmax(_ranked(s, higher_is_better), axis=1)
    return float((by_seed != by_mean).mean())


def ranking_noise(per_seed_scores, names: Sequence[str], higher_is_better: bool = True, **verdict_kw) -> dict:
    """Is the ranking by seed mean more than seed noise? The winner against the runner-up and against the median
    configuration (the one at rank floor(K / 2) of K, best first; left out when it is the runner-up, K <= 3), each as
    ``paired`` plus its ``verdict``; with one configuration there is nothing to compare (only ``winner`` and
    ``order``)."""
    s = as_numpy(per_seed_scores, np.float64)
    if s.ndim != 2 or s.shape[1] != len(names):
        raise ValueError(f"expected scores of shape (seeds, {len(names)}), got {s.shape}")
    order = [int(i) for i in np.argsort(-_ranked(s.mean(axis=0), higher_is_better), kind="stable")]
    out: dict = {"winner": order[0], "order": order}
    for key, rank in (("runner_up", 1), ("median", len(order) // 2)):
        if rank < len(order) and (key == "runner_up" or rank > 1):  # the median only when not the runner-up
            res = paired(s[:, order[0]], s[:, order[rank]])
            out[key] = {"index": order[rank], **res,
                        "verdict": verdict(names[order[0]], names[order[rank]], res,
                                           higher_is_better=higher_is_better, **verdict_kw)}
    return out
