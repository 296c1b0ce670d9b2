"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` (no code runs on load).

A project checkpoint is a dict ``{"format": FORMAT, "state_dict": <reference layout>, "config": {...},
"epoch": int, "metrics": [...], "opt_state": <tree>, ...}``. A plain reference ``state_dict`` (as saved by
``torch.save(model.state_dict(), path)``) is accepted wherever weights are read.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .interop import arch_from_state_dict, from_state_dict, to_state_dict
from .io import atomic_write
from ..core import trees
from ..core.model import Arch, Params, State

FORMAT = "cifar100-func/1"


def save_checkpoint(path: Path, params: Params, state: State, *, members: int = 0, **fields: Any) -> None:
    """Write ``{"format", "state_dict", **fields}`` to ``path`` atomically (tensors moved to the CPU).

    With ``members`` > 0 the trees are a stack of that many models (an ensemble): ``"ensemble"`` holds every
    member's state_dict and ``"state_dict"`` the first one's, so a reader of single models still reads a model."""
    if members:
        sds = [to_state_dict(trees.member(params, j), trees.member(state, j)) for j in range(members)]
        payload = {"format": FORMAT, "state_dict": sds[0], "ensemble": sds}
    else:
        payload = {"format": FORMAT, "state_dict": to_state_dict(params, state)}
    payload.update(trees.to_cpu(fields))
    atomic_write(Path(path), lambda f: torch.save(payload, f))


def load_file(path: Path) -> dict:
    """Read a checkpoint or state_dict file safely; every failure is a one-line ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = " ".join(str(exc).split("\n")[0].split())[:200]
        raise CheckpointError(f"checkpoint {str(path)!r} refused: it holds more than tensors ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupted ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a dict, got {type(obj).__name__}")
    return obj


def is_project_checkpoint(obj: dict) -> bool:
    return obj.get("format") == FORMAT and isinstance(obj.get("state_dict"), dict)


def load_weights(path: Path, arch: Arch | None = None) -> tuple[Params, State, dict, Arch]:
    """(params, state, checkpoint dict, arch) from a project checkpoint or a plain reference state_dict.

    With ``arch=None`` the architecture is read from the state_dict's shapes (:func:`arch_from_state_dict`);
    a checkpoint's ``"config"`` entry is never consulted, the tensors are the truth. The checkpoint dict is
    ``{}`` for a plain state_dict. The returned ``Arch`` is the one the weights were loaded into.
    """
    obj = load_file(path)
    sd = obj["state_dict"] if is_project_checkpoint(obj) else obj
    if not all(isinstance(k, str) for k in sd):
        raise CheckpointError(f"checkpoint {str(path)!r} is neither a project checkpoint nor a state_dict")
    try:
        if arch is None:
            arch = arch_from_state_dict(sd)
        params, state = from_state_dict(sd, arch)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return params, state, obj if is_project_checkpoint(obj) else {}, arch


MAX_MEMBERS = 1024  # study.final_seeds' bound


@dataclass(frozen=True)
class Members:
    """Every model of a checkpoint with its architecture and its weight in the ensemble (one model: weight 1)."""

    models: list[tuple[Params, State]]
    archs: list[Arch]
    weights: list[float]
    names: list[str]
    meta: dict  # the checkpoint dict ({} for a plain state_dict)


def load_members(path: Path) -> Members:
    """Every model of a checkpoint: the members of an ensemble checkpoint (``train --ensemble N``, or a sweep's
    selected ensemble: any architectures, ``"ensemble_weights"``), else the one model (as :func:`load_weights`).
    Each member's architecture comes from its own tensors."""
    params, state, meta, arch = load_weights(path)
    sds = meta.get("ensemble")
    if not sds:
        return Members([(params, state)], [arch], [1.0], ["model"], meta)
    if not isinstance(sds, list) or not all(isinstance(sd, dict) for sd in sds):
        raise CheckpointError(f"checkpoint {str(path)!r}: 'ensemble' must be a list of state_dicts")
    if len(sds) > MAX_MEMBERS:  # members may share storage in the file: their count bounds what stacking costs
        raise CheckpointError(f"checkpoint {str(path)!r}: an ensemble of {len(sds)} exceeds {MAX_MEMBERS} members")
    weights = meta.get("ensemble_weights", [1.0] * len(sds))
    if (not isinstance(weights, list) or len(weights) != len(sds)
            or not all(isinstance(w, (int, float)) and math.isfinite(w) and w > 0 for w in weights)):
        raise CheckpointError(f"checkpoint {str(path)!r}: 'ensemble_weights' must be {len(sds)} positive numbers")
    names = meta.get("ensemble_members", [f"member {j + 1}" for j in range(len(sds))])
    try:
        archs = [arch_from_state_dict(sd) for sd in sds]
        models = [from_state_dict(sd, a) for sd, a in zip(sds, archs)]
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: an ensemble member: {exc}") from None
    return Members(models, archs, [float(w) for w in weights], [str(n) for n in names], meta)
