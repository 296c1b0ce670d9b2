"""Schedules as pure functions of the step count: ``factor(step) -> multiplier of a base value``.

A hyper-parameter that a schedule varies is ``base * factor(step)`` (:class:`.hyper.Scheduled`, the multipliers
of every step as one :func:`table` in the optimiser's state), so K stacked models with different peak lrs follow
one schedule. ``onecycle`` (and its momentum cycle, multipliers of 1) and ``cosine`` follow
``torch.optim.lr_scheduler.OneCycleLR`` (cosine annealing, two phases) and ``CosineAnnealingLR``; tests compare
them. ``exponential`` is the LR range test's geometric sweep.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Schedule = Callable[[int], float]


def constant() -> Schedule:
    return lambda step: 1.0


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def cosine(total_steps: int, min_ratio: float = 0.0) -> Schedule:
    """From 1 down to ``min_ratio`` over ``total_steps`` along half a cosine."""
    return lambda step: _cos_anneal(1.0, min_ratio, min(step, total_steps) / total_steps)


def _two_phase(total_steps: int, warmup_pct: float, first: float, turn: float, last: float) -> Schedule:
    """From ``first`` to ``turn`` over ``warmup_pct`` of the steps, then to ``last``, along cosines (one-cycle's
    phases, with ``OneCycleLR``'s step arithmetic)."""
    peak_step = warmup_pct * total_steps - 1.0
    last_step = total_steps - 1.0

    def value(step: int) -> float:
        if step <= peak_step:
            return _cos_anneal(first, turn, step / peak_step if peak_step > 0 else 1.0)
        return _cos_anneal(turn, last, min(1.0, (step - peak_step) / max(last_step - peak_step, 1e-12)))

    return value


def onecycle(total_steps: int, warmup_pct: float = 0.25, div_factor: float = 25.0,
             final_div_factor: float = 1e4) -> Schedule:
    """Rise from 1/div_factor to 1 over ``warmup_pct`` of the steps, then fall to 1/(div*final_div)."""
    return _two_phase(total_steps, warmup_pct, 1.0 / div_factor, 1.0, 1.0 / div_factor / final_div_factor)


def onecycle_momentum(total_steps: int, warmup_pct: float = 0.25, base: float = 0.85, peak: float = 0.95) -> Schedule:
    """The momentum of one-cycle's inverse cycle (``OneCycleLR(cycle_momentum=True)``): from ``peak`` down to
    ``base`` while the lr rises, back to ``peak`` while it falls. Absolute values, not multipliers."""
    return _two_phase(total_steps, warmup_pct, peak, base, peak)


def exponential(total_steps: int, end_ratio: float) -> Schedule:
    """Geometric from 1 at step 0 to ``end_ratio`` at step ``total_steps - 1`` (an lr range test's sweep)."""
    if total_steps <= 1:
        return constant()
    return lambda step: end_ratio ** (step / (total_steps - 1))


def table(schedule: Schedule, total_steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The multipliers of steps 0 .. total_steps-1 as one float32 tensor on ``device``, computed once on the host
    (in float64), so that a step reads step ``g``'s multiplier as ``table[g]`` without host work."""
    return torch.tensor([schedule(g) for g in range(total_steps)], dtype=torch.float64).float().to(device)
