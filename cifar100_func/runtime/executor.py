"""How the loop runs a training step over a plan's models: the trees it carries from step to step, and the stacked
form it hands to everything else.

Every tree outside the step loop (the loop's records, evaluation, hooks, checkpoints, pruning, the result) is
*stacked* (one model's trees for the standard path); inside it, an executor keeps its own *carry*:

- :class:`Whole`: one step function over all the trees at once: the standard path's step for one model, or
  ``torch.func.vmap`` of it over a stack (the carry is the stacked trees themselves).
- :class:`Sequential`: a list of per-member trees (each tensor its own, contiguous, conv weights channels-last as on
  the standard path) and the standard path's one-model step (compiled by the same rule) over each member in turn.
  Each member's hyper-parameters are tensors in its optimiser state (:mod:`..core.hyper`), so one compiled graph
  serves every member; member ``j`` gets the shared batch, or batch ``j`` of the stacked (K, B, ...) batches.

The contract: ``enter(P, S, O, active) -> carry``; ``step(carry, x, y) -> (carry, loss, correct)`` (one value per
model); ``lr(carry)``, the lr each model's last step used; ``exit(carry) -> (P, S, O, active)`` stacked. Both
executors give the same results; :mod:`.backend` picks one per device (``grid.executor``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.func import vmap
from torch.utils._pytree import tree_leaves, tree_map

from ..core import model, trees
from ..core.optim import Optimizer, last_hyperparams
from ..core.precision import Precision
from ..core.step import guarded, make_eval_step, make_train_step
from .backend import Runner

Carry = Any


@dataclass
class Whole:
    """One step function over all the trees: the plain step (one model) or its vmap (a stack)."""

    fn: Callable
    runner: Runner
    guard: bool

    def enter(self, P: Any, S: Any, O: Any, active: torch.Tensor) -> Carry:
        return self.runner.params(P), S, self.runner.params(O), active

    def step(self, carry: Carry, x: torch.Tensor, y: torch.Tensor) -> tuple[Carry, torch.Tensor, torch.Tensor]:
        P, S, O, active = carry
        out = self.fn(P, S, O, self.runner.batch(x), y, *((active,) if self.guard else ()))
        return (*out[:3], out[5] if self.guard else active), out[3], out[4]

    def lr(self, carry: Carry) -> torch.Tensor:
        return last_hyperparams(carry[2])["lr"]

    def exit(self, carry: Carry) -> tuple[Any, Any, Any, torch.Tensor]:
        return carry


@dataclass
class Sequential:
    """The one-model step over each member of a stack in turn, each member's trees kept apart."""

    fn: Callable
    runner: Runner
    guard: bool
    shared_data: bool

    def enter(self, P: Any, S: Any, O: Any, active: torch.Tensor) -> Carry:
        member = self.runner.member
        return [(member(P, j), member(S, j), member(O, j), active[j].clone()) for j in range(active.shape[0])]

    def step(self, carry: Carry, x: torch.Tensor, y: torch.Tensor) -> tuple[Carry, torch.Tensor, torch.Tensor]:
        k = len(carry)
        if self.shared_data:
            xs, ys = [self.runner.batch(x)] * k, [y] * k
        else:
            xs, ys = [self.runner.batch(x[j]) for j in range(k)], list(y.unbind(0))
        new, losses, correct = [], [], []
        for (P, S, O, active), xj, yj in zip(carry, xs, ys):
            out = self.fn(P, S, O, xj, yj, *((active,) if self.guard else ()))
            new.append((*out[:3], out[5] if self.guard else active))
            losses.append(out[3])
            correct.append(out[4])
        return new, torch.stack(losses), torch.stack(correct)

    def lr(self, carry: Carry) -> torch.Tensor:
        return torch.stack([last_hyperparams(O)["lr"] for _, _, O, _ in carry])

    def exit(self, carry: Carry) -> tuple[Any, Any, Any, torch.Tensor]:
        stacked = (trees.stack([member[i] for member in carry]) for i in range(4))
        return tuple(tree_map(lambda t: t.contiguous(), tree) for tree in stacked)  # type: ignore[return-value]


def train_executor(optimizer: Optimizer, precision: Precision, runner: Runner, *, stacked: bool, guard: bool,
                   shared_data: bool, bn_momentum: float = model.BN_MOMENTUM) -> Whole | Sequential:
    """The executor of a plan's training step as ``runner`` runs it: the one-model step of ``optimizer`` (the
    members' optimisers differ only in their states), vmapped for a stack under the vmap executor, ``guarded``
    (a diverged member frozen) when ``guard``, compiled as the runner's choice says."""
    step = make_train_step(optimizer, precision=precision, device_type=runner.backend.device.type,
                           bn_momentum=bn_momentum)
    if stacked and runner.sequential:
        return Sequential(runner.wrap(guarded(step) if guard else step), runner, guard, shared_data)
    if stacked:
        data_dim = None if shared_data else 0
        step = vmap(step, in_dims=(0, 0, 0, data_dim, data_dim))
    return Whole(runner.wrap(guarded(step) if guard else step), runner, guard)


def eval_step(precision: Precision, runner: Runner, stacked: bool) -> Callable:
    """``fn(params, state, x, y)``: the evaluation step of a stack (trees as ``runner.params`` leaves them, the
    batch shared) or of one model, as ``runner`` runs it. A vmap stack runs it vmapped; a sequential stack runs the
    one-model step member by member and stacks the outputs, so either gives the same (K, ...) results."""
    fn = make_eval_step(precision=precision, device_type=runner.backend.device.type)
    if not stacked:
        return runner.wrap(fn, step="eval")
    if not runner.sequential:
        return runner.wrap(vmap(fn, in_dims=(0, 0, None, None)), step="eval")
    one = runner.wrap(fn, step="eval")

    def each(params: Any, state: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        k = tree_leaves(params)[0].shape[0]
        outs = [one(trees.member(params, j), trees.member(state, j), x, y) for j in range(k)]
        return tuple(torch.stack(parts) for parts in zip(*outs))

    return each
