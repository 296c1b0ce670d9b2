"""Reading the architecture from a checkpoint's shapes, against the independent nn.Module reference."""

from __future__ import annotations

import pytest
import torch

from benchmarks.reference import BottleneckNetRef
from cifar100_func.core import model
from cifar100_func.runtime.checkpoint import load_weights, save_checkpoint
from cifar100_func.errors import CheckpointError
from cifar100_func.runtime.interop import arch_from_state_dict, from_state_dict, to_state_dict

ARCHS = [((2, 2, 2), 16, 100), ((3, 3, 3), 32, 100), ((1, 2, 3), 4, 10)]


def _reference(blocks, mid, num_classes, seed: int = 0) -> BottleneckNetRef:
    """A reference module with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    ref = BottleneckNetRef(blocks, mid, num_classes=num_classes)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
    return ref.eval()


@pytest.mark.parametrize("blocks, mid, num_classes", ARCHS)
def test_arch_from_reference_state_dict(blocks, mid, num_classes):
    sd = _reference(blocks, mid, num_classes).state_dict()
    arch = arch_from_state_dict(sd)
    assert arch == model.Arch(blocks, mid, num_classes)
    from_state_dict(sd, arch)  # the inferred Arch passes the full shape check


@pytest.mark.parametrize("blocks, mid, num_classes", ARCHS)
def test_arch_roundtrips_through_our_own_export(blocks, mid, num_classes):
    arch = model.Arch(blocks, mid, num_classes)
    params, state = model.init(arch, torch.Generator().manual_seed(3))
    assert arch_from_state_dict(to_state_dict(params, state)) == arch


@pytest.mark.parametrize("blocks, mid, num_classes", ARCHS)
def test_load_weights_plain_state_dict_matches_reference(tmp_path, blocks, mid, num_classes):
    ref = _reference(blocks, mid, num_classes)
    path = tmp_path / "ref.pt"
    torch.save(ref.state_dict(), path)

    params, state, meta, arch = load_weights(path)
    assert arch == model.Arch(blocks, mid, num_classes)
    assert meta == {}
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    logits, _ = model.apply(params, state, x, train=False)
    with torch.no_grad():
        expected = ref(x)
    assert logits.shape == (4, num_classes)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_project_checkpoint_arch_comes_from_shapes_not_config(tmp_path):
    blocks, mid, num_classes = (1, 2, 3), 4, 10
    ref = _reference(blocks, mid, num_classes)
    arch = model.Arch(blocks, mid, num_classes)
    params, state = from_state_dict(ref.state_dict(), arch)
    path = tmp_path / "best.ckpt"
    # a config that disagrees with the tensors: it must be ignored
    save_checkpoint(path, params, state, config={"model": {"blocks": [3, 3, 3], "bottleneck_mid": 16}}, epoch=4)

    loaded_p, loaded_s, meta, got = load_weights(path)
    assert got == arch
    assert meta["epoch"] == 4
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model.apply(loaded_p, loaded_s, x, train=False)[0], ref(x), atol=1e-5, rtol=1e-5)


def test_load_weights_explicit_arch_still_checked(tmp_path):
    path = tmp_path / "ref.pt"
    torch.save(_reference((1, 2, 3), 4, 10).state_dict(), path)
    _, _, _, arch = load_weights(path, model.Arch((1, 2, 3), 4, 10))
    assert arch == model.Arch((1, 2, 3), 4, 10)
    with pytest.raises(CheckpointError, match="layer1.0.conv1.weight") as exc:
        load_weights(path, model.Arch((1, 2, 3), 8, 10))
    assert "\n" not in str(exc.value)


def test_missing_fc_weight():
    sd = _reference((1, 1, 1), 4, 10).state_dict()
    del sd["fc.weight"]
    with pytest.raises(CheckpointError, match="missing key 'fc.weight'") as exc:
        arch_from_state_dict(sd)
    assert "\n" not in str(exc.value)


def test_stage_without_blocks():
    sd = {k: v for k, v in _reference((1, 1, 1), 4, 10).state_dict().items() if not k.startswith("layer2.")}
    with pytest.raises(CheckpointError, match="missing key 'layer2.0.conv1.weight'"):
        arch_from_state_dict(sd)


def test_malformed_shape_named():
    sd = _reference((1, 1, 1), 4, 10).state_dict()
    sd["fc.weight"] = torch.zeros(10)
    with pytest.raises(CheckpointError, match="'fc.weight'.*shape \\(10,\\)"):
        arch_from_state_dict(sd)


def test_empty_dict():
    with pytest.raises(CheckpointError, match="empty") as exc:
        arch_from_state_dict({})
    assert "\n" not in str(exc.value)


def test_random_dict_of_tensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {f"w{i}": torch.randn(3, 4, generator=g) for i in range(5)}
    with pytest.raises(CheckpointError, match="missing key 'layer1.0.conv1.weight'") as exc:
        arch_from_state_dict(sd)
    assert "\n" not in str(exc.value)
    path = tmp_path / "random.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"random\.pt.*missing key 'layer1.0.conv1.weight'"):
        load_weights(path)


def test_extra_block_beyond_gap_is_rejected_by_the_shape_check(tmp_path):
    """A stage numbered 0, 2 (no 1) counts one block; the stray block is an unexpected key, not silently dropped."""
    sd = _reference((3, 1, 1), 4, 10).state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("layer1.1.")}
    path = tmp_path / "gap.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="unexpected key 'layer1.2"):
        load_weights(path)
