"""LR finder, overfit check and sanity checks (SPEC experiments 1-3)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from cifar100_func.commands import lr_finder, sanity
from cifar100_func.runtime.from_config import data_spec
from cifar100_func.runtime.backend import Backend
from cifar100_func.config import load_config
from cifar100_func.data.dataset import load_dataset
from cifar100_func.core.model import Arch

PNG = b"\x89PNG\r\n\x1a\n"


def test_lr_schedule_is_geometric_from_start_to_end():
    lrs = lr_finder.lr_schedule(1e-7, 1.0, 71)
    assert lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(1.0)
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, ratios[0]) and ratios[0] == pytest.approx(10 ** (7 / 70))


def test_smoothing_is_a_bias_corrected_ema():
    x = np.array([[4.0], [2.0], [3.0]])
    out = lr_finder.smooth(x, 0.5)
    assert out[0, 0] == pytest.approx(4.0)  # bias correction: the first value is kept
    assert out[1, 0] == pytest.approx((0.25 * 4 + 0.5 * 2) / 0.75)


def _cfg(tiny_config, extra=None):
    base = {"dataset": {"synthetic": {"train_size": 100 + 32 * 30}}, "lr_finder": {"seeds": 2, "start": 1e-5,
                                                                                  "end": 10.0}}
    return load_config(tiny_config({**base, **(extra or {})}))


def test_finder_stops_early_on_divergence_and_suggests_lrs(tiny_config):
    cfg = _cfg(tiny_config, {"lr_finder": {"seeds": 2, "start": 1e-4, "end": 1000.0}})
    data = load_dataset(data_spec(cfg))
    res = lr_finder.find_lr(cfg, data, Backend.create(cfg, torch.device("cpu")))
    assert res["steps"] < res["planned_steps"] == 30
    assert "not finite" in res["stop_reason"] or "exceeded" in res["stop_reason"]
    assert np.all(np.isfinite(res["losses"]))
    assert res["lrs"][0] <= res["steepest_descent_lr"] <= res["upper_bound_lr"] <= res["lrs"][-1]


def test_stacked_seeds_match_single_seed_runs(tiny_config):
    cfg = _cfg(tiny_config, {"lr_finder": {"seeds": 3, "start": 1e-5, "end": 1e-2, "max_steps": 6},
                             "train": {"precision": "fp64"}})
    data = load_dataset(data_spec(cfg))
    stacked = lr_finder.find_lr(cfg, data, Backend.create(cfg, torch.device("cpu")))
    import dataclasses

    for j, seed in enumerate(stacked["seeds"]):
        one = dataclasses.replace(cfg, lr_finder=dataclasses.replace(cfg.lr_finder, seeds=1),
                                  train=dataclasses.replace(cfg.train, seed=seed))
        single = lr_finder.find_lr(one, data, Backend.create(one, torch.device("cpu")))
        np.testing.assert_allclose(stacked["losses"][:, j], single["losses"][:, 0], rtol=1e-9)


def test_lr_finder_command_outputs(run_cli, tiny_config, tmp_path):
    code, out, err = run_cli("lr_finder", "--config", str(tiny_config({"lr_finder": {"seeds": 2}})))
    assert code == 0, err
    d = tmp_path / "runs" / "lr_finder"
    assert (d / "lr_finder.png").read_bytes()[:8] == PNG
    summary = json.loads((d / "lr_finder.json").read_text())
    assert {"steepest_descent_lr", "upper_bound_lr", "rule", "stop_reason"} <= set(summary)
    rows = list(csv.DictReader((d / "lr_finder.csv").open()))
    assert len(rows) == summary["steps"] and "smoothed_mean" in rows[0]
    assert "upper bound" in out


def test_overfit_reaches_its_target_on_a_tiny_set(run_cli, tiny_config, tmp_path):
    cfg = tiny_config({"overfit": {"num_train": 20, "blocks": [1, 1, 1], "bottleneck_mid": 8, "epochs": 40,
                                   "lr": 0.01}})
    code, out, err = run_cli("overfit", "--config", str(cfg))
    assert code == 0, err
    d = tmp_path / "runs" / "overfit"
    for name in ("overfit_train_loss.png", "overfit_train_acc.png", "overfit_val_metrics.png"):
        assert (d / name).read_bytes()[:8] == PNG
    assert json.loads((d / "overfit.json").read_text())["final_train_acc"] >= 0.98
    assert not (tmp_path / "artifacts").exists()  # the check writes no checkpoint


def test_overfit_fails_loudly_when_it_cannot_learn(run_cli, tiny_config):
    cfg = tiny_config({"overfit": {"num_train": 20, "blocks": [1, 1, 1], "bottleneck_mid": 8, "epochs": 2,
                                   "lr": 1e-6}})
    code, _, err = run_cli("overfit", "--config", str(cfg))
    assert code == 1 and "overfit check failed" in err


def test_baselines_on_known_labels():
    train_y = torch.tensor([3, 3, 3, 1, 2, 0])
    eval_y = torch.tensor([3, 1, 3, 2, 0, 0, 0, 3])
    assert sanity.majority_baseline(train_y, eval_y, 4) == pytest.approx(3 / 8)
    assert sanity.majority_baseline(torch.tensor([1, 2]), eval_y, 4) == pytest.approx(1 / 8)  # tie: lowest index
    ub = sanity.uniform_baseline(torch.zeros(100000, dtype=torch.int64), 100)
    assert ub["expected"] == 0.01 and ub["measured"] == pytest.approx(0.01, abs=0.002)


def test_flops_per_image_match_spec():
    flops = sanity.flops_per_image(Arch((3, 3, 3), 16))
    assert flops["forward"] / 1e9 == pytest.approx(0.096, abs=0.0015)
    assert flops["forward_backward"] / 1e9 == pytest.approx(0.286, abs=0.003)


def test_sanity_command_outputs(run_cli, tiny_config, tmp_path):
    code, out, err = run_cli("sanity", "--config", str(tiny_config()))
    assert code == 0, err
    d = tmp_path / "runs" / "sanity"
    r = json.loads((d / "sanity.json").read_text())
    assert r["split_sizes"] == {"train": 320, "val": 100, "test": 100}
    assert r["batch_shape_ok"] and r["params"] > 0 and r["ln_num_classes"] == pytest.approx(math.log(10))
    assert (d / "augmented_samples.png").read_bytes()[:8] == PNG


@pytest.mark.realdata
def test_sanity_on_real_data(run_cli, real_root, tmp_path):
    code, out, err = run_cli("sanity", "--config", "configs/config.yaml", "--data-root", str(real_root),
                             "--set", f"paths.runs_dir={tmp_path}")
    assert code == 0, err
    r = json.loads((tmp_path / "sanity" / "sanity.json").read_text())
    assert r["split_sizes"] == {"train": 45000, "val": 5000, "test": 10000}
    assert r["class_counts"]["test"]["min"] == r["class_counts"]["test"]["max"] == 100
    assert r["params"] == 337_252 and abs(r["initial_loss"] - math.log(100)) < 0.35
    assert r["baselines"]["test"]["majority_class"] == pytest.approx(0.01)


@pytest.mark.parametrize("seed", range(6))
def test_stop_rule_equals_a_step_by_step_check(seed):
    """The finder looks at its losses only every few steps; its stop rule must find the step that a check after
    every single step (as the range test is defined) would have stopped at."""
    rng = np.random.default_rng(seed)
    n, k = 80, 3
    losses = 4.6 - np.linspace(0, 2, n)[:, None] + rng.normal(0, 0.05, (n, k))
    losses[rng.integers(30, 70):] *= rng.choice([1.0, 8.0, np.nan])  # blow-up, divergence or nothing
    lrs = np.geomspace(1e-5, 1.0, n)
    beta, factor = 0.9, 2.0
    want = trigger = None
    avg, best = np.zeros(k), math.inf
    for i in range(n):  # the old per-step loop
        if not np.all(np.isfinite(losses[i])):
            want, trigger = i, i
            break
        avg = beta * avg + (1 - beta) * losses[i]
        m = float(np.mean(avg / (1 - beta ** (i + 1))))
        best = min(best, m)
        if i > 0 and m > factor * best:
            want, trigger = i + 1, i
            break
    for seen in (n, 50, 20):  # what the rule concludes from the first `seen` losses only
        got = lr_finder.stop_rule(losses[:seen], lrs, beta, factor)
        if trigger is not None and seen > trigger:
            assert got is not None and got[0] == want
        else:
            assert got is None


def test_steepest_descent_ignores_a_spike_of_a_few_steps():
    """A range test's curve: a flat, noisy start where nothing trains (with a two-step dip, as short tests show),
    a straight descent of 0.5 a decade from lr 1e-3 to 1e-1, then a rise. The steepest descent is inside the
    descent, at its slope; a pointwise derivative would pick the dip."""
    lrs = lr_finder.lr_schedule(1e-7, 1.0, 300)
    x = np.log10(lrs)
    rng = np.random.default_rng(0)
    curve = 4.6 + 0.005 * rng.standard_normal(len(x))
    curve[(x > -3) & (x <= -1)] -= 0.5 * (x[(x > -3) & (x <= -1)] + 3)
    curve[x > -1] = curve[x > -1] - 1.0 + 2.0 * (x[x > -1] + 1)
    dip = int(np.searchsorted(x, -6.0))
    curve[dip : dip + 2] -= 0.1
    pointwise = np.gradient(curve[30:], x[30:])
    assert abs(x[30 + int(np.argmin(pointwise))] + 6.0) < 0.1  # the dip fools a pointwise derivative
    res = lr_finder.suggestions(lrs, curve)
    assert -3 < np.log10(res["steepest_descent_lr"]) < -1
    assert res["steepest_slope_per_decade"] == pytest.approx(-0.5, abs=0.02)
    assert np.log10(res["upper_bound_lr"]) == pytest.approx(-1, abs=0.1)


def test_steepest_descent_on_a_coarse_range_fits_lines_through_three_points_at_least():
    """Six steps over three decades: a decade holds no three points, so no line is fitted through one point (numpy
    would warn and return an arbitrary slope); the reading stays inside the range, before the minimum."""
    import warnings

    lrs = lr_finder.lr_schedule(1e-5, 1e-2, 6)
    curve = np.array([4.6, 4.4, 4.0, 3.9, 3.85, 4.2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = lr_finder.suggestions(lrs, curve)
    assert lrs[1] <= res["steepest_descent_lr"] <= res["upper_bound_lr"] == lrs[4]
    assert res["steepest_slope_per_decade"] < 0
