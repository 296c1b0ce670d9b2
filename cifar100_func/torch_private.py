"""Every private torch API the project uses, behind one small function each (``tests/test_torch_private.py``
fails naming the API when a torch upgrade removes or changes one).

Used here, and nowhere else in the package:

- ``torch._C._functorch.is_functorch_wrapped_tensor``: whether a tensor is inside a vmap/grad transform, where the
  fused ``torch._foreach_*`` kernels cannot run (:func:`inside_functorch`);
- ``torch.library.Library("aten", "IMPL")`` and its ``_destroy``: batching rules registered over aten's built-in
  ones and removed again (:func:`aten_override`);
- ``torch.cpu._is_avx512_bf16_supported`` and ``torch.cpu._is_amx_tile_supported``: native bf16 on a CPU
  (:func:`cpu_native_bf16`);
- ``torch._dynamo.config.recompile_limit``: how many compiled variants of one function are kept (benchmarks that
  compile one step in many variants, :func:`set_recompile_limit`).

Known and left where they are, because torch has no public equivalent: ``torch.utils._pytree`` (``tree_map``,
``tree_leaves``, ``tree_flatten``, ``tree_unflatten``, ``tree_structure``; torch 2.14 has no ``torch.utils.pytree``)
and the fused optimiser kernels ``torch._foreach_*`` in :mod:`cifar100_func.core.optim` (the kernels
``torch.optim`` itself runs). It sits at the package's top level because the core (the optimiser) and the runtime
(backend, batching rules) both use it. ``torch._dynamo.reset`` became the public ``torch.compiler.reset``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

CPU_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
PYTREE_FUNCTIONS = ("tree_map", "tree_leaves", "tree_flatten", "tree_unflatten", "tree_structure")
FOREACH_KERNELS = ("_foreach_add", "_foreach_mul", "_foreach_div", "_foreach_sqrt", "_foreach_lerp",
                   "_foreach_addcmul")


def inside_functorch(t: Tensor) -> bool:
    """Whether ``t`` is a functorch wrapper (a tensor seen inside ``vmap`` or ``grad``)."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles); a probe a torch lacks counts as no."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in CPU_BF16_PROBES)


@contextlib.contextmanager
def aten_override() -> Iterator[torch.library.Library]:
    """A library of implementations over aten's own, for the block; the built-in ones return on exit."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        yield lib
    finally:
        lib._destroy()


def set_recompile_limit(n: int) -> None:
    """Keep up to ``n`` compiled variants of one function (dynamo's default is 8)."""
    torch._dynamo.config.recompile_limit = n
