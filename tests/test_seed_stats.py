"""Statistics over seeds against formulas computed here with numpy and scipy's t distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from cifar100_func.stats import seeds


@pytest.mark.parametrize("values", [[0.41, 0.43, 0.40, 0.44], [0.5, 0.52], np.linspace(0.1, 0.9, 7)])
def test_summarise(values):
    v = np.asarray(values, dtype=np.float64)
    mean, sd, sem = seeds.summarise(values)
    assert mean == pytest.approx(v.sum() / len(v))
    assert sd == pytest.approx(math.sqrt(((v - v.mean()) ** 2).sum() / (len(v) - 1)))
    assert sem == pytest.approx(sd / math.sqrt(len(v)))


def test_summarise_one_seed_and_nan():
    assert seeds.summarise([0.37]) == (0.37, 0.0, 0.0)
    assert math.isnan(seeds.summarise([0.3, float("nan")]).mean)
    with pytest.raises(ValueError):
        seeds.summarise([])


@pytest.mark.parametrize("seed", range(4))
def test_paired_matches_the_t_distribution(seed):
    rng = np.random.default_rng(seed)
    s = 3 + seed
    b = rng.uniform(0.3, 0.5, s)
    a = b + rng.normal(0.01 * seed, 0.01, s)
    d = a - b
    se = d.std(ddof=1) / math.sqrt(s)
    t = d.mean() / se
    res = seeds.paired(a, b)
    assert res["n"] == s and res["test"] is not None
    assert res["diff"] == pytest.approx(d.mean())
    assert res["se"] == pytest.approx(se)
    assert res["t"] == pytest.approx(t)
    assert res["p"] == pytest.approx(2 * sps.t.sf(abs(t), df=s - 1))


def test_paired_one_seed_and_no_spread():
    one = seeds.paired([0.5], [0.4])
    assert one["test"] is None and one["diff"] == pytest.approx(0.1)
    assert all(math.isnan(one[k]) for k in ("se", "t", "p"))
    same = seeds.paired([0.5, 0.75, 1.0], [0.25, 0.5, 0.75])  # exactly the same difference on every seed
    assert same["se"] == 0.0 and same["t"] == math.inf and same["p"] == 0.0
    flat = seeds.paired([0.5, 0.5], [0.5, 0.5])
    assert flat["p"] == 1.0 and math.isnan(flat["t"])
    with pytest.raises(ValueError):
        seeds.paired([0.5, 0.6], [0.5])


def test_verdicts_in_words():
    clear = seeds.paired([0.52, 0.53, 0.51, 0.54], [0.50, 0.51, 0.50, 0.52])
    text = seeds.verdict("lr 0.1", "lr 0.03", clear)
    assert text.startswith("lr 0.1 beats lr 0.03 by 1.8 +- 0.25 points over 4 paired seeds (t = 7.0, p = ")
    assert text.endswith(": more than seed noise")
    noisy = seeds.paired([0.52, 0.49, 0.53, 0.50], [0.50, 0.51, 0.50, 0.52])
    assert seeds.verdict("a", "b", noisy).endswith("within seed noise")
    assert seeds.verdict("b", "a", seeds.paired([0.50, 0.51, 0.50, 0.52], [0.52, 0.53, 0.51, 0.54])).startswith(
        "b trails a by 1.8")
    loss = seeds.paired([1.9, 1.8, 1.85], [2.0, 1.95, 2.0])
    assert seeds.verdict("a", "b", loss, scale=1.0, unit="nats", higher_is_better=False).startswith(
        "a beats b by 0.13 +- 0.017 nats over 3 paired seeds (t = 8.0, p = 0.015): more than seed noise")
    single = seeds.verdict("a", "b", seeds.paired([0.5], [0.48]))
    assert single == "a beats b by 2.0 points on a single seed: no paired test, so the seed noise is unknown"
    tie = seeds.verdict("a", "b", seeds.paired([0.5], [0.5]))
    assert tie == "a ties with b on a single seed: no paired test, so the seed noise is unknown"


def test_binomial_se():
    assert seeds.binomial_se(0.45, 5000) == pytest.approx(math.sqrt(0.45 * 0.55 / 5000))
    assert seeds.binomial_se(1.0, 10) > 0


def _flips_by_loop(scores: np.ndarray) -> float:
    mean = scores.mean(axis=0)
    winner = max(range(scores.shape[1]), key=lambda c: (mean[c], -c))
    wrong = 0
    for row in scores:
        wrong += max(range(len(row)), key=lambda c: (row[c], -c)) != winner
    return wrong / len(scores)


def test_single_seed_flips():
    scores = np.array([[1.0, 2.0], [3.0, 0.0], [3.0, 0.0]])
    assert seeds.single_seed_flips(scores) == pytest.approx(1 / 3)
    assert seeds.single_seed_flips(scores, higher_is_better=False) == pytest.approx(1 / 3)  # winner 1; seed 0 says 0
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.normal(0.4, 0.02, (4, 5)) + np.linspace(0, 0.02, 5)
        assert seeds.single_seed_flips(s) == pytest.approx(_flips_by_loop(s))
    diverged = np.array([[0.4, np.nan], [0.5, 0.3]])  # a NaN is the worst score
    assert seeds.single_seed_flips(diverged) == 0.0


def test_ranking_noise():
    per_seed = np.array([[0.40, 0.45, 0.30, 0.44], [0.41, 0.47, 0.31, 0.44], [0.39, 0.46, 0.30, 0.45]])
    out = seeds.ranking_noise(per_seed, ["c0", "c1", "c2", "c3"])
    assert out["winner"] == 1 and out["order"] == [1, 3, 0, 2]
    assert out["runner_up"]["index"] == 3 and out["median"]["index"] == 0
    ref = sps.ttest_rel(per_seed[:, 1], per_seed[:, 0])
    assert out["median"]["p"] == pytest.approx(ref.pvalue) and out["median"]["t"] == pytest.approx(ref.statistic)
    assert out["runner_up"]["verdict"].startswith("c1 beats c3 by ")
    alone = seeds.ranking_noise(per_seed[:, :1], ["c0"])  # one configuration left (halving): nothing to compare
    assert "runner_up" not in alone and "median" not in alone and alone["winner"] == 0
    three = seeds.ranking_noise(per_seed[:, :3], ["c0", "c1", "c2"])  # the median would be the runner-up again
    assert three["runner_up"]["index"] == 0 and "median" not in three


def test_sweep_figures_draw_seed_rows_and_old_rows(tmp_path):
    """The sweep figures accept rows summarised over seeds, rows without the seed fields (one seed, the grid's
    old format), and a reliability diagram from ``stats.calibration.reliability`` bins read back from JSON."""
    import json

    from cifar100_func.report import sweep_plots
    from cifar100_func.stats.calibration import reliability

    rng = np.random.default_rng(0)
    rows = []
    for blocks in ([1, 1, 1], [2, 2, 2]):
        for lr in (0.01, 0.1):
            for wd in (0.0, 5e-4):
                acc = rng.uniform(0.3, 0.4, 3)
                s = seeds.summarise(acc)
                rows.append({"config": f"lr{lr}_wd{wd}_{blocks[0]}", "lr": lr, "weight_decay": wd,
                             "label_smoothing": 0.1, "blocks": blocks, "mid": 16, "seeds": 3, "val_acc_mean": s.mean,
                             "val_acc_sd": s.sd, "val_acc_sem": s.sem, "ensemble_val_acc": s.mean + 0.02})
    rows[1]["val_acc_mean"] = None  # a diverged configuration
    old = [{k: r[k] for k in ("config", "lr", "weight_decay", "blocks", "mid")} | {"final_val_acc": 0.3} for r in rows]
    for name, rs in (("new", rows), ("old", old)):
        for fn in (sweep_plots.metric_vs_hparams, sweep_plots.ensemble_gain):
            out = fn(rs, tmp_path / f"{fn.__name__}_{name}.png")
            assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sweep_plots.metric_vs_hparams([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    p = rng.dirichlet(np.ones(10), 300)
    bins = json.loads(json.dumps(reliability(np.log(p), rng.integers(0, 10, 300))).replace("NaN", "null"))
    out = sweep_plots.reliability_diagram(bins, bins, tmp_path / "rel.png", "synthetic", temperature=1.5)
    assert out.read_bytes()[:4] == b"\x89PNG"
