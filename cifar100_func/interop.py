"""Conversion between (params, state) trees and a plain ``state_dict`` in the reference ``nn.Module`` layout.

Reference keys: ``stem.0.weight``, ``stem.1.{weight,bias,running_mean,running_var,num_batches_tracked}``,
``layer{k}.{i}.conv{j}.weight``, ``layer{k}.{i}.bn{j}.*``, ``layer{k}.{i}.shortcut.{0,1}.*``, ``fc.{weight,bias}``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator

import torch

from .errors import CheckpointError
from .model import Arch, Params, State, init

# our tree names -> the reference module names
_RENAME = {"stem.conv": "stem.0", "stem.bn": "stem.1", "shortcut.conv": "shortcut.0", "shortcut.bn": "shortcut.1"}


def _walk(tree: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _walk(v, f"{prefix}.{i}")
    else:
        yield prefix, tree


def _ref_name(path: str) -> str:
    for ours, theirs in _RENAME.items():
        path = path.replace(ours, theirs)
    if path.rsplit(".", 1)[-1].startswith("conv") or path.endswith("shortcut.0") or path == "stem.0":
        path += ".weight"  # our conv leaves are bare tensors
    return path


def _merge(params: Any, state: Any) -> Any:
    """One tree with BN running statistics placed after their affine parameters (reference order)."""
    if isinstance(params, dict):
        out = {k: _merge(v, state.get(k)) if isinstance(state, dict) and k in state else v for k, v in params.items()}
        if isinstance(state, dict):
            out.update({k: v for k, v in state.items() if k not in params})
        return out
    if isinstance(params, list):
        return [_merge(p, s) for p, s in zip(params, state)]
    return params


def to_state_dict(params: Params, state: State) -> "OrderedDict[str, torch.Tensor]":
    """Export in the reference layout and order (tensors detached, on the CPU)."""
    return OrderedDict((_ref_name(k), v.detach().cpu().clone()) for k, v in _walk(_merge(params, state)))


def from_state_dict(sd: dict[str, torch.Tensor], arch: Arch) -> tuple[Params, State]:
    """Fill a fresh (params, state) of ``arch`` from a reference-layout state_dict.

    A missing or unexpected key, or a shape that does not fit ``arch``, is a ``CheckpointError`` that names
    the first mismatching key and the shapes.
    """
    template_p, template_s = init(arch, torch.Generator().manual_seed(0))

    def fill(tree: Any, prefix: str) -> Any:
        if isinstance(tree, dict):
            return {k: fill(v, f"{prefix}.{k}" if prefix else k) for k, v in tree.items()}
        if isinstance(tree, list):
            return [fill(v, f"{prefix}.{i}") for i, v in enumerate(tree)]
        key = _ref_name(prefix)
        if key not in sd:
            raise CheckpointError(
                f"state_dict does not fit the architecture blocks={list(arch.blocks)}, mid={arch.mid}: "
                f"missing key {key!r} (expected shape {tuple(tree.shape)})"
            )
        value = sd[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(tree.shape):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(
                f"state_dict does not fit the architecture blocks={list(arch.blocks)}, mid={arch.mid}: "
                f"key {key!r} has shape {got}, expected {tuple(tree.shape)}"
            )
        return value.detach().to(tree.dtype).clone()

    params, state = fill(template_p, ""), fill(template_s, "")
    expected = set(to_state_dict(template_p, template_s))
    extra = [k for k in sd if k not in expected]
    if extra:
        raise CheckpointError(
            f"state_dict does not fit the architecture blocks={list(arch.blocks)}, mid={arch.mid}: "
            f"unexpected key {extra[0]!r} (shape {tuple(sd[extra[0]].shape) if isinstance(sd[extra[0]], torch.Tensor) else '?'})"
        )
    return params, state
