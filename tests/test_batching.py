"""The per-model batching rules for stacked convolutions and batch norms, against per-model runs without vmap."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from cifar100_func.batching import per_model_rules, uses_per_model

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
    with per_model_rules("cpu", "per_model", compiled):
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
    with per_model_rules("cpu", "per_model"):
        gp, _ = vmap(f, in_dims=(0, 0, None, None, None))(params, stats, x, 1, 1)
    for i in range(K):
        gp_i, _ = f([p[i] for p in params], [s[i] for s in stats], x, 1, 1)
        assert torch.equal(gp[0][i], gp_i[0])


def test_rules_are_removed_on_exit_and_only_installed_for_the_cpu():
    assert uses_per_model("cpu") and not uses_per_model("cuda") and uses_per_model("cuda", "per_model")
    assert not uses_per_model("cpu", "grouped") and not uses_per_model("cpu", compiled=True)
    assert uses_per_model("cpu", "per_model", compiled=True)
    with pytest.raises(ValueError, match="formulation"):
        uses_per_model("cpu", "fast")
    x, w = torch.randn(2, 3, 5, 5), torch.randn(K, 4, 3, 3, 3)
    inside_calls = []

    def conv(w):
        return F.conv2d(x, w, padding=1)

    with per_model_rules("cpu"):
        with per_model_rules("cpu"):  # nesting is harmless
            inside_calls.append(vmap(conv)(w))
        inside = vmap(conv)(w)
    outside = vmap(conv)(w)  # vmap's built-in rule again
    torch.testing.assert_close(inside, outside, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inside_calls[0], inside, rtol=0, atol=0)


def test_unstacked_running_statistics_with_stacked_activations_is_refused():
    x = torch.randn(K, 4, 3, 5, 5)
    rm, rv = torch.zeros(3), torch.ones(3)
    with per_model_rules("cpu", "per_model"), pytest.raises(RuntimeError):
        vmap(lambda x: F.batch_norm(x, rm, rv, None, None, True, 0.1, 1e-5))(x)


@pytest.mark.skipif(not os.environ.get("CIFAR100_COMPILE_TESTS"),
                    reason="compiles a stacked step (a minute or more on 2 cores); set CIFAR100_COMPILE_TESTS=1")
@pytest.mark.parametrize("formulation", ["per_model", "grouped"])
def test_compiled_stack_matches_the_eager_stack(formulation):
    """torch.compile of a stacked step with the rules (their functional form) traces, and trains as eagerly, to
    1e-9 in fp64 (in fp32 inductor's rounding alone moves weights by ~3e-3 in three steps of this tiny net). Three
    steps, so the step is compiled again for the strides of its own outputs, as in the grid."""
    precision = "fp64"
    from torch.utils._pytree import tree_leaves

    from cifar100_func import model
    from cifar100_func.optim import sgd
    from cifar100_func.stacked import init_stack, make_stacked_step
    from cifar100_func.step import make_train_step

    opt = sgd()
    step = make_stacked_step(make_train_step(opt, precision=precision), shared_data=True)
    compiled_step = torch.compile(step)  # no eager fallback: a tracing failure fails the test
    hp = {"lr": torch.tensor([0.01, 0.02, 0.03], dtype=torch.float64),
          "weight_decay": torch.tensor([0.0, 5e-4, 1e-3], dtype=torch.float64)}
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 3, 16, 16, generator=g).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (16,), generator=g)) for _ in range(3)]
    results = []
    for fn, is_compiled in ((step, False), (compiled_step, True)):
        P, S, O = init_stack(model.Arch((1, 1, 1), 4, 10), [0, 1, 2], opt, precision, "cpu")
        active = torch.ones(K, dtype=torch.bool)
        for x, y in batches:
            with per_model_rules("cpu", formulation, is_compiled):
                P, S, O, loss, _, active = fn(P, S, O, hp, x, y, active)
        results.append((loss, tree_leaves(P), tree_leaves(S)))
    (loss_e, p_e, s_e), (loss_c, p_c, s_c) = results
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-9, atol=1e-10)
    for a, b in zip(p_c + s_c, p_e + s_e):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
