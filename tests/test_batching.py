"""The per-model batching rules for stacked convolutions and batch norms, against per-model runs without vmap."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap
from torch.utils._pytree import tree_leaves

from cifar100_func.runtime.backend import Backend
from cifar100_func.core.precision import PRECISIONS
from cifar100_func.runtime.from_config import data_spec
from cifar100_func.runtime.batching import per_model_rules
from cifar100_func.config import load_config
from cifar100_func.errors import ConfigError

K = 3


def _layer(x, w, b, bn_w, bn_b, rm, rv, stride, padding):
    """conv -> batch norm (training, running statistics updated) -> relu, for one model."""
    y = F.conv2d(x, w, b, stride=stride, padding=padding)
    rm, rv = rm.clone(), rv.clone()
    y = F.batch_norm(y, rm, rv, bn_w, bn_b, True, 0.1, 1e-5)
    return F.relu(y), rm, rv


def _loss(params, stats, x, stride, padding):
    w, b, bn_w, bn_b = params
    y, rm, rv = _layer(x, w, b, bn_w, bn_b, *stats, stride, padding)
    return (y.sin() * torch.arange(y.numel(), dtype=y.dtype).view_as(y).cos()).sum(), (rm, rv)


def _params(cin, cout, k, dtype):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    params = [r(K, cout, cin, k, k) * 0.3, r(K, cout) * 0.1, 1 + 0.1 * r(K, cout), 0.1 * r(K, cout)]
    return params, [0.1 * r(K, cout), 1 + r(K, cout).abs()]


@pytest.mark.parametrize("compiled", [False, True], ids=["in-place", "functional"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared-batch", "batch-per-model"])
@pytest.mark.parametrize("cin,cout,k,stride,padding", [(4, 6, 1, 1, 0), (4, 6, 3, 2, 1), (6, 6, 3, 1, 1)])
def test_stacked_layer_gradients_and_statistics_equal_per_model_runs(shared, cin, cout, k, stride, padding,
                                                                     compiled):
    """Both forms of the rules (``compiled``: the functional form a compiled step traces, run eagerly here)."""
    dtype = torch.float64
    params, stats = _params(cin, cout, k, dtype)
    x = torch.randn(5, cin, 8, 8, dtype=dtype) if shared else torch.randn(K, 5, cin, 8, 8, dtype=dtype)
    f = grad(_loss, argnums=(0, 2), has_aux=True)
    with per_model_rules(True, functional=compiled):
        (gp, gx), (rm, rv) = vmap(f, in_dims=(0, 0, None if shared else 0, None, None))(params, stats, x, stride,
                                                                                        padding)
    for i in range(K):  # the reference: each model alone, no vmap
        (gp_i, gx_i), (rm_i, rv_i) = f([p[i] for p in params], [s[i] for s in stats], x if shared else x[i],
                                       stride, padding)
        for a, b in zip([t[i] for t in gp] + [gx[i], rm[i], rv[i]], [*gp_i, gx_i, rm_i, rv_i]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_stacked_rules_in_float32_are_the_sequential_kernels():
    """fp32, channels-last inputs: the weight gradients are the very numbers of per-model runs."""
    params, stats = _params(8, 8, 3, torch.float32)
    x = torch.randn(4, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    f = grad(_loss, has_aux=True)
    with per_model_rules(True):
        gp, _ = vmap(f, in_dims=(0, 0, None, None, None))(params, stats, x, 1, 1)
    for i in range(K):
        gp_i, _ = f([p[i] for p in params], [s[i] for s in stats], x, 1, 1)
        assert torch.equal(gp[0][i], gp_i[0])


def _backend(device: str, batching: str) -> Backend:
    return Backend(torch.device(device), PRECISIONS["fp32"], "", True, True, "default", batching,
                   executor="vmap")  # the rules are the vmap executor's


def test_the_backend_installs_the_rules_for_eager_stacks_on_the_cpu_only():
    def form(device, batching, k, compiled):
        e = _backend(device, batching).runner(k, 10, compiled)
        return e.per_model, e.channels_last

    assert form("cpu", "auto", 3, False) == (True, True)  # eager stack: per-model kernels, channels-last batches
    assert form("cpu", "auto", 3, True) == (False, False)  # compiled stack: vmap's grouped rules, NCHW
    assert form("cpu", "per_model", 3, True) == (True, True) and form("cpu", "grouped", 3, False) == (False, False)
    assert form("cpu", "auto", None, True) == (False, True)  # one model: no vmap, no rules, channels-last
    assert form("cuda", "auto", 3, False) == (False, False)  # CUDA: never the rules (cudnn_batch_norm)
    with pytest.raises(ConfigError, match="grid.batching"):
        Backend.create(load_config(None, ["grid.batching=per_model"]), torch.device("cuda"))


def test_rules_are_removed_on_exit():
    x, w = torch.randn(2, 3, 5, 5), torch.randn(K, 4, 3, 3, 3)
    inside_calls = []

    def conv(w):
        return F.conv2d(x, w, padding=1)

    with per_model_rules(True):
        with per_model_rules(True):  # nesting is harmless
            inside_calls.append(vmap(conv)(w))
        inside = vmap(conv)(w)
    outside = vmap(conv)(w)  # vmap's built-in rule again
    torch.testing.assert_close(inside, outside, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inside_calls[0], inside, rtol=0, atol=0)


def test_unstacked_running_statistics_with_stacked_activations_is_refused():
    x = torch.randn(K, 4, 3, 5, 5)
    rm, rv = torch.zeros(3), torch.ones(3)
    with per_model_rules(True), pytest.raises(RuntimeError):
        vmap(lambda x: F.batch_norm(x, rm, rv, None, None, True, 0.1, 1e-5))(x)


@pytest.mark.skipif(not os.environ.get("CIFAR100_COMPILE_TESTS"),
                    reason="compiles a stacked step (a minute or more on 2 cores); set CIFAR100_COMPILE_TESTS=1")
@pytest.mark.parametrize("formulation", ["per_model", "grouped"])
def test_compiled_stack_matches_the_eager_stack(tiny_config, formulation):
    """A compiled stack (the rules in their functional form when per_model) trains as the eager one, to 1e-9 in
    fp64 (in fp32 inductor's rounding alone moves weights by ~3e-3 in a few steps of this tiny net), and compiling
    did not fall back to eager. Several steps, so the step is compiled again for the strides of its own outputs."""
    from test_grid import fit_stack

    cfg = load_config(tiny_config({"train": {"precision": "fp64", "channels_last": True},
                                   "grid": {"batching": formulation},
                                   "dataset": {"synthetic": {"train_size": 100 + 32 * 3}}}))
    from cifar100_func.data.dataset import load_dataset
    from cifar100_func.runtime.trainer import arch_from

    data = load_dataset(data_spec(cfg))
    members = [(0.01, 0.0, 0), (0.02, 5e-4, 0), (0.03, 1e-3, 0)]
    eager, compiled = (fit_stack(cfg, data, arch_from(cfg, data.num_classes), members, 1, shared_data=True,
                                 compile=c) for c in (False, True))
    assert compiled.extra["compile_fallback"] is None and "compiled" in compiled.runner
    torch.testing.assert_close(compiled.step_losses, eager.step_losses, rtol=1e-9, atol=1e-10)
    for a, b in zip(tree_leaves((compiled.params, compiled.state)), tree_leaves((eager.params, eager.state))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
