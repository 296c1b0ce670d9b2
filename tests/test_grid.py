"""The stacked (vmapped) grid equals sequential runs on the standard path; divergence stays contained."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch
from torch.utils._pytree import tree_leaves

from cifar100_func.commands import grid_search
from cifar100_func.runtime.from_config import data_spec, pipeline

from cifar100_func.runtime import trainer
from cifar100_func.runtime.backend import Backend
from cifar100_func.config import load_config
from cifar100_func.data.dataset import load_dataset
from cifar100_func.core.hyper import Hyper
from cifar100_func.data.loader import steps_per_epoch
from cifar100_func.runtime.loop import Plan, train, unstack

DEV = torch.device("cpu")
CONFIGS = [(0.001, 0.0), (0.003, 5e-4), (0.01, 1e-3)]


def _setup(tiny_config, extra=None):
    cfg = load_config(tiny_config(extra))
    data = load_dataset(data_spec(cfg))
    return cfg, data, trainer.arch_from(cfg, data.num_classes)


def fit_stack(cfg, data, arch, members, epochs, *, shared_data, label_smoothing=None, compile=False):
    """A stack of ``members`` ((lr, wd, seed) each) through the loop, as the grid builds it."""
    tc = cfg.train
    ls = [tc.label_smoothing] * len(members) if label_smoothing is None else label_smoothing
    hypers = [Hyper(lr, wd, l) for (lr, wd, _), l in zip(members, ls)]
    fields = trainer.schedule_fields(cfg, hypers, steps_per_epoch(len(data.train), tc.batch_size), epochs)
    plan = Plan(arch, [s for _, _, s in members], epochs=epochs, optimizers=fields["optimizers"],
                shared_data=shared_data, guard=True, stacked=True, compile=compile)
    backend = Backend.create(cfg, DEV)
    return train(plan, data, backend, pipeline(cfg, DEV), batch_size=tc.batch_size,
                 eval_batch_size=tc.eval_batch_size, progress=False, log=lambda s: None)


def _sequential(cfg, data, lr, wd, seed, epochs, label_smoothing=None):
    ls = cfg.train.label_smoothing if label_smoothing is None else label_smoothing
    c = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, seed=seed, epochs=epochs, label_smoothing=ls,
        optimizer=dataclasses.replace(cfg.train.optimizer, lr=lr, weight_decay=wd)))
    return trainer.fit(c, data, Backend.create(c, DEV), progress=False, log=lambda s: None)


@pytest.mark.parametrize("independent", [False, True])
@pytest.mark.parametrize(
    "precision, optimizer, steps, epochs, rtol, atol, check_params",
    [("fp64", "adam", 6, 2, 1e-7, 1e-9, True), ("fp32", "adam", 3, 1, 1e-4, 1e-5, False)],
)
def test_stack_equals_sequential_runs(tiny_config, independent, precision, optimizer, steps, epochs, rtol, atol,
                                      check_params):
    """Stacked vs one-by-one: every step's loss, the final params and BN state.

    Under vmap some kernels round differently from one model alone (the per-model rules of
    cifar100_func.runtime.batching make convolutions and batch norms the same kernels; reductions elsewhere, such as the
    loss, still differ in the last bit), and training a BN net amplifies that rounding about 3x per step (with Adam a near-zero gradient's sign decides a full lr-sized step), so after a
    few fp32 steps single weights differ by ~1e-4 absolute. Hence: fp32, 3 steps, every loss within rtol 1e-4;
    fp64, 2 epochs, every loss, weight and BN statistic within rtol 1e-7 (the maths is the same).
    """
    cfg, data, arch = _setup(tiny_config, {"train": {"precision": precision, "optimizer": {"name": optimizer},
                                                     "channels_last": True},  # both paths: the same conv kernels
                                           "dataset": {"synthetic": {"train_size": 100 + 32 * steps}}})
    seeds = [7 + i if independent else 7 for i in range(3)]
    members = [(lr, wd, s) for (lr, wd), s in zip(CONFIGS, seeds)]
    res = fit_stack(cfg, data, arch, members, epochs, shared_data=not independent)
    for j, ((lr, wd), seed) in enumerate(zip(CONFIGS, seeds)):
        seq = _sequential(cfg, data, lr, wd, seed, epochs)
        torch.testing.assert_close(res.step_losses[:, j], torch.tensor(seq.step_losses, dtype=res.step_losses.dtype),
                                   rtol=rtol, atol=atol)
        if not check_params:
            continue
        stacked = tree_leaves((unstack(res.params, j), unstack(res.state, j)))
        for a, b in zip(stacked, tree_leaves((seq.params, seq.state))):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol * 10)
        for m_stack, m_seq in zip(res.metrics[j], seq.metrics):
            assert m_stack["val_acc"] == pytest.approx(m_seq["val_acc"], abs=0.011)
            assert m_stack["val_loss"] == pytest.approx(m_seq["val_loss"], rel=1e-3)


def test_diverging_member_is_frozen_and_the_others_are_untouched(tiny_config):
    cfg, data, arch = _setup(tiny_config, {"train": {"optimizer": {"name": "sgd"}}})
    good = [(0.01, 0.0, 3), (0.02, 5e-4, 3)]
    bad = (90.0, 0.0, 3)
    sane = (0.05, 0.0, 3)
    with_bad = fit_stack(cfg, data, arch, [good[0], bad, good[1]], 2, shared_data=True)
    with_sane = fit_stack(cfg, data, arch, [good[0], sane, good[1]], 2, shared_data=True)
    assert with_bad.diverged_at[1] is not None and with_bad.diverged_at[0] is None and with_bad.diverged_at[2] is None
    assert with_bad.metrics[1][-1]["diverged"] and not with_bad.metrics[0][-1]["diverged"]
    for j in (0, 2):  # bit-identical to a stack whose middle member behaved
        assert torch.equal(with_bad.step_losses[:, j], with_sane.step_losses[:, j])
        for a, b in zip(tree_leaves(unstack(with_bad.params, j)), tree_leaves(unstack(with_sane.params, j))):
            assert torch.equal(a, b)
    # the frozen member keeps finite weights (its last good update)
    assert all(torch.isfinite(t).all() for t in tree_leaves(unstack(with_bad.params, 1)))


def test_max_stack_and_grouping_do_not_change_results(tiny_config):
    """fp64, so that only a real dependence on the stacking (not fp32 rounding of other kernels) could fail."""
    cfg, data, _ = _setup(tiny_config, {"hparams": {"lr": [0.001, 0.003, 0.01], "weight_decay": [0.0]},
                                        "train": {"precision": "fp64"},
                                        "dataset": {"synthetic": {"train_size": 228}}})
    points = grid_search.expand(cfg)
    rows_all = grid_search.run_grid(cfg, data, Backend.create(cfg, DEV), points, None, progress=False,
                                    log=lambda s: None)
    cfg2 = dataclasses.replace(cfg, grid=dataclasses.replace(cfg.grid, max_stack=2))
    rows_cut = grid_search.run_grid(cfg2, data, Backend.create(cfg2, DEV), points, None, progress=False,
                                    log=lambda s: None)
    for a, b in zip(rows_all, rows_cut):
        assert a["config"] == b["config"]
        assert a["final_val_acc"] == b["final_val_acc"]
        assert a["history"][-1]["train_loss"] == pytest.approx(b["history"][-1]["train_loss"], rel=1e-9)


@pytest.mark.parametrize("independent", [False, True])
def test_batching_formulations_agree(tiny_config, independent):
    """Per-model kernels (cifar100_func.runtime.batching) and vmap's grouped ones: the same training, fp64."""
    results = []
    for form in ("per_model", "grouped"):
        cfg, data, arch = _setup(tiny_config, {"train": {"precision": "fp64", "channels_last": True},
                                               "grid": {"batching": form, "executor": "vmap"}})
        members = [(lr, wd, 5 + i * independent) for i, (lr, wd) in enumerate(CONFIGS)]
        results.append(fit_stack(cfg, data, arch, members, 1, shared_data=not independent))
    a, b = results
    torch.testing.assert_close(a.step_losses, b.step_losses, rtol=1e-9, atol=1e-12)
    for x, y in zip(tree_leaves((a.params, a.state)), tree_leaves((b.params, b.state))):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)


def test_grid_command_outputs(run_cli, tiny_config, tmp_path):
    cfg = tiny_config({"hparams": {"lr": [0.003, 10.0], "weight_decay": [0.0, 5e-4], "blocks": [[1, 1, 1], [1, 1, 2]],
                                   "bottleneck_mid": [4]}, "grid": {"save_checkpoints": True}})
    code, out, err = run_cli("grid_search", "--config", str(cfg))
    assert code == 0, err
    d = tmp_path / "runs" / "grid_search"
    lines = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and {"config", "lr", "weight_decay", "blocks", "mid", "val_acc", "train_loss"} <= set(lines[0])
    rows = list(csv.DictReader((d / "results.csv").open()))
    assert len(rows) == 8 and sorted(int(r["rank"]) for r in rows) == list(range(1, 9))
    assert "best:" in out and "| rank |" in (d / "results.md").read_text()
    for name in ("grid_search_train.png", "grid_search_val.png", "grid_search_heatmap.png"):
        assert (d / name).read_bytes()[:4] == b"\x89PNG"
    assert len(list((d / "ckpt").glob("*.ckpt"))) == 8
    assert not (tmp_path / "artifacts" / "best.ckpt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "tiny.yaml"]  # no stray config files


def test_only_filter_and_errors(run_cli, tiny_config, tmp_path):
    cfg = tiny_config({"hparams": {"blocks": [[1, 1, 1], [1, 1, 2]]}})
    code, out, err = run_cli("grid_search", "--config", str(cfg), "--only", "model.blocks=[1,1,2]")
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "runs" / "grid_search" / "results.csv").open()))
    assert {r["blocks"] for r in rows} == {"1-1-2"} and len(rows) == 2
    code, _, err = run_cli("grid_search", "--config", str(cfg), "--only", "model.depth=3")
    assert code == 2 and "model.depth" in err
    code, _, err = run_cli("grid_search", "--config", str(cfg), "--only", "model.blocks=[9,9,9]")
    assert code == 2 and "matches none" in err


@pytest.mark.realdata
def test_full_grid_on_a_few_real_images(run_cli, real_root, tmp_path):
    code, out, err = run_cli(
        "grid_search", "--config", "configs/config.yaml", "--data-root", str(real_root),
        "--set", "dataset.max_train=128", "--set", "dataset.max_val=100", "--set", "grid.epochs=1",
        "--set", "train.compile=false", "--set", "hparams.seeds=1", "--set", f"paths.runs_dir={tmp_path}/runs")
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "runs" / "grid_search" / "results.csv").open()))
    assert len(rows) == 24
    assert {int(r["params"]) for r in rows} == {337_252, 244_516, 892_836, 611_492}


def test_bf16_stack_runs_and_matches_single_models_loosely(tiny_config):
    """bf16 autocast under vmap (mixed-dtype batch norm has no batching rule; the model normalises in fp32)."""
    cfg, data, arch = _setup(tiny_config, {"train": {"precision": "bf16"},
                                           "dataset": {"synthetic": {"train_size": 100 + 32 * 3}}})
    members = [(lr, wd, 5) for lr, wd in CONFIGS]
    res = fit_stack(cfg, data, arch, members, 1, shared_data=True)
    for j, (lr, wd) in enumerate(CONFIGS):
        seq = _sequential(cfg, data, lr, wd, 5, 1)
        torch.testing.assert_close(res.step_losses[:, j], torch.tensor(seq.step_losses, dtype=torch.float64),
                                   rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("grid_compile, train_compile, n_steps, expected", [
    (None, True, 250, True),  # 250 steps per stack: compiling pays
    (None, True, 50, False),  # 50 steps: it would not
    (None, False, 250, False),
    (True, False, 50, True),  # forced either way
    (False, True, 250, False),
])
def test_stacks_compile_only_when_it_pays(tiny_config, grid_compile, train_compile, n_steps, expected):
    """``grid.compile: null`` follows ``train.compile`` for runs of at least 200 steps; true/false force it; the
    grid marks its plans as grid stacks and the backend's compile policy decides."""
    cfg, data, _ = _setup(tiny_config, {"train": {"compile": train_compile, "channels_last": True},
                                        "grid": {"compile": grid_compile, "executor": "vmap"}})
    runner = Backend.create(cfg, DEV).runner(3, n_steps, grid=True)
    assert runner.compiled == expected
    # an eager stack on a CPU runs the per-model rules and channels-last batches; a compiled one vmap's own rules
    assert runner.per_model == (not expected) and runner.channels_last == (not expected)


@pytest.mark.parametrize("independent", [False, True])
def test_per_model_label_smoothing_in_a_stack_equals_sequential_runs(tiny_config, independent):
    """Label smoothing is a per-model tensor of the hyper-parameter table: a stack of different values (fp64)
    trains each member as a sequential run with that value in its config."""
    cfg, data, arch = _setup(tiny_config, {"train": {"precision": "fp64", "channels_last": True},
                                           "dataset": {"synthetic": {"train_size": 228}}})
    smoothing = [0.0, 0.1, 0.3]
    seeds = [5 + i * independent for i in range(3)]
    members = [(0.003, 5e-4, s) for s in seeds]
    res = fit_stack(cfg, data, arch, members, 1, shared_data=not independent, label_smoothing=smoothing)
    for j, (ls, seed) in enumerate(zip(smoothing, seeds)):
        seq = _sequential(cfg, data, 0.003, 5e-4, seed, 1, label_smoothing=ls)
        torch.testing.assert_close(res.step_losses[:, j], torch.tensor(seq.step_losses, dtype=torch.float64),
                                   rtol=1e-9, atol=1e-12)
