"""Per-model hyper-parameters: the one route from a config, a grid point or a seed list to the update and the loss.

A :class:`Hyper` is what one model trains with; :func:`table` turns K of them into tensors on the device (shape
(K,) for a stack, () for one model), and :func:`at_step` scales the lr by the schedule's multiplier of the step.
The optimiser reads ``lr`` and ``weight_decay`` from the table, the loss reads ``label_smoothing``, so a stack of
models with different values is one vmapped step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Sequence

import torch
from torch import Tensor

from ..config import Config

Table = dict[str, Tensor]


@dataclass(frozen=True)
class Hyper:
    """The hyper-parameters of one model that may differ between the members of a stack."""

    lr: float  # peak lr: the schedule multiplies it step by step
    weight_decay: float
    label_smoothing: float = 0.0

    @staticmethod
    def of(cfg: Config) -> "Hyper":
        """The values a config's ``train`` section sets."""
        t = cfg.train
        return Hyper(t.optimizer.lr, t.optimizer.weight_decay, t.label_smoothing)


def table(hypers: Sequence[Hyper], device: torch.device | str, stacked: bool = True) -> Table:
    """One float32 tensor per field: shape (K,) when ``stacked``, else () for the only model."""
    if not stacked and len(hypers) != 1:
        raise ValueError(f"an unstacked table holds one model, got {len(hypers)}")
    out = {}
    for f in fields(Hyper):
        values = torch.tensor([asdict(h)[f.name] for h in hypers], dtype=torch.float32, device=device)
        out[f.name] = values if stacked else values[0]
    return out


def at_step(tab: Table, lr_factor: Tensor, momentum: Tensor | None = None) -> Table:
    """The table with each model's lr scaled by ``lr_factor`` (the schedule's multiplier for this step) and, when
    the schedule cycles it, this step's ``momentum`` for every model."""
    out = {**tab, "lr": tab["lr"] * lr_factor}
    if momentum is not None:
        out["momentum"] = momentum.expand_as(out["lr"])
    return out
