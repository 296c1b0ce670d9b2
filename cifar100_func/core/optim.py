"""Optimisers as small composable pure transforms, in the optax style.

A :class:`Transform` maps the gradients (a list of leaves, in ``tree_flatten`` order of the params) to updates:
``init(params) -> state`` and ``update(updates, state, params, hp) -> (updates, state)``, states are NamedTuples.
:func:`chain` composes them; :class:`Optimizer` wraps a chain for parameter trees and applies the updates.
Hyper-parameters that a stack varies per model (``lr``, ``weight_decay``) come in ``hp`` as tensors, so the same
update runs for K stacked models under ``torch.func.vmap`` with one value per model.

Eagerly on unbatched tensors the leaf loops are ``torch._foreach_*`` kernels (one launch for all leaves instead of
one per leaf); under ``vmap`` (no batching rules for them) and while ``torch.compile`` traces (inductor fuses the
loop itself) they are plain per-leaf ops. The maths equals ``torch.optim`` (tests compare them step by step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..config import OptimizerConfig

Leaves = list[Tensor]
Hparams = dict[str, Tensor]


class Transform(NamedTuple):
    """``init(params) -> state``; ``update(updates, state, params, hp) -> (updates, state)`` (lists of leaves)."""

    init: Callable[[Leaves], Any]
    update: Callable[[Leaves, Any, Leaves, Hparams], tuple[Leaves, Any]]


class EmptyState(NamedTuple):
    pass


class AdamState(NamedTuple):
    count: Tensor  # steps taken, a float tensor (one per model in a stack)
    mu: Leaves
    nu: Leaves


class TraceState(NamedTuple):
    trace: Leaves


# ------------------------------------------------------------------------------------- leaf-list maths
def _fusable(xs: Leaves) -> bool:
    """Whether ``torch._foreach_*`` can run over ``xs``: eager, and not inside a functorch transform."""
    if not xs or torch.compiler.is_compiling():
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(xs[0])


def _scale(xs: Leaves, s: Tensor | float) -> Leaves:
    return list(torch._foreach_mul(xs, s)) if _fusable(xs) else [x * s for x in xs]


def _axpy(xs: Leaves, ys: Leaves, a: Tensor | float) -> Leaves:
    """``x + a * y`` leaf by leaf."""
    if _fusable(xs):
        return list(torch._foreach_add(xs, torch._foreach_mul(ys, a)))
    return [x + a * y for x, y in zip(xs, ys)]


# ------------------------------------------------------------------------------------- transforms
def matrices_only(p: Tensor) -> bool:
    """The leaves weight decay applies to when batch-norm parameters and biases are exempt: convolution and linear
    weights (one model's view: under ``vmap`` ``ndim`` does not count the stack's dimension)."""
    return p.ndim > 1


def add_decayed_weights(mask: Callable[[Tensor], bool] | None = None) -> Transform:
    """``u + wd * p`` with ``wd = hp["weight_decay"]``: coupled L2 before a rescaling, decoupled decay after it;
    with ``mask``, only for the leaves it accepts (optax's ``masked``)."""

    def update(u: Leaves, state: EmptyState, params: Leaves, hp: Hparams) -> tuple[Leaves, EmptyState]:
        if mask is None:
            return _axpy(u, params, hp["weight_decay"]), state
        idx = [i for i, p in enumerate(params) if mask(p)]
        out = list(u)
        for i, d in zip(idx, _axpy([u[i] for i in idx], [params[i] for i in idx], hp["weight_decay"])):
            out[i] = d
        return out, state

    return Transform(lambda params: EmptyState(), update)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Transform:
    """Adam's direction ``m_hat / (sqrt(v_hat) + eps)`` (``torch.optim.Adam``'s arithmetic, bias corrections in
    float64 as there: ``1 - 0.999**t`` loses digits in float32)."""

    def init(params: Leaves) -> AdamState:
        count = torch.zeros((), device=params[0].device) if params else torch.zeros(())
        return AdamState(count, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params])

    def update(u: Leaves, state: AdamState, params: Leaves, hp: Hparams) -> tuple[Leaves, AdamState]:
        count = state.count + 1
        t = count.double()
        inv_bc1 = (1.0 / (1 - b1**t)).float()
        inv_bc2_sqrt = (1.0 / torch.sqrt(1 - b2**t)).float()
        if _fusable(u):
            mu = list(torch._foreach_lerp(state.mu, u, 1 - b1))
            nu = list(torch._foreach_addcmul(torch._foreach_mul(state.nu, b2), u, u, value=1 - b2))
            denom = torch._foreach_add(torch._foreach_mul(torch._foreach_sqrt(nu), inv_bc2_sqrt), eps)
            out = list(torch._foreach_mul(torch._foreach_div(mu, denom), inv_bc1))
        else:
            mu = [torch.lerp(m, g, 1 - b1) for m, g in zip(state.mu, u)]
            nu = [v * b2 + (1 - b2) * g * g for v, g in zip(state.nu, u)]
            out = [m / (torch.sqrt(v) * inv_bc2_sqrt + eps) * inv_bc1 for m, v in zip(mu, nu)]
        return out, AdamState(count, mu, nu)

    return Transform(init, update)


def scale_by_momentum(momentum: float = 0.9, nesterov: bool = True) -> Transform:
    """Heavy-ball or Nesterov momentum as ``torch.optim.SGD`` (dampening 0): ``b = momentum * b + u``; the
    momentum of the step is ``hp["momentum"]`` when the schedule cycles it, else ``momentum``."""

    def init(params: Leaves) -> TraceState:
        return TraceState([torch.zeros_like(p) for p in params])

    def update(u: Leaves, state: TraceState, params: Leaves, hp: Hparams) -> tuple[Leaves, TraceState]:
        momentum_ = hp.get("momentum", momentum)
        trace = _axpy(u, state.trace, momentum_)
        return (_axpy(u, trace, momentum_) if nesterov else trace), TraceState(trace)

    return Transform(init, update)


def scale_by_lr() -> Transform:
    """``-lr * u`` with ``lr = hp["lr"]`` (the schedule has already scaled it for this step)."""

    def update(u: Leaves, state: EmptyState, params: Leaves, hp: Hparams) -> tuple[Leaves, EmptyState]:
        return _scale(u, -hp["lr"]), state

    return Transform(lambda params: EmptyState(), update)


def chain(*transforms: Transform) -> Transform:
    """The transforms one after another; the state is the tuple of their states."""

    def init(params: Leaves) -> tuple:
        return tuple(t.init(params) for t in transforms)

    def update(u: Leaves, state: tuple, params: Leaves, hp: Hparams) -> tuple[Leaves, tuple]:
        new_state = []
        for t, s in zip(transforms, state):
            u, s = t.update(u, s, params, hp)
            new_state.append(s)
        return u, tuple(new_state)

    return Transform(init, update)


# ------------------------------------------------------------------------------------- on parameter trees
@dataclass(frozen=True)
class Optimizer:
    """A transform applied to parameter trees: ``update(grads, state, params, hp) -> (new_params, new_state)``."""

    transform: Transform

    def init(self, params: Any) -> Any:
        return self.transform.init(tree_flatten(params)[0])

    def update(self, grads: Any, state: Any, params: Any, hp: Hparams) -> tuple[Any, Any]:
        p, spec = tree_flatten(params)
        updates, state = self.transform.update(tree_flatten(grads)[0], state, p, hp)
        new = list(torch._foreach_add(p, updates)) if _fusable(p) else [a + b for a, b in zip(p, updates)]
        return tree_unflatten(new, spec), state


def adam(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *, decoupled: bool = False,
         decay_mask: Callable[[Tensor], bool] | None = None) -> Optimizer:
    """Adam with coupled L2 weight decay (``torch.optim.Adam``), or decoupled decay (``AdamW``)."""
    if decoupled:
        return Optimizer(chain(scale_by_adam(*betas, eps), add_decayed_weights(decay_mask), scale_by_lr()))
    return Optimizer(chain(add_decayed_weights(decay_mask), scale_by_adam(*betas, eps), scale_by_lr()))


def sgd(momentum: float = 0.9, nesterov: bool = True, *,
        decay_mask: Callable[[Tensor], bool] | None = None) -> Optimizer:
    """SGD with (Nesterov) momentum and coupled L2 weight decay (``torch.optim.SGD``, dampening 0)."""
    return Optimizer(chain(add_decayed_weights(decay_mask), scale_by_momentum(momentum, nesterov), scale_by_lr()))


def make_optimizer(cfg: OptimizerConfig) -> Optimizer:
    mask = None if cfg.decay_norm_and_bias else matrices_only
    if cfg.name == "sgd":
        return sgd(cfg.momentum, cfg.nesterov, decay_mask=mask)
    return adam(cfg.betas, cfg.eps, decoupled=cfg.name == "adamw", decay_mask=mask)

