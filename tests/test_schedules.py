"""The lr schedules against torch.optim.lr_scheduler.OneCycleLR, CosineAnnealingLR and ExponentialLR."""

from __future__ import annotations

import math

import pytest
import torch

from cifar100_func.core import schedules
from cifar100_func.config import SchedulerConfig
from cifar100_func.runtime.recipe import lr_schedule

REL = 1e-6


def _torch_lrs(make_scheduler, steps: int, peak: float) -> list[float]:
    """The lr that ``torch.optim`` uses at steps 0 .. steps-1."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=peak)
    sched = make_scheduler(opt)
    lrs = []
    for step in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        if step < steps - 1:
            opt.step()
            sched.step()
    return lrs


def _onecycle_ref(total: int, peak: float, pct: float, div: float, final_div: float) -> list[float]:
    make = lambda opt: torch.optim.lr_scheduler.OneCycleLR(  # noqa: E731
        opt, max_lr=peak, total_steps=total, pct_start=pct, div_factor=div, final_div_factor=final_div,
        anneal_strategy="cos", cycle_momentum=False, three_phase=False)
    return _torch_lrs(make, total, peak)


def _cosine_ref(total: int, peak: float, min_ratio: float) -> list[float]:
    make = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=min_ratio * peak)  # noqa: E731
    return _torch_lrs(make, total + 1, peak)  # steps 0 .. T inclusive


def _assert_close(got: list[float], want: list[float], what: str, peak: float) -> None:
    assert len(got) == len(want)
    for step, (a, b) in enumerate(zip(got, want)):
        # relative, with an absolute floor far below any lr that matters (the torch oracle's own rounding)
        assert a == pytest.approx(b, rel=REL, abs=1e-12 * peak), f"{what}: step {step}: {a!r} != torch {b!r}"


# ------------------------------------------------------------------------------------------ onecycle
@pytest.mark.parametrize(
    "total, pct, div, final_div",
    [
        (100, 0.25, 25.0, 1e4),
        (1000, 0.3, 25.0, 1e4),
        (157, 0.25, 25.0, 1e4),  # warm-up end not on a whole step
        (50, 0.1, 10.0, 100.0),
        (33, 0.5, 5.0, 1.0),
        (400, 0.9, 1.0, 1e3),  # div_factor 1: flat start
        (12, 0.34, 25.0, 1e4),
        (20, 0.07, 25.0, 1e4),  # the peak falls between steps 0 and 1
        (10, 0.05, 25.0, 1e4),  # warm-up shorter than one step: straight into annealing
    ],
)
@pytest.mark.parametrize("peak", [0.01, 0.4])
def test_onecycle_matches_torch(total, pct, div, final_div, peak):
    factor = schedules.onecycle(total, pct, div, final_div)
    got = [factor(s) * peak for s in range(total)]
    want = _onecycle_ref(total, peak, pct, div, final_div)
    _assert_close(got, want, f"onecycle(T={total}, pct={pct}, div={div}, final_div={final_div})", peak)


def test_onecycle_landmarks():
    total, pct, div, final_div = 200, 0.25, 25.0, 1e4
    f = schedules.onecycle(total, pct, div, final_div)
    assert f(0) == pytest.approx(1 / div, rel=REL)
    assert f(int(pct * total) - 1) == pytest.approx(1.0, rel=REL)
    assert f(total - 1) == pytest.approx(1 / (div * final_div), rel=REL)
    values = [f(s) for s in range(total)]
    peak_at = int(pct * total) - 1
    assert all(a <= b for a, b in zip(values[:peak_at], values[1 : peak_at + 1])), "warm-up not increasing"
    assert all(a >= b for a, b in zip(values[peak_at:], values[peak_at + 1 :])), "annealing not decreasing"


# -------------------------------------------------------------------------------------------- cosine
@pytest.mark.parametrize("total", [1, 2, 10, 97, 1000])
@pytest.mark.parametrize("min_ratio", [0.0, 0.01, 0.5])
@pytest.mark.parametrize("peak", [0.005, 0.1])
def test_cosine_matches_torch(total, min_ratio, peak):
    factor = schedules.cosine(total, min_ratio)
    got = [factor(s) * peak for s in range(total + 1)]
    want = _cosine_ref(total, peak, min_ratio)
    _assert_close(got, want, f"cosine(T={total}, min_ratio={min_ratio})", peak)


def test_cosine_closed_form_and_ends():
    total, min_ratio = 64, 0.1
    f = schedules.cosine(total, min_ratio)
    assert f(0) == 1.0
    assert f(total) == pytest.approx(min_ratio, rel=REL)
    assert f(total // 2) == pytest.approx((1 + min_ratio) / 2, rel=REL)
    for s in range(total + 1):
        want = min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * s / total)) / 2
        assert f(s) == pytest.approx(want, rel=REL)


def test_constant():
    f = schedules.constant()
    assert all(f(s) == 1.0 for s in (0, 1, 10, 10**6))


# ------------------------------------------------------------------------------------------ exponential
@pytest.mark.parametrize("total, start, end", [(71, 1e-7, 1.0), (10, 1e-3, 10.0), (2, 0.1, 0.01)])
def test_exponential_matches_torch(total, start, end):
    gamma = (end / start) ** (1 / (total - 1))
    make = lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma)  # noqa: E731
    f = schedules.exponential(total, end / start)
    _assert_close([f(s) * start for s in range(total)], _torch_lrs(make, total, start), "exponential", start)
    assert f(0) == 1.0 and f(total - 1) * start == pytest.approx(end, rel=1e-12)


def test_table_holds_each_steps_multiplier_in_float32():
    f = schedules.onecycle(50)
    t = schedules.table(f, 50)
    assert t.dtype == torch.float32 and t.shape == (50,)
    assert t.tolist() == [float(torch.tensor(f(s), dtype=torch.float64).float()) for s in range(50)]


# ------------------------------------------------------------------------------------- from a config
def test_lr_schedule_of_a_config():
    total, peak = 120, 0.02
    cfg = SchedulerConfig(name="onecycle", warmup_pct=0.3, div_factor=20.0, final_div_factor=100.0)
    f = lr_schedule(cfg, total)
    _assert_close([f(s) * peak for s in range(total)], _onecycle_ref(total, peak, 0.3, 20.0, 100.0),
                  "lr_schedule(onecycle)", peak)

    cfg = SchedulerConfig(name="cosine", min_lr_ratio=0.05)
    f = lr_schedule(cfg, total)
    _assert_close([f(s) * peak for s in range(total + 1)], _cosine_ref(total, peak, 0.05),
                  "lr_schedule(cosine)", peak)

    assert lr_schedule(SchedulerConfig(name="none"), total) is None  # a constant lr


def test_lr_schedule_default_config():
    total, peak = 80, 0.01
    cfg = SchedulerConfig(name="onecycle")  # the defaults: 0.25, 25, 1e4
    f = lr_schedule(cfg, total)
    want = _onecycle_ref(total, peak, cfg.warmup_pct, cfg.div_factor, cfg.final_div_factor)
    _assert_close([f(s) * peak for s in range(total)], want, "lr_schedule(default onecycle)", peak)
