"""Greedy ensemble selection with replacement against a brute-force re-implementation (every candidate ensemble
recomputed from scratch in float64 each round) and an exhaustive search over small multisets."""

from __future__ import annotations

from collections import Counter
from itertools import combinations_with_replacement

import numpy as np
import pytest
import torch

from cifar100_func.runtime.predict import mean_log_probs
from cifar100_func.stats.selection import select


def _library(seed: int, m: int = 5, n: int = 300, c: int = 10):
    """Members of different quality: each a mix of a noisy view of the labels and random noise, at its own
    temperature."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    members = []
    for j in range(m):
        z = rng.normal(size=(n, c)) * rng.uniform(0.5, 3.0)
        z[np.arange(n), y] += rng.uniform(0.0, 3.0)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        members.append(e / e.sum(axis=1, keepdims=True))
    return np.stack(members), y


def _score(probs: np.ndarray, chosen: list[int], y: np.ndarray) -> tuple[float, float]:
    """NLL and accuracy of the plain mean of the chosen members (a multiset), from scratch."""
    ens = np.mean([probs[i] for i in chosen], axis=0)
    return float(-np.mean(np.log(ens[np.arange(len(y)), y]))), float(np.mean(ens.argmax(axis=1) == y))


def _brute_force_greedy(probs: np.ndarray, y: np.ndarray, rounds: int) -> tuple[list[int], list[float]]:
    chosen, nlls = [], []
    for _ in range(rounds):
        scores = [_score(probs, chosen + [m], y)[0] for m in range(len(probs))]
        best = min(range(len(scores)), key=lambda m: (scores[m], m))
        chosen.append(best)
        nlls.append(scores[best])
    return chosen, nlls


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_equals_brute_force(seed):
    probs, y = _library(seed, m=6)
    sel = select(np.log(probs), y, rounds=8)
    order, nlls = _brute_force_greedy(probs, y, 8)
    assert list(sel.order) == order
    np.testing.assert_allclose(sel.round_nll, nlls, rtol=1e-12)
    np.testing.assert_allclose(sel.round_acc, [_score(probs, order[:k], y)[1] for k in range(1, 9)])
    size = int(np.argmin(nlls)) + 1
    assert sel.size == size
    assert sel.counts == tuple(Counter(order[:size]).get(m, 0) for m in range(len(probs)))
    assert sel.weights == pytest.approx([c / size for c in sel.counts])
    assert sel.val_nll == pytest.approx(_score(probs, order[:size], y)[0], rel=1e-12)
    assert sel.val_acc == pytest.approx(_score(probs, order[:size], y)[1])
    assert sel.members == tuple(m for m in range(len(probs)) if sel.counts[m])


@pytest.mark.parametrize("seed", range(5))
def test_never_worse_than_the_best_member(seed):
    probs, y = _library(seed + 10, m=4, n=200)
    best_single = min(_score(probs, [m], y)[0] for m in range(len(probs)))
    for rounds in (1, 3, 10):
        assert select(np.log(probs), y, rounds).val_nll <= best_single + 1e-12


def test_one_clearly_best_member_and_one_round():
    probs, y = _library(3, m=4)
    probs[2] = 0.01 / (probs.shape[2] - 1)
    probs[2][np.arange(len(y)), y] = 0.99
    sel = select(np.log(probs), y, rounds=1)
    assert sel.counts == (0, 0, 1, 0) and sel.order == (2,) and sel.weights == (0.0, 0.0, 1.0, 0.0)
    assert sel.val_acc == 1.0 and sel.val_nll == pytest.approx(-np.log(0.99))


def test_ties_go_to_the_lowest_index():
    probs, y = _library(4, m=3)
    probs = np.concatenate([probs, probs])  # members 3..5 repeat 0..2
    assert all(m < 3 for m in select(np.log(probs), y, rounds=5).order)


@pytest.mark.parametrize("seed", range(4))
def test_small_case_against_every_multiset(seed):
    """M = 3, 3 rounds: the result is one of the multisets of size <= 3 and scores what it says; no multiset of
    size 1 beats it (the greedy answer is at least as good as any single member)."""
    probs, y = _library(seed + 20, m=3, n=150)
    sel = select(np.log(probs), y, rounds=3)
    scored = {ms: _score(probs, list(ms), y)[0] for k in (1, 2, 3) for ms in combinations_with_replacement(range(3), k)}
    chosen = tuple(sorted(m for m, c in enumerate(sel.counts) for _ in range(c)))
    assert chosen in scored
    assert sel.val_nll == pytest.approx(scored[chosen], rel=1e-12)
    assert sel.val_nll <= min(v for ms, v in scored.items() if len(ms) == 1) + 1e-12
    assert sel.val_nll >= min(scored.values()) - 1e-12
    ens = mean_log_probs(torch.from_numpy(np.log(probs)), sel.weights).exp().numpy()  # the library's weighted mean
    np.testing.assert_allclose(ens, np.mean([probs[m] for m in chosen], axis=0), rtol=1e-12)


def test_torch_input_and_bad_input():
    probs, y = _library(5, m=3, n=100)
    a = select(np.log(probs), y, rounds=4)
    b = select(torch.from_numpy(np.log(probs)), torch.from_numpy(y), rounds=4)
    assert a == b
    np.testing.assert_allclose(mean_log_probs(torch.from_numpy(np.log(probs))).exp().numpy(), probs.mean(axis=0), rtol=1e-12)
    with pytest.raises(ValueError):
        select(np.log(probs), y, rounds=0)


def test_members_far_below_float64_probabilities_are_ranked_by_their_true_loss():
    """Member 0 loses 500 nats per image, member 1 250: both underflow as probabilities, not as log-probabilities."""
    y = np.zeros(4, dtype=np.int64)
    lp = np.full((2, 4, 3), np.log(0.5))
    lp[0, :, 0], lp[1, :, 0] = -500.0, -250.0
    sel = select(lp, y, rounds=1)
    assert sel.order == (1,) and sel.val_nll == pytest.approx(250.0)
