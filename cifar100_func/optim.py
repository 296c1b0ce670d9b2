"""Functional optimisers in the optax style: ``init(params) -> opt_state`` and
``update(grads, opt_state, params, hparams) -> (new_params, new_opt_state)``.

Hyper-parameters that a grid varies (``lr``, ``weight_decay``) arrive as tensors in ``hparams``, so the same
update runs for K stacked models under ``torch.func.vmap`` with one value per model. The maths follows
``torch.optim`` step for step (tests compare them on the same gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_map

from .config import OptimizerConfig

Tree = Any
Hparams = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Optimizer:
    init: Callable[[Tree], Tree]
    update: Callable[[Tree, Tree, Tree, Hparams], tuple[Tree, Tree]]


def _unzip(tree: Tree, n: int) -> tuple[Tree, ...]:
    """A tree whose leaves are n-tuples -> n trees (the per-leaf update returns several new tensors)."""
    leaves, spec = torch.utils._pytree.tree_flatten(tree, is_leaf=lambda t: isinstance(t, tuple))
    return tuple(torch.utils._pytree.tree_unflatten([leaf[i] for leaf in leaves], spec) for i in range(n))


def adam(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *, decoupled: bool = False) -> Optimizer:
    """Adam with coupled L2 weight decay (``torch.optim.Adam``), or decoupled decay (``AdamW``)."""
    b1, b2 = betas

    def init(params: Tree) -> Tree:
        zeros = lambda p: torch.zeros_like(p)  # noqa: E731
        return {"step": torch.zeros((), device=_device(params)), "mu": tree_map(zeros, params),
                "nu": tree_map(zeros, params)}

    def update(grads: Tree, state: Tree, params: Tree, hp: Hparams) -> tuple[Tree, Tree]:
        lr, wd = hp["lr"], hp["weight_decay"]
        step = state["step"] + 1
        t = step.double()  # bias corrections in float64, as torch.optim (1 - 0.999**t loses digits in float32)
        step_size = lr / (1 - b1**t).float()
        bc2_sqrt = torch.sqrt(1 - b2**t).float()

        def leaf(g, p, m, v):
            if decoupled:
                p = p * (1 - lr * wd)
            else:
                g = g + wd * p
            m = torch.lerp(m, g, 1 - b1)
            v = v * b2 + (1 - b2) * g * g
            p = p - step_size * m / (torch.sqrt(v) / bc2_sqrt + eps)
            return p, m, v

        out = tree_map(leaf, grads, params, state["mu"], state["nu"])
        new_p, mu, nu = _unzip(out, 3)
        return new_p, {"step": step, "mu": mu, "nu": nu}

    return Optimizer(init, update)


def sgd(momentum: float = 0.9, nesterov: bool = True) -> Optimizer:
    """SGD with (Nesterov) momentum and coupled L2 weight decay (``torch.optim.SGD``, dampening 0)."""

    def init(params: Tree) -> Tree:
        return {"step": torch.zeros((), device=_device(params)), "momentum": tree_map(torch.zeros_like, params)}

    def update(grads: Tree, state: Tree, params: Tree, hp: Hparams) -> tuple[Tree, Tree]:
        lr, wd = hp["lr"], hp["weight_decay"]

        def leaf(g, p, buf):
            g = g + wd * p
            buf = buf * momentum + g
            direction = g + momentum * buf if nesterov else buf
            return p - lr * direction, buf

        new_p, bufs = _unzip(tree_map(leaf, grads, params, state["momentum"]), 2)
        return new_p, {"step": state["step"] + 1, "momentum": bufs}

    return Optimizer(init, update)


def make_optimizer(cfg: OptimizerConfig) -> Optimizer:
    if cfg.name == "sgd":
        return sgd(cfg.momentum, cfg.nesterov)
    return adam(cfg.betas, cfg.eps, decoupled=cfg.name == "adamw")


def hyperparams(lr: float, weight_decay: float, device: torch.device | str = "cpu") -> Hparams:
    """The per-model hyper-parameters as 0-d float32 tensors (stack them for a vmapped grid)."""
    return {
        "lr": torch.tensor(float(lr), dtype=torch.float32, device=device),
        "weight_decay": torch.tensor(float(weight_decay), dtype=torch.float32, device=device),
    }


def _device(tree: Tree) -> torch.device:
    leaves = torch.utils._pytree.tree_leaves(tree)
    return leaves[0].device if leaves else torch.device("cpu")
