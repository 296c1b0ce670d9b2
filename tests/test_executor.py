"""The two stack executors (runtime/executor.py): one vmapped step over the stack, and the standard path's one-model
step over each member in turn, train the same (fp64, 1e-9): params, BN state, optimiser state, losses, metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils._pytree import tree_leaves

from cifar100_func.config import load_config
from cifar100_func.core.hyper import Hyper, Scheduled
from cifar100_func.core.optim import sgd
from cifar100_func.data.dataset import load_dataset
from cifar100_func.data.loader import steps_per_epoch
from cifar100_func.grid.run import GridRun, Member, Stack
from cifar100_func.runtime import trainer
from cifar100_func.runtime.backend import Backend, resolve_executor
from cifar100_func.runtime.from_config import data_spec, pipeline
from cifar100_func.runtime.loop import Hooks, Plan, evaluate, init_trees, make_eval, train

DEV = torch.device("cpu")
EXECUTORS = ("vmap", "sequential")
TIMING = {"seconds", "train_seconds", "images_per_sec", "runner"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny steps: one thread is faster, and immune to the other processes sharing the machine's cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _setup(tiny_config, executor, extra=None):
    extra = extra or {}
    cfg = load_config(tiny_config({**extra, "train": {"precision": "fp64", "channels_last": True,
                                                      **extra.get("train", {})},
                                   "grid": {"executor": executor, **extra.get("grid", {})}}))
    return cfg, load_dataset(data_spec(cfg))


def _train(cfg, data, members, epochs=1, *, shared_data=True, ensemble=False, compile=False, stacked=True,
           optimizers=None):
    """A stack of ``members`` ((lr, wd, label smoothing, seed) each) through the loop, as the grid builds it (or
    with ``optimizers`` of its own); the ensemble's validation metrics of every epoch in
    ``res.extra["ensembles"]``."""
    tc = cfg.train
    hypers = [Hyper(lr, wd, ls) for lr, wd, ls, _ in members]
    fields = trainer.schedule_fields(cfg, hypers, steps_per_epoch(len(data.train), tc.batch_size), epochs)
    if optimizers is not None:
        fields["optimizers"] = optimizers
    plan = Plan(trainer.arch_from(cfg, data.num_classes), [s for *_, s in members], epochs=epochs, **fields,
                shared_data=shared_data, guard=True, stacked=stacked, compile=compile, ensemble=ensemble)
    ensembles = []
    res = train(plan, data, Backend.create(cfg, DEV), pipeline(cfg, DEV), batch_size=tc.batch_size,
                eval_batch_size=tc.eval_batch_size, hooks=Hooks(on_epoch=lambda e: ensembles.append(e.ensemble)),
                progress=False, log=lambda s: None)
    res.extra["ensembles"] = ensembles
    return res


def _close(a, b):
    """Two metrics values (numbers, lists, dicts) equal within 1e-9 (NaN equal to NaN)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _close(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y)
    elif isinstance(a, float) and not math.isfinite(a):
        assert isinstance(b, float) and (a == b or (math.isnan(a) and math.isnan(b)))
    elif isinstance(a, (bool, str)) or a is None:
        assert a == b
    else:
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


def _same_run(a, b):
    """Two loop results of the two executors: the same training."""
    torch.testing.assert_close(a.step_losses, b.step_losses, rtol=1e-9, atol=1e-12, equal_nan=True)
    for x, y in zip(tree_leaves((a.params, a.state, a.opt_state)), tree_leaves((b.params, b.state, b.opt_state)),
                    strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)
    assert torch.equal(a.active, b.active) and a.diverged_at == b.diverged_at
    _close([[{k: v for k, v in r.items() if k not in TIMING} for r in m] for m in a.metrics],
           [[{k: v for k, v in r.items() if k not in TIMING} for r in m] for m in b.metrics])
    _close(a.extra["ensembles"], b.extra["ensembles"])


def _both(tiny_config, extra, members, **kw):
    out = {}
    for ex in EXECUTORS:
        cfg, data = _setup(tiny_config, ex, extra)
        out[ex] = _train(cfg, data, members, **kw)
        assert f"{ex} executor" in out[ex].runner
    return out["vmap"], out["sequential"]


def test_a_frozen_diverged_member(tiny_config):
    """The middle member's lr schedule jumps to inf at step 3: its new weights are not finite, so from there on it
    is frozen at its weights after step 2 (a member that blows up gradually is chaotic: BN over huge activations
    rounds differently in any two kernels, so that would not be a test of the executors), the others go on."""
    extra = {"train": {"optimizer": {"name": "sgd"}}, "dataset": {"synthetic": {"train_size": 100 + 32 * 4}}}
    ones = torch.ones(8)
    jump = ones.clone()
    jump[2:] = math.inf
    opts = [sgd(Scheduled(0.01, table), 0.0, 0.9, loss={"label_smoothing": 0.0}) for table in (ones, jump, ones)]
    a, b = _both(tiny_config, extra, [(0.01, 0.0, 0.0, 3)] * 3, epochs=2, optimizers=opts)
    assert b.diverged_at == [None, 3, None] and b.active.tolist() == [True, False, True]
    assert b.metrics[1][-1]["diverged"] and torch.isnan(b.step_losses[2:, 1]).all()
    assert all(torch.isfinite(t).all() for t in tree_leaves(b.params))
    _same_run(a, b)


def test_per_model_label_smoothing(tiny_config):
    extra = {"dataset": {"synthetic": {"train_size": 100 + 32 * 3}}}
    _same_run(*_both(tiny_config, extra, [(0.003, 5e-4, ls, 5) for ls in (0.0, 0.1, 0.3)]))


def test_seeds_as_an_axis_with_own_data_streams_and_the_ensemble(tiny_config):
    """Configurations x seeds (member seeds 42, 43, 42, 43), each member its own batch order and augmentation
    (batch j of the stacked batches), the ensemble of the stack validated each epoch."""
    extra = {"dataset": {"synthetic": {"train_size": 100 + 32 * 3}}}
    members = [(lr, 0.0, 0.0, seed) for lr in (0.003, 0.01) for seed in (42, 43)]
    a, b = _both(tiny_config, extra, members, epochs=2, shared_data=False, ensemble=True)
    assert len(b.extra["ensembles"]) == 2 and set(b.extra["ensembles"][0]) == {"loss", "acc", "top5_acc"}
    _same_run(a, b)


def test_a_halving_grid_prunes_alike(tiny_config):
    """Successive halving in one stack: 6 configurations, the best 2 after half an epoch go on as a stack of
    two (sliced from the six); every member's losses, metrics, rung accuracies and the survivors' trees agree."""
    extra = {"dataset": {"synthetic": {"train_size": 100 + 32 * 4}},
             "grid": {"epochs": 1, "schedule": "halving", "halving": {"min_epochs": 0.5, "eta": 3}}}
    lrs = [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]
    out = {}
    for ex in EXECUTORS:
        cfg, data = _setup(tiny_config, ex, extra)
        members = [Member(f"lr{lr}", Hyper(lr, 0.0, 0.0), 7) for lr in lrs]
        stack = Stack(1, trainer.arch_from(cfg, data.num_classes), members, list(range(len(members))))
        out[ex] = GridRun(cfg, data, Backend.create(cfg, DEV), [stack], None, progress=False,
                          log=lambda s: None).run()[0]
    a, b = out["vmap"], out["sequential"]
    assert len(b.running) == 2 and a.running == b.running and a.pruned_at == b.pruned_at
    _close((a.step_losses, a.rung_val_acc, a.diverged_at), (b.step_losses, b.rung_val_acc, b.diverged_at))
    _close([[{k: v for k, v in r.items() if k not in TIMING} for r in m] for m in a.metrics],
           [[{k: v for k, v in r.items() if k not in TIMING} for r in m] for m in b.metrics])
    assert tree_leaves(a.trees)[0].shape[0] == 2
    for x, y in zip(tree_leaves(a.trees), tree_leaves(b.trees), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)


def test_evaluation_member_by_member_equals_vmapped(tiny_config):
    """``evaluate`` of a stack (the evaluate command's route): the same dict, K values, the ensemble and the
    predictions, whichever executor's evaluation step runs it."""
    out = {}
    for ex in EXECUTORS:
        cfg, data = _setup(tiny_config, ex)
        backend = Backend.create(cfg, DEV)
        opt = trainer.schedule_fields(cfg, [Hyper(0.01, 0.0)] * 3, 1, 1)["optimizers"]
        plan = Plan(trainer.arch_from(cfg, data.num_classes), [1, 2, 3], opt, 1, stacked=True)
        P, S, _ = init_trees(plan, backend.precision, DEV)
        runner = backend.runner(3, 0)
        assert runner.sequential == (ex == "sequential") and not runner.compiled
        out[ex] = evaluate(make_eval(backend, runner, stacked=True), runner.params(P), S, data.val,
                           pipeline(cfg, DEV), 64, runner, keep_predictions=True, ensemble=True)
    a, b = out["vmap"], out["sequential"]
    assert torch.equal(a.pop("predictions"), b.pop("predictions"))
    assert torch.equal(a["ensemble"].pop("predictions"), b["ensemble"].pop("predictions"))
    assert len(b["acc"]) == 3
    _close(a, b)


def test_one_compiled_graph_serves_every_member(tiny_config, monkeypatch):
    """Compiled (dynamo with its eager backend, so that the test does not wait for inductor): a sequential stack
    of three members with their own data compiles no more graphs than one model on the standard path."""
    original = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **kw: original(fn, backend="eager"))
    cfg, data = _setup(tiny_config, "sequential", {"dataset": {"synthetic": {"train_size": 100 + 32 * 3}},
                                                   "train": {"precision": "fp32"}})
    graphs = []
    for members, stacked in (([(0.01, 0.0, 0.0, 42)], False),
                             ([(0.01, 0.0, 0.0, 42), (0.03, 5e-4, 0.1, 43), (0.01, 0.0, 0.0, 42)], True)):
        counters.clear()
        res = _train(cfg, data, members, shared_data=not stacked, compile=True, stacked=stacked)
        assert "compiled" in res.runner and not res.extra["compile_fallback"]
        graphs.append(counters["stats"]["unique_graphs"])
        if stacked:  # members 0 and 2: the same seed and hyper-parameters, so the same training
            torch.testing.assert_close(res.step_losses[:, 0], res.step_losses[:, 2], rtol=0, atol=0)
    assert graphs[0] >= 1 and graphs[1] == graphs[0]


def test_the_backend_resolves_the_executor_and_says_why(tiny_config):
    assert resolve_executor("auto", torch.device("cuda")) == ("vmap", "grid.executor auto: vmap on CUDA")
    assert resolve_executor("auto", DEV)[0] == "sequential" and resolve_executor("vmap", DEV)[0] == "vmap"
    cfg = load_config(None, ["train.compile=true", "train.channels_last=true"])
    backend = Backend.create(cfg, DEV)
    assert "stacks: sequential executor (grid.executor auto: sequential on a CPU)" in backend.header()
    # the standard path's rule: train.compile and >= 200 steps; evaluation eager; one-model kernels, channels-last
    long, short = backend.runner(3, 250), backend.runner(3, 50)
    assert long.sequential and long.choice.compiled and not long.evaluation.compiled
    assert not short.choice.compiled and "50 steps < 200" in short.describe()
    assert not long.per_model and long.channels_last and "sequential executor (grid.executor auto" in long.describe()
    grid = Backend.create(load_config(None, ["grid.compile=true"]), DEV).runner(3, 10, grid=True)
    assert grid.choice.compiled and "grid.compile true" in grid.describe()
    vmap = backend.runner(3, 250, executor="vmap")
    assert not vmap.sequential and "vmap executor (grid.executor vmap" in vmap.describe()
    assert backend.runner(None, 250).executor is None  # one model: no executor
