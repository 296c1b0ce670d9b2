"""Each private torch API of :mod:`cifar100_func.torch_private` still exists and still behaves as the project relies
on; a torch upgrade that removes or changes one fails here, naming it."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from cifar100_func import torch_private as tp


def _resolve(dotted: str):
    """The object at ``dotted`` (``torch._C._functorch.is_functorch_wrapped_tensor``), or a failure naming it."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, name in enumerate(parts[1:], start=1):
        if not hasattr(obj, name):
            try:
                obj = importlib.import_module(".".join(parts[: i + 1]))
                continue
            except ImportError:
                pytest.fail(f"torch {torch.__version__} has no {dotted} (missing: {name}); "
                            f"update cifar100_func/torch_private.py")
        obj = getattr(obj, name)
    return obj


PRIVATE = [
    "torch._C._functorch.is_functorch_wrapped_tensor",
    "torch.library.Library._destroy",
    "torch._dynamo.config.recompile_limit",
    *(f"torch.cpu.{name}" for name in tp.CPU_BF16_PROBES),
    *(f"torch.utils._pytree.{name}" for name in tp.PYTREE_FUNCTIONS),
    *(f"torch.{name}" for name in tp.FOREACH_KERNELS),
]


@pytest.mark.parametrize("dotted", PRIVATE)
def test_the_private_api_exists(dotted):
    _resolve(dotted)


def test_inside_functorch_tells_a_vmapped_tensor_from_a_plain_one():
    """``_fusable`` (core/optim.py) runs the fused kernels only when this is False."""
    x = torch.ones(3, 2)
    seen = []
    vmap(lambda t: seen.append(tp.inside_functorch(t)) or t)(x)
    grad(lambda t: seen.append(tp.inside_functorch(t)) or t.sum())(torch.ones(2))
    assert not tp.inside_functorch(x), "torch._C._functorch.is_functorch_wrapped_tensor: True on a plain tensor"
    assert seen == [True, True], "torch._C._functorch.is_functorch_wrapped_tensor: False inside vmap or grad"


def test_aten_override_installs_a_batching_rule_and_removes_it():
    """``torch.library.Library("aten", "IMPL")`` + ``register_vmap`` + ``_destroy``: the rule runs inside the block
    only (runtime/batching.py relies on both halves)."""
    calls = []

    def rule(info, in_dims, x):
        calls.append(in_dims)
        return torch.ops.aten.relu(x.movedim(in_dims[0], 0)), 0

    x = torch.randn(2, 3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with tp.aten_override() as lib:
            torch.library.register_vmap("aten::relu", rule, lib=lib)
            inside = vmap(F.relu)(x)
    after = vmap(F.relu)(x)
    assert calls == [(0,)], "torch.library.Library('aten', 'IMPL'): the registered batching rule did not run"
    assert torch.equal(inside, x.relu()) and torch.equal(after, x.relu())
    assert len(calls) == 1, "torch.library.Library._destroy: the batching rule stayed after the block"


def test_cpu_bf16_probe_answers_a_bool():
    assert isinstance(tp.cpu_native_bf16(), bool), "torch.cpu._is_avx512_bf16_supported/_is_amx_tile_supported"


def test_recompile_limit_is_a_setting():
    before = torch._dynamo.config.recompile_limit
    try:
        tp.set_recompile_limit(before + 1)
        assert torch._dynamo.config.recompile_limit == before + 1, "torch._dynamo.config.recompile_limit"
    finally:
        torch._dynamo.config.recompile_limit = before
