"""Stacks of model trees (core/trees.py) against plain torch: stacking, members, positions, devices."""

from __future__ import annotations

import torch

from cifar100_func.core import model, trees


def _models(n):
    return [model.init(model.Arch((1, 1, 1), 4, 10), torch.Generator().manual_seed(i)) for i in range(n)]


def test_stack_and_members_match_torch_stack_and_indexing():
    models = _models(3)
    stacked = trees.stack(models)
    flat = [torch.utils._pytree.tree_leaves(m) for m in models]
    for j, leaf in enumerate(torch.utils._pytree.tree_leaves(stacked)):
        assert torch.equal(leaf, torch.stack([f[j] for f in flat]))  # 0-d leaves (num_batches_tracked) too
    for i, m in enumerate(trees.unstack(stacked)):
        for a, b in zip(torch.utils._pytree.tree_leaves(m), flat[i]):
            assert torch.equal(a, b)
        for a, b in zip(torch.utils._pytree.tree_leaves(trees.member(stacked, i)), flat[i]):
            assert torch.equal(a, b)


def test_take_keeps_the_members_at_positions_in_order():
    stacked = trees.stack(_models(4))
    kept = trees.take(stacked, [3, 1])
    for a, b in zip(torch.utils._pytree.tree_leaves(kept), torch.utils._pytree.tree_leaves(stacked)):
        assert torch.equal(a, b[[3, 1]])


def test_to_and_to_cpu_move_tensors_and_keep_other_leaves():
    tree = {"w": torch.ones(2, requires_grad=True) * 2, "name": "x", "n": 3}
    moved = trees.to(tree, "cpu")
    assert moved["name"] == "x" and moved["n"] == 3 and torch.equal(moved["w"], tree["w"])
    assert not trees.to_cpu(tree)["w"].requires_grad
