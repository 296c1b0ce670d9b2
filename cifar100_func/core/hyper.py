"""Hyper-parameters as optimiser state, as ``optax.inject_hyperparams``: the one route from a config, a grid point
or a seed list to the update and the loss.

A hyper-parameter is a constant or :class:`Scheduled` (a base value times a schedule's multiplier of each step).
:func:`init` puts every one of a model's hyper-parameters into a :class:`HyperState` of tensor leaves (shape ();
stacking K models' states gives (K,) and (K, T)), with the step count; :func:`at` reads the values of the step
about to run from it, :func:`advance` records them and counts the step. The logged lr is the state's
``hyperparams["lr"]`` (the value the last step used), so it is computed in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence, Union

import torch
from torch import Tensor


@dataclass(frozen=True)
class Hyper:
    """The hyper-parameters of one model that may differ between the members of a stack (a grid point)."""

    lr: float  # peak lr: the schedule multiplies it step by step
    weight_decay: float
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class Scheduled:
    """``base * multipliers[step]``; after the last step of the table its last multiplier holds."""

    base: float
    multipliers: Tensor  # (steps,), float32 (:func:`.schedules.table`)


Value = Union[float, Scheduled]


class HyperState(NamedTuple):
    count: Tensor  # int64: steps taken
    hyperparams: dict[str, Tensor]  # the values the last step used (before the first: those of step 0)
    bases: dict[str, Tensor]  # the base value of each scheduled hyper-parameter
    tables: dict[str, Tensor]  # its multipliers, (steps,)


def _f32(v: float) -> Tensor:
    return torch.tensor(v, dtype=torch.float32)


def init(values: Mapping[str, Value]) -> HyperState:
    """The state of one model's hyper-parameters, before its first step."""
    sched = {k: v for k, v in values.items() if isinstance(v, Scheduled)}
    state = HyperState(torch.zeros((), dtype=torch.int64),
                       {k: _f32(v.base if isinstance(v, Scheduled) else v) for k, v in values.items()},
                       {k: _f32(v.base) for k, v in sched.items()},
                       {k: v.multipliers.detach().to(torch.float32).cpu() for k, v in sched.items()})
    return state._replace(hyperparams=at(state))


def at(state: HyperState, names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """The values of every hyper-parameter (or of ``names``) at step ``state.count`` (the step about to run)."""
    names = list(state.hyperparams) if names is None else [k for k in names if k in state.hyperparams]
    out = {k: state.hyperparams[k] for k in names}
    for k in names:
        if k not in state.tables:
            continue
        table = state.tables[k]
        i = state.count.clamp(max=table.shape[-1] - 1)
        out[k] = state.bases[k] * table.gather(-1, i.reshape(1)).reshape(())
    return out


def advance(state: HyperState, values: dict[str, Tensor]) -> HyperState:
    """The state after a step that used ``values`` (:func:`at`)."""
    return state._replace(count=state.count + 1, hyperparams={k: values[k] for k in state.hyperparams})
