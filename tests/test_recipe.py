"""The accuracy recipe's pieces against independent references: one-cycle momentum cycling and SGD against
torch.optim.SGD driven by OneCycleLR(cycle_momentum=True), with every hyper-parameter in the optimiser's state;
the lr a run logs against OneCycleLR's ``get_last_lr()``; a stack of models with different lrs, weight decays,
momenta and label smoothing against its members trained alone; weight decay without batch-norm parameters and
biases against torch.optim param groups; the final phase on plain images against the split's own pixels."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap
from torch.utils._pytree import tree_flatten, tree_map

from cifar100_func.core import optim
from cifar100_func.config import OptimizerConfig, PreprocessConfig, SchedulerConfig, TrainConfig
from cifar100_func.core.augment import Augmentation
from cifar100_func.data.dataset import Split
from cifar100_func.core.hyper import Hyper, Scheduled
from cifar100_func.data.loader import Pipeline, epoch_order, train_batches
from cifar100_func.runtime.loop import Plan, _batches
from cifar100_func.core.model import Arch
from cifar100_func.core import schedules
from cifar100_func.runtime import recipe

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

    tc = TrainConfig(optimizer=OptimizerConfig(name="sgd", lr=peak_lr, weight_decay=wd, momentum=0.9,
                                               decay_norm_and_bias=decay_all),
                     scheduler=SchedulerConfig(name="onecycle", cycle_momentum=True))
    opt = recipe.optimizer(tc, Hyper(peak_lr, wd), STEPS)
    params = tree_map(torch.clone, init)
    state = opt.init(params)
    for step in range(STEPS):
        # the lr and momentum torch uses at this step are the ones its scheduler set after the previous step
        now = opt.hyperparams(state)
        assert float(now["momentum"]) == pytest.approx(ref.param_groups[0]["momentum"], abs=1e-6)
        assert float(now["lr"]) == pytest.approx(ref_sched.get_last_lr()[0], rel=1e-6)
        assert int(state.hyper.count) == step
        grads = _grads(init, 7, step)
        for p, g in zip(ref_params, tree_flatten(grads)[0]):
            p.grad = g.clone()
        used = ref_sched.get_last_lr()[0]
        ref.step()
        ref_sched.step()
        params, state = opt.update(grads, state, params)
        # what a log reports for this step: the lr it used, read from the state
        assert float(optim.last_hyperparams(state)["lr"]) == pytest.approx(used, rel=1e-6)
    for k, (a, b) in enumerate(zip(tree_flatten(params)[0], ref_params)):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6, msg=lambda m: f"leaf {k}: {m}")


def test_masked_decay_leaves_vectors_alone():
    """Under vmap ``ndim`` is one model's: a stack of vectors is still exempt, a stack of matrices is decayed."""
    params = [torch.ones(3, 4), torch.ones(3, 5, 2)]  # stacks of 3: vectors and matrices
    updates = [torch.zeros(3, 4), torch.zeros(3, 5, 2)]
    wd = torch.tensor([0.1, 0.2, 0.3])
    def decay(u, p, w):
        return optim.add_decayed_weights(w, optim.matrices_only).update(u, optim.EmptyState(), p)

    out, _ = vmap(decay)(updates, params, wd)
    assert torch.equal(out[0], torch.zeros(3, 4))
    torch.testing.assert_close(out[1][:, 0, 0], torch.tensor([0.1, 0.2, 0.3]))


def _cycle(total: int, lo: float = 0.85, hi: float = 0.95) -> Scheduled:
    return Scheduled(1.0, schedules.table(schedules.onecycle_momentum(total, 0.25, lo, hi), total))


def test_schedules_and_values_in_a_stack_equal_separate_models():
    """Each model its own peak lr, weight decay, momentum cycle and lr schedule: the states stack, one update."""
    lr_tables = [schedules.table(schedules.onecycle(STEPS), STEPS), schedules.table(schedules.cosine(STEPS), STEPS)]
    opts = [optim.sgd(Scheduled(0.05, lr_tables[0]), 1e-3, _cycle(STEPS), decay_mask=optim.matrices_only),
            optim.sgd(Scheduled(0.2, lr_tables[1]), 0.0, _cycle(STEPS, 0.8, 0.9), decay_mask=optim.matrices_only)]
    singles = []
    for opt in opts:
        p = tree_map(torch.clone, _tree(1))
        s = opt.init(p)
        for step in range(5):
            p, s = opt.update(_grads(p, 1, step), s, p)
        singles.append(p)
    P = tree_map(lambda t: torch.stack([t, t.clone()]), _tree(1))
    S = tree_map(lambda *ts: torch.stack(ts), *[o.init(_tree(1)) for o in opts])
    for step in range(5):
        G = tree_map(lambda t: torch.stack([t, t]), _grads(_tree(1), 1, step))
        P, S = vmap(opts[0].update)(G, S, P)
    for j, single in enumerate(singles):
        for a, b in zip(tree_flatten(P)[0], tree_flatten(single)[0]):
            torch.testing.assert_close(a[j], b, rtol=1e-6, atol=1e-7)
    assert S.hyper.count.tolist() == [5, 5] and S.hyper.tables["lr"].shape == (2, STEPS)


def test_momentum_cycles_only_when_asked():
    oc = OptimizerConfig(name="sgd", momentum=0.7)
    assert recipe.momentum(oc, SchedulerConfig(name="onecycle"), 10) == 0.7
    m = recipe.momentum(oc, SchedulerConfig(name="onecycle", cycle_momentum=True, base_momentum=0.8,
                                            max_momentum=0.9), 100)
    t = m.multipliers
    assert m.base == 1.0 and float(t[0]) == pytest.approx(0.9) and float(t.min()) == pytest.approx(0.8, abs=1e-6)
    assert float(t[-1]) == pytest.approx(0.9, abs=1e-6) and int(t.argmin()) == 24


def test_a_schedule_holds_its_last_value_after_its_end():
    opt = optim.sgd(Scheduled(0.1, torch.tensor([1.0, 0.5])), 0.0, 0.0)
    p = {"w": torch.zeros(2)}
    s = opt.init(p)
    for _ in range(4):
        p, s = opt.update({"w": torch.ones(2)}, s, p)
    torch.testing.assert_close(p["w"], -torch.tensor([0.1 + 0.05 + 0.05 + 0.05] * 2))


def test_final_plain_epochs_see_the_images_unaugmented():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(40) % 10)
    pipe = Pipeline.create(PreprocessConfig().mean, PreprocessConfig().std, Augmentation(), "cpu")
    plan = Plan(Arch((1, 1, 1), 4, 10), [3], [], 3, plain_epochs=1)
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
    winner = min(rows, key=lambda r: r["rank"])  # the study hands the grid's winner on as a value
    assert final_config(cfg, winner).train.label_smoothing == 0.2


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
    assert cfg.train.optimizer.norm_bias_lr_mult == 3.0 and o.train.optimizer.norm_bias_lr_mult == 1.0
    assert o.train.scheduler.name == "none" and o.train.label_smoothing == 0.0


# ------------------------------------------------------------------------------------- through the loop
def _loop_setup(tiny_config, extra: dict):
    from cifar100_func.config import load_config
    from cifar100_func.data.dataset import load_dataset
    from cifar100_func.runtime.backend import Backend
    from cifar100_func.runtime.from_config import data_spec
    from cifar100_func.runtime.trainer import arch_from

    cfg = load_config(tiny_config(extra))
    data = load_dataset(data_spec(cfg))
    return cfg, data, arch_from(cfg, data.num_classes), Backend.create(cfg, torch.device("cpu"))


def _run(cfg, data, backend, plan, hooks=None):
    from cifar100_func.runtime.from_config import pipeline
    from cifar100_func.runtime.loop import train

    return train(plan, data, backend, pipeline(cfg, "cpu"), batch_size=cfg.train.batch_size,
                 eval_batch_size=cfg.train.eval_batch_size, hooks=hooks, progress=False, log=lambda s: None)


def test_the_logged_lr_is_onecycles_get_last_lr(tiny_config):
    """Every step's lr as the loop logs it (read from the optimiser's state) and each epoch record's lr equal
    what OneCycleLR's ``get_last_lr()`` says for that step."""
    from cifar100_func.data.loader import steps_per_epoch
    from cifar100_func.runtime.loop import Hooks
    from cifar100_func.runtime.trainer import schedule_fields

    cfg, data, arch, backend = _loop_setup(tiny_config, {
        "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05},
                  "scheduler": {"name": "onecycle", "cycle_momentum": True, "warmup_pct": 0.3}},
        "dataset": {"synthetic": {"train_size": 100 + 32 * 4}}})
    steps = steps_per_epoch(len(data.train), cfg.train.batch_size)
    total = 2 * steps
    plan = Plan(arch, [cfg.train.seed], epochs=2, validate=False, compile=False,
                **schedule_fields(cfg, [recipe.hyper(cfg)], steps, 2))
    checks = []
    res = _run(cfg, data, backend, plan, Hooks(5, lambda c: checks.append(c.lrs.copy())))

    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=total, pct_start=0.3,
                                                cycle_momentum=True)
    want = []
    for _ in range(total):
        want.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    logged = checks[-1][:, 0]
    assert len(logged) == total
    torch.testing.assert_close(torch.tensor(logged), torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=0)
    for rec in res.metrics[0]:
        assert rec["lr"] == pytest.approx(want[int(rec["epoch"]) * steps - 1], rel=1e-6)


def test_a_stack_of_different_lrs_decays_momenta_and_smoothing_equals_its_members_alone(tiny_config):
    """fp64: K models, each its own peak lr, weight decay, momentum and label smoothing in its optimiser's state,
    trained as one vmapped stack, against each trained alone on the standard path."""
    import dataclasses

    from cifar100_func.data.loader import steps_per_epoch
    from torch.utils._pytree import tree_leaves

    cfg, data, arch, backend = _loop_setup(tiny_config, {
        "train": {"precision": "fp64", "channels_last": True, "optimizer": {"name": "sgd"},
                  "scheduler": {"name": "onecycle"}},
        "dataset": {"synthetic": {"train_size": 100 + 32 * 3}}})
    steps = steps_per_epoch(len(data.train), cfg.train.batch_size)
    members = [(0.01, 0.0, 0.9, 0.0), (0.05, 5e-4, 0.5, 0.1), (0.02, 1e-3, 0.0, 0.3)]
    opts = []
    for lr, wd, m, ls in members:
        opt = recipe.optimizer(cfg.train, Hyper(lr, wd, ls), steps)
        opts.append(dataclasses.replace(opt, hyper={**opt.hyper, "momentum": m}))
    stack = _run(cfg, data, backend, Plan(arch, [3] * 3, opts, 1, stacked=True, guard=True, validate=False,
                                          compile=False))
    for j, opt in enumerate(opts):
        alone = _run(cfg, data, backend, Plan(arch, [3], [opt], 1, validate=False, compile=False))
        torch.testing.assert_close(stack.step_losses[:, j], alone.step_losses[:, 0], rtol=1e-9, atol=1e-12)
        got = tree_leaves(tree_map(lambda t: t[j], (stack.params, stack.state, stack.opt_state)))
        for a, b in zip(got, tree_leaves((alone.params, alone.state, alone.opt_state))):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
        assert stack.metrics[j][-1]["lr"] == alone.metrics[0][-1]["lr"] == pytest.approx(opt.hyper["lr"].base
                                                                                          / 25 / 1e4, rel=1e-6)
