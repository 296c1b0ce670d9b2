"""The pure training and evaluation steps, written for one model (``torch.func.vmap`` makes them a stack).

``make_train_step`` returns ``step(params, state, opt_state, x, y) -> (params, state, opt_state, loss, correct)``:
the gradient of the pure loss (``torch.func.grad_and_value``) and the optimiser's update. Every hyper-parameter
(lr, weight decay, momentum, label smoothing) comes from ``opt_state`` (:mod:`.hparams`); an optimiser that
averages the weights gets the step's new batch-norm statistics too. Numeric precision is a
:class:`.precision.Precision`. :func:`recompute_bn` gives averaged weights batch-norm statistics of their own (as
``torch.optim.swa_utils.update_bn``). :func:`guarded` rejects a step whose loss or new weights are not finite (a stack
freezes a diverged member instead of letting it stop the others).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap
from torch.utils._pytree import tree_leaves, tree_map

from . import model
from .optim import Optimizer, averaged, averaged_model_state
from .precision import PRECISIONS, Precision

TrainStep = Callable[..., tuple[Any, Any, Any, Tensor, Tensor]]
FP32 = PRECISIONS["fp32"]


def precision_of(p: Precision | str) -> Precision:
    """A :class:`Precision` from itself or its name (``"fp32"``, ``"bf16"``, ``"fp64"``)."""
    return PRECISIONS[p] if isinstance(p, str) else p


def cross_entropy(logits: Tensor, y: Tensor, label_smoothing: Tensor | float = 0.0) -> Tensor:
    """Mean cross-entropy with label smoothing as ``F.cross_entropy`` defines it, but with the smoothing a tensor
    (one value per model in a stack): ``(1 - s) * nll + s * mean over classes of -log p``."""
    logp = logits.log_softmax(dim=-1)
    nll = -logp.gather(-1, y.unsqueeze(-1)).mean()
    uniform = -logp.mean()
    return nll + label_smoothing * (uniform - nll)


def make_train_step(optimizer: Optimizer, *, precision: Precision = FP32, device_type: str = "cpu",
                    bn_momentum: float = model.BN_MOMENTUM) -> TrainStep:
    precision = precision_of(precision)

    def loss_fn(params, state, x, y, label_smoothing):
        with precision.autocast(device_type):
            logits, new_state = model.apply(params, state, precision.inputs(x), train=True, momentum=bn_momentum)
        logits = precision.outputs(logits)
        loss = cross_entropy(logits, y, label_smoothing)
        correct = (logits.argmax(dim=-1) == y).sum()
        return loss, (new_state, correct)

    def step(params, state, opt_state, x, y):
        smoothing = optimizer.hyperparams(opt_state, ["label_smoothing"]).get("label_smoothing", 0.0)
        grads, (loss, (new_state, correct)) = grad_and_value(loss_fn, has_aux=True)(params, state, x, y, smoothing)
        new_params, new_opt_state = optimizer.update(grads, opt_state, params, model_state=new_state)
        return new_params, new_state, new_opt_state, loss.detach(), correct

    return step


def guarded(step: TrainStep) -> Callable:
    """``(P, S, O, x, y, active) -> (P, S, O, loss, correct, active)``: the step, except that a model whose loss
    or new weights are not finite, or that is no longer ``active``, keeps its old trees (frozen at its last good
    weights) and reports a NaN loss. Works for one model (``active`` of shape ()) and for a stack ((K,))."""

    def run(P, S, O, x, y, active):
        nP, nS, nO, loss, correct = step(P, S, O, x, y)
        batch = active.ndim
        finite = [torch.isfinite(t).reshape(*t.shape[:batch], -1).all(-1) for t in tree_leaves(nP)]
        ok = active & torch.isfinite(loss) & torch.stack(finite).all(0)
        loss = torch.where(ok, loss, torch.full_like(loss, float("nan")))
        keep = lambda n, o: torch.where(ok.reshape(ok.shape + (1,) * (n.ndim - batch)), n, o)  # noqa: E731
        return tree_map(keep, nP, P), tree_map(keep, nS, S), tree_map(keep, nO, O), loss, correct, ok

    return run


def make_eval_step(*, precision: Precision = FP32, device_type: str = "cpu") -> Callable:
    """``eval_step(params, state, x, y) -> (loss_sum, correct, top5_correct, predictions, log_probabilities)`` in
    eval mode. An ensemble averages its members' softmax probabilities; they travel as log-probabilities
    (log_softmax), which neither underflow nor lose the loss of a confidently wrong prediction."""
    precision = precision_of(precision)

    def eval_step(params, state, x, y):
        with precision.autocast(device_type):
            logits, _ = model.apply(params, state, precision.inputs(x), train=False)
        logits = precision.outputs(logits)
        loss_sum = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        pred = top5[..., 0]
        return loss_sum, (pred == y).sum(), (top5 == y[..., None]).any(dim=-1).sum(), pred, logits.log_softmax(dim=-1)

    return eval_step


def _reset_bn(state: Any) -> Any:
    """Batch-norm statistics as a fresh ``nn.BatchNorm2d``'s (``reset_running_stats``): mean 0, var 1, count 0."""
    if isinstance(state, dict):
        if "running_mean" in state:
            return {"running_mean": torch.zeros_like(state["running_mean"]),
                    "running_var": torch.ones_like(state["running_var"]),
                    "num_batches_tracked": torch.zeros_like(state["num_batches_tracked"])}
        return {k: _reset_bn(v) for k, v in state.items()}
    return [_reset_bn(v) for v in state]


def recompute_bn(params: Any, state: Any, batches: Iterable[Tensor], *, stacked: bool = False,
                 precision: Precision | str = FP32, device_type: str = "cpu") -> Any:
    """The batch-norm statistics of ``params`` on ``batches`` (input batches, e.g. a few hundred training images):
    reset, then train-mode forward passes without gradients, each batch norm's running mean and variance the
    cumulative average over the batches (``torch.optim.swa_utils.update_bn``: momentum None). ``stacked``: the
    trees are a stack of models, every batch shared by all of them."""
    precision = precision_of(precision)
    state, i = _reset_bn(state), 0
    with torch.no_grad():
        for i, x in enumerate(batches, start=1):

            def forward(p, s, x, m=1.0 / i):
                with precision.autocast(device_type):
                    return model.apply(p, s, precision.inputs(x), train=True, momentum=m)[1]

            state = vmap(forward, in_dims=(0, 0, None))(params, state, x) if stacked else forward(params, state, x)
    if i == 0:
        raise ValueError("recompute_bn: no batches to recompute the batch-norm statistics on")
    return state


def averaged_trees(params: Any, state: Any, opt_state: Any, bn_batches: Iterable[Tensor] = (), *,
                   stacked: bool = False, precision: Precision | str = FP32,
                   device_type: str = "cpu") -> tuple[Any, Any]:
    """The trees to validate and keep as the result: the optimiser's averaged weights with their batch-norm
    statistics (averaged alongside in ``opt_state``, else recomputed on ``bn_batches`` by :func:`recompute_bn`),
    or ``(params, state)`` when the optimiser does not average. ``bn_batches`` is read only when recomputing."""
    avg = averaged(opt_state)
    if avg is None:
        return params, state
    avg_state = averaged_model_state(opt_state)
    if avg_state is None:
        avg_state = recompute_bn(avg, state, bn_batches, stacked=stacked, precision=precision,
                                 device_type=device_type)
    return avg, avg_state
