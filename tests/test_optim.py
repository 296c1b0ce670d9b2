"""The functional optimisers against torch.optim, step by step on the same gradients; their hyper-parameters
live in their state (one value per model in a stack)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._pytree import tree_flatten, tree_map

from cifar100_func.core import optim
from cifar100_func.config import OptimizerConfig, TrainConfig
from cifar100_func.core.hyper import Hyper
from cifar100_func.runtime import recipe

RTOL, ATOL = 1e-5, 1e-6
STEPS = 10


def adam_count(state: optim.OptState) -> int | None:
    found = [s.count for s in state.inner if isinstance(s, optim.AdamState)]
    return int(found[0]) if found else None


def _tree(seed: int) -> dict:
    """A small nested tree of tensors of different shapes (dicts and a list)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {
        "conv": {"weight": r(4, 3, 3, 3), "bias": r(4)},
        "blocks": [{"w": r(5, 4)}, {"w": r(2, 5), "scale": r(())}],
        "fc": r(7),
    }


def _grads(like: dict, seed: int, step: int) -> dict:
    g = torch.Generator().manual_seed(seed * 1000 + step)
    return tree_map(lambda p: torch.randn(p.shape, generator=g) * 0.5, like)


def _torch_opt(name: str, params: list[torch.Tensor], lr: float, wd: float, betas, eps, momentum, nesterov):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=wd, foreach=False)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd, foreach=False)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd, foreach=False)


def _ours(name: str, lr: float, wd: float, betas=(0.9, 0.999), eps=1e-8, momentum=0.9,
          nesterov=True) -> optim.Optimizer:
    if name == "sgd":
        return optim.sgd(lr, wd, momentum, nesterov)
    return optim.adam(lr, wd, betas, eps, decoupled=name == "adamw")


def _run_against_torch(opt: optim.Optimizer, name: str, lr: float, wd: float, *, betas=(0.9, 0.999), eps=1e-8,
                       momentum=0.9, nesterov=True, seed=0) -> None:
    init = _tree(seed)
    leaves, spec = tree_flatten(init)
    ref_params = [p.clone().requires_grad_(True) for p in leaves]
    ref = _torch_opt(name, ref_params, lr, wd, betas, eps, momentum, nesterov)

    params = tree_map(torch.clone, init)
    state = opt.init(params)
    for step in range(1, STEPS + 1):
        grads = _grads(init, seed, step)
        for p, g in zip(ref_params, tree_flatten(grads)[0]):
            p.grad = g.clone()
        ref.step()
        params, state = opt.update(grads, state, params)
        got, got_spec = tree_flatten(params)
        assert got_spec == spec, "the update changed the tree's structure"
        for k, (a, b) in enumerate(zip(got, ref_params)):
            assert a.shape == b.shape and a.dtype == b.dtype
            torch.testing.assert_close(a, b.detach(), rtol=RTOL, atol=ATOL,
                                       msg=lambda m: f"{name} lr={lr} wd={wd} step {step} leaf {k}: {m}")
    # Adam's step counter and the optimiser's advanced; the state holds the values the last step used
    assert adam_count(state) == (STEPS if name != "sgd" else None)
    assert int(state.hyper.count) == STEPS
    assert float(optim.last_hyperparams(state)["lr"]) == pytest.approx(lr, rel=1e-7)
    assert float(optim.last_hyperparams(state)["weight_decay"]) == pytest.approx(wd, rel=1e-7)


@pytest.mark.parametrize("lr", [1e-3, 0.05])
@pytest.mark.parametrize("wd", [0.0, 5e-4, 0.1])
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_matches_torch_optim(name, lr, wd):
    _run_against_torch(_ours(name, lr, wd), name, lr, wd)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_other_betas_eps(name):
    betas, eps = (0.8, 0.95), 1e-6
    _run_against_torch(optim.adam(0.01, 0.01, betas, eps, decoupled=name == "adamw"), name, 0.01, 0.01, betas=betas,
                       eps=eps, seed=3)


@pytest.mark.parametrize("nesterov, momentum", [(False, 0.9), (True, 0.5), (False, 0.0)])
def test_sgd_variants(nesterov, momentum):
    _run_against_torch(optim.sgd(0.1, 1e-3, momentum, nesterov), "sgd", 0.1, 1e-3, momentum=momentum,
                       nesterov=nesterov, seed=4)


def _from_config(cfg: OptimizerConfig) -> optim.Optimizer:
    """The optimiser a config's ``train.optimizer`` (no scheduler) makes, through the one translation."""
    return recipe.optimizer(TrainConfig(optimizer=cfg), Hyper(cfg.lr, cfg.weight_decay), STEPS)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizer_from_config(name):
    cfg = OptimizerConfig(name=name, lr=0.02, weight_decay=0.01, betas=(0.85, 0.99), eps=1e-7, momentum=0.8,
                          nesterov=True)
    _run_against_torch(_from_config(cfg), name, cfg.lr, cfg.weight_decay, betas=cfg.betas, eps=cfg.eps,
                       momentum=cfg.momentum, nesterov=cfg.nesterov, seed=5)


def test_optimizer_from_config_sgd_without_nesterov():
    cfg = OptimizerConfig(name="sgd", lr=0.05, weight_decay=5e-4, momentum=0.9, nesterov=False)
    _run_against_torch(_from_config(cfg), "sgd", cfg.lr, cfg.weight_decay, momentum=0.9, nesterov=False, seed=6)


def test_update_does_not_modify_inputs():
    opt = optim.adam(0.1, 0.1)
    params = _tree(7)
    state = opt.init(params)
    state = state._replace(inner=tree_map(lambda t: t + 0.01 if t.dim() else t, state.inner))  # non-zero moments
    assert len(tree_flatten(state.inner)[0]) == 1 + 2 * len(tree_flatten(params)[0])  # count, mu, nu
    grads = _grads(params, 7, 1)
    before = [t.clone() for t in tree_flatten((params, state, grads))[0]]
    opt.update(grads, state, params)
    after = tree_flatten((params, state, grads))[0]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


# ---------------------------------------------------------------------------------------- vmap
LRS = [1e-3, 0.01, 0.05]
WDS = [0.0, 5e-4, 0.1]


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_vmapped_update_equals_separate_updates(name):
    opts = [_ours(name, lr, wd) for lr, wd in zip(LRS, WDS)]  # one per model, each its own lr and wd
    k = len(LRS)
    singles = [_tree(10 + i) for i in range(k)]
    stack = lambda trees: tree_map(lambda *ls: torch.stack(ls), *trees)  # noqa: E731
    params = stack(singles)

    states = [o.init(p) for o, p in zip(opts, singles)]
    state = stack(states)  # a stack's state: every leaf gets the leading axis K
    assert torch.equal(state.hyper.hyperparams["lr"], torch.tensor(LRS))
    update = torch.func.vmap(opts[0].update)  # the update reads the values from the state only
    for step in range(1, 6):
        grads_i = [_grads(singles[i], 20 + i, step) for i in range(k)]
        params, state = update(stack(grads_i), state, params)
        for i in range(k):
            singles[i], states[i] = opts[i].update(grads_i[i], states[i], singles[i])
        for i in range(k):
            got = tree_map(lambda t: t[i], params)
            for a, b in zip(tree_flatten(got)[0], tree_flatten(singles[i])[0]):
                torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
            got_state = tree_map(lambda t: t[i], state)
            for a, b in zip(tree_flatten(got_state)[0], tree_flatten(states[i])[0]):
                torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)

    # and the vmapped models track torch.optim, each with its own lr / wd
    for i in range(k):
        init = _tree(10 + i)
        ref_params = [p.clone().requires_grad_(True) for p in tree_flatten(init)[0]]
        ref = _torch_opt(name, ref_params, LRS[i], WDS[i], (0.9, 0.999), 1e-8, 0.9, True)
        for step in range(1, 6):
            for p, g in zip(ref_params, tree_flatten(_grads(init, 20 + i, step))[0]):
                p.grad = g
            ref.step()
        for a, b in zip(tree_flatten(tree_map(lambda t: t[i], params))[0], ref_params):
            torch.testing.assert_close(a, b.detach(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_first_step_known_answer(name):
    """After one step from zero moments, Adam moves each coordinate by lr * g / (|g| + eps), i.e. by lr.

    An independent oracle for the bias corrections: 1 - 0.999 must be computed accurately (torch.optim does it
    in float64 Python scalars), else every step is off by ~1e-5 relative.
    """
    lr, eps = 0.5, 1e-8
    g = torch.tensor([1.0, -2.0, 0.25, -0.125, 3.0])
    want = -lr * g / (g.abs() + eps)
    opt = optim.adam(lr, 0.0, (0.9, 0.999), eps, decoupled=name == "adamw")
    params = {"w": torch.zeros(5)}
    new, state = opt.update({"w": g}, opt.init(params), params)
    # the oracle itself agrees
    ref_p = torch.zeros(5, requires_grad=True)
    ref = _torch_opt(name, [ref_p], lr, 0.0, (0.9, 0.999), eps, 0.9, True)
    ref_p.grad = g.clone()
    ref.step()
    torch.testing.assert_close(ref_p.detach(), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(new["w"], want, rtol=1e-6, atol=0)
    assert adam_count(state) == 1
