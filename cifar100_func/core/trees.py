"""Pytrees of tensors as a whole: a stack of K models and its members, and moving a tree between devices.

A *stack* is one tree whose every leaf has a leading model axis ``k`` (what ``torch.func.vmap`` maps over);
:func:`stack` builds it from K trees of one structure and :func:`member`, :func:`unstack` and :func:`take` read
members out of it. Leaves that are not tensors pass through :func:`to` and :func:`to_cpu` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange
from torch.utils._pytree import tree_leaves, tree_map

Tree = Any


def stack(trees: Sequence[Tree]) -> Tree:
    """``[tree_1, ..., tree_K]`` (one structure) -> one tree whose leaves have a leading model axis ``k``."""
    return tree_map(lambda *leaves: rearrange(list(leaves), "k ... -> k ..."), *trees)


def member(tree: Tree, i: int) -> Tree:
    """The ``i``-th model's tree out of a stack."""
    return tree_map(lambda t: t[i], tree)


def unstack(tree: Tree) -> list[Tree]:
    """Every model's tree out of a stack, in order (the inverse of :func:`stack`)."""
    return [member(tree, i) for i in range(tree_leaves(tree)[0].shape[0])]


def take(tree: Tree, positions: Sequence[int]) -> Tree:
    """The stack of the members at ``positions`` (in that order)."""
    index = torch.tensor(list(positions), dtype=torch.int64)
    return tree_map(lambda t: t.index_select(0, index.to(t.device)), tree)


def to(tree: Tree, device: torch.device | str) -> Tree:
    """The tree with its tensors on ``device``."""
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, tree)


def to_cpu(tree: Tree) -> Tree:
    """The tree with its tensors detached and on the CPU (for files and other processes)."""
    return tree_map(lambda t: t.detach().cpu() if isinstance(t, torch.Tensor) else t, tree)
