"""The pure training and evaluation steps shared by every command (standard path and stacked grid).

``make_train_step`` returns ``step(params, state, opt_state, hparams, x, y) -> (params, state, opt_state,
loss, correct)``: grad of the pure loss with ``torch.func.grad_and_value`` plus the functional optimiser
update. Written for one model; the grid wraps the very same function in ``torch.func.vmap``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.func import grad_and_value

from . import model
from .optim import Optimizer

TrainStep = Callable[..., tuple[Any, Any, Any, torch.Tensor, torch.Tensor]]


def autocast(precision: str, device_type: str):
    """bf16 autocast for ``precision == "bf16"``, a no-op context otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cast_tree(tree: Any, precision: str) -> Any:
    """Floating-point leaves to float64 for ``precision == "fp64"`` (numerical checks); unchanged otherwise."""
    if precision != "fp64":
        return tree
    return torch.utils._pytree.tree_map(lambda t: t.double() if t.is_floating_point() else t, tree)


def make_train_step(optimizer: Optimizer, *, label_smoothing: float = 0.0, precision: str = "fp32",
                    device_type: str = "cpu") -> TrainStep:
    def loss_fn(params, state, x, y):
        if precision == "fp64":
            x = x.double()
        with autocast(precision, device_type):
            logits, new_state = model.apply(params, state, x, train=True)
        logits = logits.double() if precision == "fp64" else logits.float()
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        correct = (logits.argmax(dim=-1) == y).sum()
        return loss, (new_state, correct)

    def step(params, state, opt_state, hparams, x, y):
        grads, (loss, (new_state, correct)) = grad_and_value(loss_fn, has_aux=True)(params, state, x, y)
        new_params, new_opt_state = optimizer.update(grads, opt_state, params, hparams)
        return new_params, new_state, new_opt_state, loss.detach(), correct

    return step


def make_eval_step(*, precision: str = "fp32", device_type: str = "cpu") -> Callable:
    """``eval_step(params, state, x, y) -> (loss_sum, correct, top5_correct, predictions)`` in eval mode."""

    def eval_step(params, state, x, y):
        if precision == "fp64":
            x = x.double()
        with autocast(precision, device_type):
            logits, _ = model.apply(params, state, x, train=False)
        logits = logits.float()
        loss_sum = F.cross_entropy(logits, y, reduction="sum")
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        pred = top5[..., 0]
        return loss_sum, (pred == y).sum(), (top5 == y[..., None]).any(dim=-1).sum(), pred

    return eval_step
