"""The accuracy recipe's pieces against independent references: one-cycle momentum cycling and SGD against
torch.optim.SGD driven by OneCycleLR(cycle_momentum=True); weight decay without batch-norm parameters and biases
against torch.optim param groups; the final phase on plain images against the split's own pixels."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap
from torch.utils._pytree import tree_flatten, tree_map

from cifar100_func.core import optim
from cifar100_func.config import AugmentConfig, OptimizerConfig, PreprocessConfig, SchedulerConfig
from cifar100_func.data.dataset import Split
from cifar100_func.core.hparams import at_step
from cifar100_func.data.loader import Pipeline, epoch_order, train_batches
from cifar100_func.runtime.loop import Plan, _batches
from cifar100_func.core.model import Arch
from cifar100_func.core.schedules import make_schedule, momentum_table, schedule_table

from test_optim import _grads, _tree

STEPS = 40


def _reference(params: list[torch.Tensor], total: int, peak_lr: float, wd: float, decay_all: bool,
               pct: float = 0.25, base_m: float = 0.85, max_m: float = 0.95):
    groups = [{"params": [p for p in params if decay_all or p.ndim > 1], "weight_decay": wd},
              {"params": [p for p in params if not (decay_all or p.ndim > 1)], "weight_decay": 0.0}]
    opt = torch.optim.SGD([g for g in groups if g["params"]], lr=peak_lr, momentum=max_m, nesterov=True,
                          foreach=False)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak_lr, total_steps=total, pct_start=pct,
                                                base_momentum=base_m, max_momentum=max_m, cycle_momentum=True)
    return opt, sched


@pytest.mark.parametrize("decay_all", [True, False])
def test_sgd_with_cycled_momentum_and_masked_decay_matches_torch(decay_all):
    peak_lr, wd = 0.1, 5e-3
    init = _tree(7)
    leaves, _ = tree_flatten(init)
    ref_params = [p.clone().requires_grad_(True) for p in leaves]
    ref, ref_sched = _reference(ref_params, STEPS, peak_lr, wd, decay_all)

    cfg = SchedulerConfig(name="onecycle", cycle_momentum=True)
    lr_factor = schedule_table(make_schedule(cfg, STEPS), STEPS)
    momentum = momentum_table(cfg, STEPS)
    opt = optim.make_optimizer(OptimizerConfig(name="sgd", lr=peak_lr, weight_decay=wd, momentum=0.9,
                                               decay_norm_and_bias=decay_all))
    params = tree_map(torch.clone, init)
    state = opt.init(params)
    table = {"lr": torch.tensor(peak_lr), "weight_decay": torch.tensor(wd)}
    for step in range(STEPS):
        # the momentum torch uses at this step is the one its scheduler set after the previous step
        assert float(momentum[step]) == pytest.approx(ref.param_groups[0]["momentum"], abs=1e-6)
        grads = _grads(init, 7, step)
        for p, g in zip(ref_params, tree_flatten(grads)[0]):
            p.grad = g.clone()
        ref.step()
        ref_sched.step()
        params, state = opt.update(grads, state, params, at_step(table, lr_factor[step], momentum[step]))
    for k, (a, b) in enumerate(zip(tree_flatten(params)[0], ref_params)):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6, msg=lambda m: f"leaf {k}: {m}")


def test_masked_decay_leaves_vectors_alone():
    """Under vmap ``ndim`` is one model's: a stack of vectors is still exempt, a stack of matrices is decayed."""
    add = optim.add_decayed_weights(optim.matrices_only)
    params = [torch.ones(3, 4), torch.ones(3, 5, 2)]  # stacks of 3: vectors and matrices
    updates = [torch.zeros(3, 4), torch.zeros(3, 5, 2)]
    hp = {"weight_decay": torch.tensor([0.1, 0.2, 0.3])}
    out, _ = vmap(lambda u, p, h: add.update(u, optim.EmptyState(), p, h))(updates, params, hp)
    assert torch.equal(out[0], torch.zeros(3, 4))
    torch.testing.assert_close(out[1][:, 0, 0], torch.tensor([0.1, 0.2, 0.3]))


def test_cycled_momentum_in_a_stack_equals_separate_models():
    cfg = SchedulerConfig(name="onecycle", cycle_momentum=True)
    momentum = momentum_table(cfg, STEPS)
    opt = optim.sgd(0.9, True, decay_mask=optim.matrices_only)
    lrs, wds = [0.05, 0.2], [1e-3, 0.0]
    singles = []
    for lr, wd in zip(lrs, wds):
        p = tree_map(torch.clone, _tree(1))
        s = opt.init(p)
        for step in range(5):
            hp = at_step({"lr": torch.tensor(lr), "weight_decay": torch.tensor(wd)}, torch.tensor(1.0),
                         momentum[step])
            p, s = opt.update(_grads(p, 1, step), s, p, hp)
        singles.append(p)
    P = tree_map(lambda t: torch.stack([t, t.clone()]), _tree(1))
    S = vmap(opt.init)(P)
    for step in range(5):
        G = tree_map(lambda t: torch.stack([t, t]), _grads(_tree(1), 1, step))
        hp = at_step({"lr": torch.tensor(lrs), "weight_decay": torch.tensor(wds)}, torch.tensor(1.0), momentum[step])
        P, S = vmap(opt.update)(G, S, P, hp)
    for j, single in enumerate(singles):
        for a, b in zip(tree_flatten(P)[0], tree_flatten(single)[0]):
            torch.testing.assert_close(a[j], b, rtol=1e-6, atol=1e-7)


def test_momentum_table_only_when_cycling():
    assert momentum_table(SchedulerConfig(name="onecycle"), 10) is None
    m = momentum_table(SchedulerConfig(name="onecycle", cycle_momentum=True, base_momentum=0.8, max_momentum=0.9), 100)
    assert float(m[0]) == pytest.approx(0.9) and float(m.min()) == pytest.approx(0.8, abs=1e-6)
    assert float(m[-1]) == pytest.approx(0.9, abs=1e-6) and int(m.argmin()) == 24


def test_final_plain_epochs_see_the_images_unaugmented():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(40) % 10)
    pipe = Pipeline.create(PreprocessConfig(), AugmentConfig(), "cpu")
    plan = Plan(Arch((1, 1, 1), 4, 10), [3], [None], OptimizerConfig(), 3, torch.ones(30), plain_epochs=1)
    mean, std = torch.tensor(PreprocessConfig().mean), torch.tensor(PreprocessConfig().std)
    for epoch in range(3):
        x, y = next(iter(_batches(plan, split, pipe, 8, epoch, 0)))
        idx = epoch_order(40, 3, epoch)[:8]
        plain = (split.x[idx].float() / 255 - mean[:, None, None]) / std[:, None, None]
        assert torch.equal(y, split.y[idx])
        if epoch == 2:
            torch.testing.assert_close(x, plain)
        else:
            assert not torch.allclose(x, plain)
            torch.testing.assert_close(x, next(iter(train_batches(split, pipe, 8, 3, epoch)))[0])


def test_label_smoothing_as_a_grid_axis_reaches_the_final_run(tmp_path):
    import json

    from cifar100_func.config import load_config
    from cifar100_func.commands.grid_search import expand
    from cifar100_func.commands.study import final_config

    cfg = load_config(None, ["hparams.label_smoothing=[0.0,0.2]", "hparams.lr=[0.01]", "hparams.weight_decay=[0.0]",
                             "hparams.blocks=[[1,1,1]]", "hparams.bottleneck_mid=[4]", "train.label_smoothing=0.05"])
    points = expand(cfg)
    assert [p.name for p in points] == ["lr0.01_wd0_ls0_b1-1-1_m4", "lr0.01_wd0_ls0.2_b1-1-1_m4"]
    assert [p.hyper(cfg).label_smoothing for p in points] == [0.0, 0.2]
    without = expand(load_config(None, ["train.label_smoothing=0.05"]))
    assert "_ls" not in without[0].name and without[0].hyper(cfg).label_smoothing == 0.05
    (tmp_path / "grid_search").mkdir()
    rows = [{"rank": 2, "lr": 0.01, "weight_decay": 0.0, "label_smoothing": 0.0, "blocks": [1, 1, 1], "mid": 4},
            {"rank": 1, "lr": 0.01, "weight_decay": 0.0, "label_smoothing": 0.2, "blocks": [1, 1, 1], "mid": 4}]
    (tmp_path / "grid_search" / "results.json").write_text(json.dumps(rows))
    assert final_config(cfg, tmp_path).train.label_smoothing == 0.2


def test_grid_ranks_on_a_subset_and_overfit_keeps_the_spec_optimiser():
    from cifar100_func.config import load_config
    from cifar100_func.commands.grid_search import grid_data
    from cifar100_func.commands.overfit import overfit_config

    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "quick.yaml")
    assert grid_data(cfg).dataset.max_train == 10000 and cfg.dataset.max_train is None
    assert grid_data(load_config(None, ["grid.max_train=300", "dataset.max_train=200"])).dataset.max_train == 200
    o = overfit_config(cfg)
    assert o.train.optimizer.name == "adam" and o.train.optimizer.lr == 0.001 and o.dataset.max_val == 1000
    assert o.train.scheduler.name == "none" and o.train.label_smoothing == 0.0
