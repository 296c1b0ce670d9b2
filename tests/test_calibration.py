"""Calibration metrics against independent implementations (torchmetrics' calibration error, torch's NLL, a numpy
loop for Brier and the reliability bins), and temperature scaling against a brute-force grid over T."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from cifar100_func.stats import calibration as cal


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sample_labels(p: np.ndarray, rng) -> np.ndarray:
    """One label per row drawn from that row's distribution."""
    u = rng.random((len(p), 1))
    return np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1), p.shape[1] - 1)


def _case(seed: int, n: int = 3000, c: int = 10, scale: float = 3.0, sharpen: float = 1.0):
    """Labels drawn from softmax(logits); the model reports softmax(sharpen * logits): over-confident for
    sharpen > 1, under-confident below 1, calibrated at 1 (its ideal temperature is then ``sharpen``)."""
    rng = np.random.default_rng(seed)
    logits = scale * rng.normal(size=(n, c))
    y = _sample_labels(_softmax(logits), rng)
    return _softmax(sharpen * logits), y


CASES = [dict(seed=0), dict(seed=1, c=100, scale=2.0, sharpen=2.5), dict(seed=2, sharpen=0.4), dict(seed=3, n=37, c=5)]


@pytest.mark.parametrize("case", CASES)
def test_ece_matches_torchmetrics(case):
    p, y = _case(**case)
    ref = multiclass_calibration_error(torch.from_numpy(p), torch.from_numpy(y), num_classes=p.shape[1], n_bins=15,
                                       norm="l1")
    assert cal.ece(np.log(p), y) == pytest.approx(float(ref), abs=1e-6)  # torchmetrics bins confidences in float32
    ref5 = multiclass_calibration_error(torch.from_numpy(p), torch.from_numpy(y), num_classes=p.shape[1], n_bins=5,
                                        norm="l1")
    assert cal.ece(np.log(p), y, bins=5) == pytest.approx(float(ref5), abs=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_nll_matches_torch(case):
    p, y = _case(**case)
    ref = F.nll_loss(torch.log(torch.from_numpy(p)), torch.from_numpy(y))
    assert cal.nll(np.log(p), y) == pytest.approx(float(ref), rel=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_brier_matches_a_loop(case):
    p, y = _case(**case)
    total = 0.0
    for i in range(len(y)):
        for k in range(p.shape[1]):
            total += (p[i, k] - (1.0 if k == y[i] else 0.0)) ** 2
    assert cal.brier(np.log(p), y) == pytest.approx(total / len(y), rel=1e-12)


def test_accuracy_and_reliability_bins_match_a_loop():
    p, y = _case(seed=4, n=500)
    bins = cal.reliability(np.log(p), y, bins=15)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    assert cal.accuracy(np.log(p), y) == pytest.approx(np.mean(pred == y))
    assert sum(bins["count"]) == len(y) and len(bins["edges"]) == 16
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inside = [i for i in range(len(y)) if lo <= conf[i] < hi]
        assert bins["count"][b] == len(inside)
        if inside:
            assert bins["confidence"][b] == pytest.approx(np.mean([conf[i] for i in inside]))
            assert bins["accuracy"][b] == pytest.approx(np.mean([pred[i] == y[i] for i in inside]))
        else:
            assert np.isnan(bins["confidence"][b]) and np.isnan(bins["accuracy"][b])
    assert bins["ece"] == pytest.approx(cal.ece(np.log(p), y))


def test_a_confidence_of_one_falls_in_the_last_bin():
    p = np.eye(3)[[0, 1, 2, 0]] * (1 - 2e-300) + 1e-300  # one-hot up to float64 rounding, log-safe
    y = np.array([0, 1, 0, 0])
    bins = cal.reliability(np.log(p), y, bins=4)
    assert bins["count"] == [0, 0, 0, 4]
    assert bins["accuracy"][3] == pytest.approx(0.75)
    assert cal.ece(np.log(p), y, bins=4) == pytest.approx(0.25)


def test_with_temperature_matches_torch_softmax():
    p, _ = _case(seed=5, n=50)
    for t in (0.3, 1.0, 4.0):
        ref = torch.softmax(torch.log(torch.from_numpy(p)) / t, dim=1).numpy()
        np.testing.assert_allclose(np.exp(cal.with_temperature(np.log(p), t)), ref, rtol=1e-10, atol=1e-15)
    with pytest.raises(ValueError):
        cal.with_temperature(np.log(p), 0.0)


def _nll_at(p, y, t):
    """NLL of softmax(log(p) / t), in plain numpy."""
    z = np.log(p) / t
    zmax = z.max(axis=1, keepdims=True)
    logp = z - zmax - np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


@pytest.mark.parametrize("sharpen", [3.0, 0.4])
def test_temperature_scaling_recovers_the_temperature_and_lowers_nll(sharpen):
    """Over-confident (sharpen 3) and under-confident (0.4, like a label-smoothed model) probabilities: the fitted
    temperature is the one that undoes the distortion, it is the minimum of a brute-force grid over T, and it
    lowers the validation NLL and ECE."""
    p, y = _case(seed=6, n=6000, sharpen=sharpen)
    t = cal.fit_temperature(np.log(p), y)
    assert t == pytest.approx(sharpen, rel=0.08)
    grid = np.exp(np.linspace(np.log(t) - 0.5, np.log(t) + 0.5, 201))
    best_on_grid = min(_nll_at(p, y, g) for g in grid)
    assert _nll_at(p, y, t) <= best_on_grid + 1e-10
    out = cal.calibration(np.log(p), y, T=t)
    assert out["scaled"]["nll"] < out["nll"] - 0.01
    assert out["scaled"]["ece"] < out["ece"]
    assert out["scaled"]["acc"] == out["acc"] == pytest.approx(np.mean(p.argmax(axis=1) == y))
    assert out["temperature"] == t
    assert out["nll"] == pytest.approx(_nll_at(p, y, 1.0)) and out["scaled"]["nll"] == pytest.approx(_nll_at(p, y, t))


def test_calibrated_probabilities_keep_a_temperature_near_one():
    p, y = _case(seed=7, n=6000)
    assert cal.fit_temperature(np.log(p), y) == pytest.approx(1.0, rel=0.08)
    assert set(cal.calibration(np.log(p), y)) == {"nll", "ece", "brier", "acc"}


def test_torch_float32_input_and_bad_shapes():
    p, y = _case(seed=8, n=200)
    pt, yt = torch.from_numpy(p).float(), torch.from_numpy(y)
    assert cal.nll(pt.log(), yt) == pytest.approx(cal.nll(np.log(p), y), rel=1e-6)
    assert cal.ece(pt.log(), yt) == pytest.approx(cal.ece(np.log(p), y), abs=1e-6)
    with pytest.raises(ValueError):
        cal.nll(np.log(p), y[:-1])
    with pytest.raises(ValueError):
        cal.nll(p[0], y[:1])
    with pytest.raises(ValueError):
        cal.nll(np.log(p), y + p.shape[1])
    with pytest.raises(ValueError, match="log-probabilities"):
        cal.ece(p, y)  # probabilities, not their logs
