"""Greedy forward ensemble selection with replacement (Caruana et al. 2004) on a validation split.

From a library of M trained members (every seed of every configuration of a sweep that finished), each round adds
the member, any of M and repeats allowed, whose addition gives the lowest validation NLL of the ensemble: the mean
of the chosen members' probabilities, a member counted as often as it was chosen. Members come as log-probabilities
(log_softmax), the form in which a confidently wrong prediction keeps its true loss. The answer is the best prefix of
the rounds, so it never scores worse on validation NLL than the best single member (round 1 picks that one).

Only the label's column of each candidate ensemble enters the NLL, so a round costs O(M * N) plus O(N * C) for the
chosen ensemble's accuracy; members are converted to float64 one at a time, so the library may be large.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arrays import as_numpy

TIE = 1e-12  # prefixes whose NLL differs by less (relative) tie: float64 rounding, e.g. one member chosen twice


@dataclass(frozen=True)
class Selection:
    """A selected ensemble. ``counts[m]``: how often member m was chosen in the kept prefix; ``weights``: counts /
    their total; ``order``: the member chosen in each round (all rounds run, the kept prefix first
    ``size`` of them); ``round_nll`` / ``round_acc``: the ensemble's validation NLL and accuracy after each round;
    ``val_nll`` / ``val_acc``: those of the kept prefix."""

    counts: tuple[int, ...]
    weights: tuple[float, ...]
    order: tuple[int, ...]
    round_nll: tuple[float, ...]
    round_acc: tuple[float, ...]
    size: int
    val_nll: float
    val_acc: float

    @property
    def members(self) -> tuple[int, ...]:
        """The indices of the members with a positive weight."""
        return tuple(m for m, c in enumerate(self.counts) if c > 0)

    def to_dict(self) -> dict:
        return {"counts": list(self.counts), "weights": list(self.weights), "order": list(self.order),
                "round_nll": list(self.round_nll), "round_acc": list(self.round_acc), "size": self.size,
                "members": list(self.members), "val_nll": self.val_nll, "val_acc": self.val_acc}


def _member(log_probs, m: int) -> np.ndarray:
    """Member ``m``'s log-probabilities (N, C), float64."""
    return as_numpy(log_probs[m], np.float64)


def select(val_log_probs, y, rounds: int) -> Selection:
    """Greedy selection with replacement over ``val_log_probs`` (M, N, C) (each member's log_softmax on the
    validation split) against labels ``y`` (N,), for ``rounds`` rounds; ties go to the lowest member index, and
    among prefixes of equal NLL (to ``TIE``) the shortest is kept."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    m_count = len(val_log_probs)
    y = as_numpy(y).astype(np.int64)
    if m_count == 0 or len(y) == 0:
        raise ValueError("selection needs at least one member and one validation image")
    rows = np.arange(len(y))
    label_lp = np.stack([_member(val_log_probs, m)[rows, y] for m in range(m_count)])  # (M, N)
    total = np.zeros_like(_member(val_log_probs, 0))  # the running sum of the chosen members' probabilities (N, C)
    log_total_y = np.full(len(y), -np.inf)  # the log of that sum at the labels, kept in log space: exact NLLs
    order, round_nll, round_acc = [], [], []
    for k in range(1, rounds + 1):
        cand = -(np.logaddexp(log_total_y[None, :], label_lp) - np.log(k)).mean(axis=1)  # (M,)
        best = int(np.argmin(cand))
        total += np.exp(_member(val_log_probs, best))
        log_total_y = np.logaddexp(log_total_y, label_lp[best])
        order.append(best)
        round_nll.append(float(cand[best]))
        round_acc.append(float((total.argmax(axis=1) == y).mean()))
    floor = min(round_nll)
    size = next(k for k, v in enumerate(round_nll, start=1) if v <= floor + TIE * max(1.0, abs(floor)))
    counts = np.bincount(order[:size], minlength=m_count)
    return Selection(counts=tuple(int(c) for c in counts), weights=tuple(float(c) / size for c in counts),
                     order=tuple(order), round_nll=tuple(round_nll), round_acc=tuple(round_acc), size=size,
                     val_nll=round_nll[size - 1], val_acc=round_acc[size - 1])

