"""Optimisers as small composable pure transforms, in the optax style.

A :class:`Transform` maps the gradients (a list of leaves, in ``tree_flatten`` order of the params) to updates:
``init(params) -> state`` and ``update(updates, state, params) -> (updates, state)``, states are NamedTuples.
:func:`chain` composes them. An :class:`Optimizer` is ``optax.inject_hyperparams`` on parameter trees: its
hyper-parameters (lr, weight decay, momentum, and the loss's label smoothing), constants or schedules, live in its
state (:mod:`.hyper`) with the step count, and each step builds the chain from the values of that step, so
``update(grads, state, params) -> (new_params, state)`` needs nothing else. K models with different values are K
states stacked: the same update runs under ``torch.func.vmap`` with one value per model.

An Optimizer may also keep an exponential moving average of the weights (:class:`Averaging`; optionally of the
model's batch-norm statistics too) in its state, updated after each step as ``torch.optim.swa_utils.AveragedModel``
with an EMA ``multi_avg_fn``; :func:`averaged` reads it out.

Eagerly on unbatched tensors the leaf loops are ``torch._foreach_*`` kernels (one launch for all leaves instead of
one per leaf); under ``vmap`` (no batching rules for them) and while ``torch.compile`` traces (inductor fuses the
loop itself) they are plain per-leaf ops. The maths equals ``torch.optim`` (tests compare them step by step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from . import hyper as hp
from ..torch_private import inside_functorch
from .hyper import Value

Leaves = list[Tensor]
Scalar = Tensor | float


class Transform(NamedTuple):
    """``init(params) -> state``; ``update(updates, state, params) -> (updates, state)`` (lists of leaves)."""

    init: Callable[[Leaves], Any]
    update: Callable[[Leaves, Any, Leaves], tuple[Leaves, Any]]


class EmptyState(NamedTuple):
    pass


class AdamState(NamedTuple):
    count: Tensor  # steps taken, a float tensor (one per model in a stack)
    mu: Leaves
    nu: Leaves


class TraceState(NamedTuple):
    trace: Leaves


class OptState(NamedTuple):
    hyper: hp.HyperState  # the step count and every hyper-parameter of the model
    inner: Any  # the chain's state (with averaging: an :class:`Averaged`)


class AverageState(NamedTuple):
    count: Tensor  # int64: updates averaged so far
    params: Any  # the average of the parameters (a tree like them)
    model_state: Any  # the average of the model state (batch-norm statistics), or () (no leaves: None would be one)


class Averaged(NamedTuple):
    """The inner state of an Optimizer with averaging: the chain's state and the average."""

    chain: Any
    average: AverageState


# ------------------------------------------------------------------------------------- leaf-list maths
def _fusable(xs: Leaves) -> bool:
    """Whether ``torch._foreach_*`` can run over ``xs``: eager, and not inside a functorch transform."""
    if not xs or torch.compiler.is_compiling():
        return False
    return not inside_functorch(xs[0])


def _scale(xs: Leaves, s: Scalar) -> Leaves:
    return list(torch._foreach_mul(xs, s)) if _fusable(xs) else [x * s for x in xs]


def _axpy(xs: Leaves, ys: Leaves, a: Scalar) -> Leaves:
    """``x + a * y`` leaf by leaf."""
    if _fusable(xs):
        return list(torch._foreach_add(xs, torch._foreach_mul(ys, a)))
    return [x + a * y for x, y in zip(xs, ys)]


# ------------------------------------------------------------------------------------- transforms
def matrices_only(p: Tensor) -> bool:
    """The leaves weight decay applies to when batch-norm parameters and biases are exempt: convolution and linear
    weights (one model's view: under ``vmap`` ``ndim`` does not count the stack's dimension)."""
    return p.ndim > 1


def add_decayed_weights(weight_decay: Scalar, mask: Callable[[Tensor], bool] | None = None) -> Transform:
    """``u + weight_decay * p``: coupled L2 before a rescaling, decoupled decay after it; with ``mask``, only for
    the leaves it accepts (optax's ``masked``)."""

    def update(u: Leaves, state: EmptyState, params: Leaves) -> tuple[Leaves, EmptyState]:
        if mask is None:
            return _axpy(u, params, weight_decay), state
        idx = [i for i, p in enumerate(params) if mask(p)]
        out = list(u)
        for i, d in zip(idx, _axpy([u[i] for i in idx], [params[i] for i in idx], weight_decay)):
            out[i] = d
        return out, state

    return Transform(lambda params: EmptyState(), update)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Transform:
    """Adam's direction ``m_hat / (sqrt(v_hat) + eps)`` (``torch.optim.Adam``'s arithmetic, bias corrections in
    float64 as there: ``1 - 0.999**t`` loses digits in float32)."""

    def init(params: Leaves) -> AdamState:
        count = torch.zeros((), device=params[0].device) if params else torch.zeros(())
        return AdamState(count, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params])

    def update(u: Leaves, state: AdamState, params: Leaves) -> tuple[Leaves, AdamState]:
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


def scale_by_momentum(momentum: Scalar = 0.9, nesterov: bool = True) -> Transform:
    """Heavy-ball or Nesterov momentum as ``torch.optim.SGD`` (dampening 0): ``b = momentum * b + u``."""

    def init(params: Leaves) -> TraceState:
        return TraceState([torch.zeros_like(p) for p in params])

    def update(u: Leaves, state: TraceState, params: Leaves) -> tuple[Leaves, TraceState]:
        trace = _axpy(u, state.trace, momentum)
        return (_axpy(u, trace, momentum) if nesterov else trace), TraceState(trace)

    return Transform(init, update)


def scale_by_lr(lr: Scalar) -> Transform:
    """``-lr * u``."""

    def update(u: Leaves, state: EmptyState, params: Leaves) -> tuple[Leaves, EmptyState]:
        return _scale(u, -lr), state

    return Transform(lambda params: EmptyState(), update)


def scale_masked(factor: float, mask: Callable[[Tensor], bool]) -> Transform:
    """``factor * u`` for the leaves ``mask`` accepts, the others unchanged: before :func:`scale_by_lr`, an lr
    multiplier for one group of parameters (``torch.optim``'s second param group with ``lr * factor``)."""

    def update(u: Leaves, state: EmptyState, params: Leaves) -> tuple[Leaves, EmptyState]:
        return [x * factor if mask(p) else x for x, p in zip(u, params)], state

    return Transform(lambda params: EmptyState(), update)


def norm_or_bias(p: Tensor) -> bool:
    """Batch-norm weights and biases, and the classifier's bias: the leaves that are not matrices."""
    return not matrices_only(p)


def chain(*transforms: Transform) -> Transform:
    """The transforms one after another; the state is the tuple of their states."""

    def init(params: Leaves) -> tuple:
        return tuple(t.init(params) for t in transforms)

    def update(u: Leaves, state: tuple, params: Leaves) -> tuple[Leaves, tuple]:
        new_state = []
        for t, s in zip(transforms, state):
            u, s = t.update(u, s, params)
            new_state.append(s)
        return u, tuple(new_state)

    return Transform(init, update)


def _lr(lr: Scalar, norm_bias_lr_mult: float) -> tuple[Transform, ...]:
    """``-lr * u``, and ``norm_bias_lr_mult`` times that for batch-norm parameters and biases (1: one group)."""
    if norm_bias_lr_mult == 1.0:
        return (scale_by_lr(lr),)
    return scale_masked(norm_bias_lr_mult, norm_or_bias), scale_by_lr(lr)


def adam_chain(lr: Scalar, weight_decay: Scalar, *, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
               decoupled: bool = False, decay_mask: Callable[[Tensor], bool] | None = None,
               norm_bias_lr_mult: float = 1.0) -> Transform:
    """Adam with coupled L2 weight decay (``torch.optim.Adam``), or decoupled decay (``AdamW``)."""
    decay = add_decayed_weights(weight_decay, decay_mask)
    if decoupled:
        return chain(scale_by_adam(*betas, eps), decay, *_lr(lr, norm_bias_lr_mult))
    return chain(decay, scale_by_adam(*betas, eps), *_lr(lr, norm_bias_lr_mult))


def sgd_chain(lr: Scalar, weight_decay: Scalar, momentum: Scalar, *, nesterov: bool = True,
              decay_mask: Callable[[Tensor], bool] | None = None, norm_bias_lr_mult: float = 1.0) -> Transform:
    """SGD with (Nesterov) momentum and coupled L2 weight decay (``torch.optim.SGD``, dampening 0)."""
    return chain(add_decayed_weights(weight_decay, decay_mask), scale_by_momentum(momentum, nesterov),
                 *_lr(lr, norm_bias_lr_mult))


# ------------------------------------------------------------------------------------- weight averaging
@dataclass(frozen=True)
class Averaging:
    """An exponential moving average of the weights after every step: the first update copies them, then
    ``avg = decay_t * avg + (1 - decay_t) * new`` with ``decay_t = decay``, or with ``warmup``
    ``min(decay, (1 + t) / (10 + t))``, ``t`` the updates averaged before this one (TensorFlow's
    ``ExponentialMovingAverage(num_updates=t)``). ``model_state``: the model's batch-norm statistics too (their
    floating-point leaves; the others, batch counts, are the latest)."""

    decay: float
    warmup: bool = False
    model_state: bool = False


def _average_init(params: Any, model_state: Any, avg: Averaging) -> AverageState:
    if avg.model_state and model_state is None:
        raise ValueError("averaging the model state needs it: Optimizer.init(params, model_state)")
    copy = lambda tree: tree_map(lambda t: t.detach().clone(), tree)  # noqa: E731
    device = tree_flatten(params)[0][0].device
    return AverageState(torch.zeros((), dtype=torch.int64, device=device), copy(params),
                        copy(model_state) if avg.model_state else ())


def _average_update(state: AverageState, params: Any, model_state: Any, avg: Averaging) -> AverageState:
    t = state.count.double()
    decay = torch.minimum(torch.full_like(t, avg.decay), (1 + t) / (10 + t)) if avg.warmup else avg.decay
    weight = torch.where(state.count == 0, torch.ones_like(t), 1 - decay)  # the first update copies

    def lerp(a: Tensor, b: Tensor) -> Tensor:
        if not a.is_floating_point():
            return b
        return torch.lerp(a, b.detach().to(a.dtype), weight.to(a.dtype))

    ms: Any = ()
    if avg.model_state:
        if model_state is None:
            raise ValueError("averaging the model state needs it: Optimizer.update(..., model_state=...)")
        ms = tree_map(lerp, state.model_state, model_state)
    return AverageState(state.count + 1, tree_map(lerp, state.params, params), ms)


def averaged(opt_state: Any) -> Any:
    """The averaged parameters kept in an Optimizer's state (a stack's: stacked), or None without averaging."""
    inner = getattr(opt_state, "inner", None)
    return inner.average.params if isinstance(inner, Averaged) else None


def averaged_model_state(opt_state: Any) -> Any:
    """The averaged model state (batch-norm statistics) kept in an Optimizer's state, or None."""
    inner = getattr(opt_state, "inner", None)
    if not isinstance(inner, Averaged) or inner.average.model_state == ():
        return None
    return inner.average.model_state


# ------------------------------------------------------------------------------------- on parameter trees
@dataclass(frozen=True)
class Optimizer:
    """``optax.inject_hyperparams(factory)(**hyper)`` on parameter trees, with the loss's hyper-parameters
    (``loss``, e.g. label smoothing) in the same state: ``init(params) -> state``, ``update(grads, state, params)
    -> (new_params, state)``; :meth:`hyperparams` gives the values of the step about to run.

    ``factory(**values) -> Transform`` builds the chain from this step's values (tensors); ``hyper`` are its
    keyword hyper-parameters, constants or :class:`.hyper.Scheduled`. The update reads the values only from the
    state, so one Optimizer's update serves any stack of states built like it (the same names, schedules of the
    same length)."""

    factory: Callable[..., Transform]
    hyper: Mapping[str, Value]
    loss: Mapping[str, Value] = field(default_factory=dict)
    average: Averaging | None = None  # keep an average of the weights in the state (:func:`averaged`)

    def init(self, params: Any, model_state: Any = None) -> OptState:
        """The state before the first step (``model_state``: needed when averaging the batch-norm statistics)."""
        h = hp.init({**self.hyper, **self.loss})
        inner = self._transform(hp.at(h)).init(tree_flatten(params)[0])
        if self.average is not None:
            inner = Averaged(inner, _average_init(params, model_state, self.average))
        return OptState(h, inner)

    def hyperparams(self, state: OptState, names: Sequence[str] | None = None) -> dict[str, Tensor]:
        return hp.at(state.hyper, names)

    def update(self, grads: Any, state: OptState, params: Any, model_state: Any = None) -> tuple[Any, OptState]:
        """The new params and state; ``model_state`` (after this step's forward pass) is read only when the
        average covers the batch-norm statistics."""
        values = hp.at(state.hyper)
        p, spec = tree_flatten(params)
        chain_state = state.inner.chain if self.average is not None else state.inner
        updates, inner = self._transform(values).update(tree_flatten(grads)[0], chain_state, p)
        new = list(torch._foreach_add(p, updates)) if _fusable(p) else [a + b for a, b in zip(p, updates)]
        new_params = tree_unflatten(new, spec)
        if self.average is not None:
            inner = Averaged(inner, _average_update(state.inner.average, new_params, model_state, self.average))
        return new_params, OptState(hp.advance(state.hyper, values), inner)

    def _transform(self, values: dict[str, Tensor]) -> Transform:
        return self.factory(**{k: values[k] for k in self.hyper})


def last_hyperparams(state: OptState) -> dict[str, Tensor]:
    """The values the last step used (a stack's: (K,) each): what a log reports as the lr of a step."""
    return state.hyper.hyperparams


def adam(lr: Value, weight_decay: Value = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *,
         decoupled: bool = False, decay_mask: Callable[[Tensor], bool] | None = None,
         loss: Mapping[str, Value] | None = None, norm_bias_lr_mult: float = 1.0,
         average: Averaging | None = None) -> Optimizer:
    """Adam (``torch.optim.Adam``) or, ``decoupled``, AdamW, with its lr and weight decay in the state."""
    factory = partial(adam_chain, betas=tuple(betas), eps=eps, decoupled=decoupled, decay_mask=decay_mask,
                      norm_bias_lr_mult=norm_bias_lr_mult)
    return Optimizer(factory, {"lr": lr, "weight_decay": weight_decay}, dict(loss or {}), average)


def sgd(lr: Value, weight_decay: Value = 0.0, momentum: Value = 0.9, nesterov: bool = True, *,
        decay_mask: Callable[[Tensor], bool] | None = None, loss: Mapping[str, Value] | None = None,
        norm_bias_lr_mult: float = 1.0, average: Averaging | None = None) -> Optimizer:
    """SGD with (Nesterov) momentum (``torch.optim.SGD``), with its lr, weight decay and momentum in the state."""
    factory = partial(sgd_chain, nesterov=nesterov, decay_mask=decay_mask, norm_bias_lr_mult=norm_bias_lr_mult)
    return Optimizer(factory, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum}, dict(loss or {}),
                     average)
