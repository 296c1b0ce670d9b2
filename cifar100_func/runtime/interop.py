"""Conversion between (params, state) trees and a plain ``state_dict`` in the reference ``nn.Module`` layout.

Reference keys: ``stem.0.weight``, ``stem.1.{weight,bias,running_mean,running_var,num_batches_tracked}``,
``layer{k}.{i}.conv{j}.weight``, ``layer{k}.{i}.bn{j}.*``, ``layer{k}.{i}.shortcut.{0,1}.*``, ``fc.{weight,bias}``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator

import torch

from ..errors import CheckpointError
from ..core.model import Arch, Params, State, init

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


MAX_BLOCKS, MAX_MID, MAX_CLASSES = 64, 4096, 100_000  # the config schema's bounds (model.blocks, bottleneck_mid)


def _dim(sd: dict[str, torch.Tensor], key: str, ndim: int, what: str) -> int:
    """Size of axis 0 of ``sd[key]``, which must be an ``ndim``-d tensor with a non-empty axis 0."""
    if key not in sd:
        raise CheckpointError(f"not a reference-layout state_dict: missing key {key!r} ({what})")
    value = sd[key]
    if not isinstance(value, torch.Tensor) or value.dim() != ndim or value.shape[0] < 1:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise CheckpointError(
            f"not a reference-layout state_dict: key {key!r} ({what}) has shape {got}, expected a {ndim}-d tensor"
        )
    return int(value.shape[0])


def arch_from_state_dict(sd: dict[str, torch.Tensor]) -> Arch:
    """The architecture a reference-layout state_dict was saved from, read from its key names and shapes.

    blocks: the number of consecutive ``layer{k}.{i}.conv1.weight`` keys per stage (from ``i = 0``); mid: the
    out channels of ``layer1.0.conv1.weight``; num_classes: the rows of ``fc.weight``. Only what fixes the
    ``Arch`` is checked here; every other key and shape is checked by :func:`from_state_dict`, which any
    valid file passes with the returned ``Arch``. A state_dict of another layout (a stage without blocks, no
    ``fc.weight``, ...) is a one-line ``CheckpointError`` naming the missing or malformed key.
    """
    if not isinstance(sd, dict):
        raise CheckpointError(f"not a reference-layout state_dict: expected a dict, got {type(sd).__name__}")
    if not sd:
        raise CheckpointError("not a reference-layout state_dict: it is empty (missing key 'stem.0.weight')")
    blocks = []
    for stage in (1, 2, 3):
        n = 0
        while f"layer{stage}.{n}.conv1.weight" in sd:
            n += 1
        if n == 0:
            raise CheckpointError(
                f"not a reference-layout state_dict: missing key 'layer{stage}.0.conv1.weight' "
                f"(stage {stage} has no blocks)"
            )
        blocks.append(n)
    mid = _dim(sd, "layer1.0.conv1.weight", 4, "stage-1 bottleneck width")
    num_classes = _dim(sd, "fc.weight", 2, "number of classes")
    for what, value, limit in (("blocks per stage", max(blocks), MAX_BLOCKS), ("bottleneck width", mid, MAX_MID),
                               ("number of classes", num_classes, MAX_CLASSES)):
        if value > limit:  # checked before any tensor of that size is built (a stride-0 tensor costs a few bytes)
            raise CheckpointError(f"not a model this project builds: {what} {value} exceeds {limit}")
    return Arch(blocks=tuple(blocks), mid=mid, num_classes=num_classes)  # type: ignore[arg-type]


def from_state_dict(sd: dict[str, torch.Tensor], arch: Arch,
                    dtype: torch.dtype | None = None) -> tuple[Params, State]:
    """Fill a fresh (params, state) of ``arch`` from a reference-layout state_dict, floating-point tensors as
    ``dtype`` (default float32, the model's; float64 keeps an fp64 run's checkpoint exact on ``--resume``).

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
        return value.detach().to(dtype if dtype is not None and tree.is_floating_point() else tree.dtype).clone()

    params, state = fill(template_p, ""), fill(template_s, "")
    expected = set(to_state_dict(template_p, template_s))
    extra = [k for k in sd if k not in expected]
    if extra:
        raise CheckpointError(
            f"state_dict does not fit the architecture blocks={list(arch.blocks)}, mid={arch.mid}: "
            f"unexpected key {extra[0]!r} (shape {tuple(sd[extra[0]].shape) if isinstance(sd[extra[0]], torch.Tensor) else '?'})"
        )
    return params, state
