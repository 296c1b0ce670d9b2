"""The functional model against an independent nn.Module reference (benchmarks/reference.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks.reference import BottleneckNetRef
from cifar100_func.core import model
from cifar100_func.runtime.interop import from_state_dict, to_state_dict


@pytest.mark.parametrize(
    "blocks, mid, count",
    [((3, 3, 3), 16, 337_252), ((2, 2, 2), 16, 244_516), ((3, 3, 3), 32, 892_836), ((2, 2, 2), 32, 611_492)],
)
def test_parameter_counts_match_spec_and_reference(blocks, mid, count):
    params, _ = model.init(model.Arch(blocks, mid), torch.Generator().manual_seed(0))
    assert model.count_params(params) == count
    assert sum(p.numel() for p in BottleneckNetRef(blocks, mid).parameters()) == count


@pytest.mark.parametrize("blocks, mid", [((1, 2, 1), 8), ((2, 2, 2), 16)])
def test_apply_matches_reference_module(blocks, mid):
    arch = model.Arch(blocks, mid)
    params, state = model.init(arch, torch.Generator().manual_seed(1))
    ref = BottleneckNetRef(blocks, mid)
    sd = to_state_dict(params, state)
    assert list(sd) == list(ref.state_dict())  # same keys, same order
    ref.load_state_dict(sd)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))

    ref.train()
    logits, new_state = model.apply(params, state, x, train=True)
    torch.testing.assert_close(logits, ref(x), atol=1e-5, rtol=1e-5)
    new_sd = to_state_dict(params, new_state)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(new_sd[k], v, atol=1e-5, rtol=1e-5, msg=k)
    # the input state was not mutated
    assert torch.equal(state["stem"]["bn"]["running_mean"], torch.zeros(64))

    ref.eval()
    logits_eval, same_state = model.apply(params, new_state, x, train=False)
    torch.testing.assert_close(logits_eval, ref(x), atol=1e-5, rtol=1e-5)
    for a, b in zip(torch.utils._pytree.tree_leaves(same_state), torch.utils._pytree.tree_leaves(new_state)):
        assert torch.equal(a, b)  # eval mode leaves the running statistics alone


def test_state_dict_round_trip_and_mismatch():
    arch = model.Arch((2, 1, 1), 8)
    params, state = model.init(arch, torch.Generator().manual_seed(0))
    p2, s2 = from_state_dict(to_state_dict(params, state), arch)
    for a, b in zip(torch.utils._pytree.tree_leaves((params, state)), torch.utils._pytree.tree_leaves((p2, s2))):
        assert torch.equal(a, b)
    from cifar100_func.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"layer1\.0\.conv1\.weight.*\(16, 64, 1, 1\).*\(8, 64, 1, 1\)"):
        from_state_dict(BottleneckNetRef((2, 1, 1), 16).state_dict(), arch)
    with pytest.raises(CheckpointError, match="missing key 'layer1.1"):
        from_state_dict(BottleneckNetRef((1, 1, 1), 8).state_dict(), arch)


def test_init_matches_pytorch_default_statistics():
    params, _ = model.init(model.Arch(), torch.Generator().manual_seed(0))
    w = params["layer3"][0]["conv2"]  # fan_in = 64 * 9
    bound = 1 / math.sqrt(64 * 9)
    assert w.abs().max() <= bound and w.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    ref_w = BottleneckNetRef().layer3[0].conv2.weight
    assert ref_w.std().item() == pytest.approx(w.std().item(), rel=0.05)


def test_initial_loss_is_about_ln100_on_random_input():
    params, state = model.init(model.Arch(), torch.Generator().manual_seed(0))
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 100, (64,), generator=torch.Generator().manual_seed(0))
    logits, _ = model.apply(params, state, x, train=True)
    assert F.cross_entropy(logits, y).item() == pytest.approx(math.log(100), abs=0.15)


def test_vmap_stacks_the_single_model_function():
    arch = model.Arch((1, 1, 1), 4, 10)
    inits = [model.init(arch, torch.Generator().manual_seed(i)) for i in range(3)]
    stack = lambda *t: torch.stack(t)  # noqa: E731
    P = torch.utils._pytree.tree_map(stack, *[p for p, _ in inits])
    S = torch.utils._pytree.tree_map(stack, *[s for _, s in inits])
    x = torch.randn(6, 3, 32, 32)
    logits, new_S = torch.func.vmap(lambda p, s: model.apply(p, s, x, train=True))(P, S)
    for i, (p, s) in enumerate(inits):
        li, si = model.apply(p, s, x, train=True)
        torch.testing.assert_close(logits[i], li, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(new_S["layer2"][0]["bn2"]["running_var"][i], si["layer2"][0]["bn2"]["running_var"])
