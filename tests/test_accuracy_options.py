"""The speed-run options, each off by default, against a closed form or an independent reference: alternating
flips (airbench's rule), an lr multiplier for batch-norm parameters and biases (torch.optim with two param
groups), the batch norms' momentum (``nn.BatchNorm2d(momentum=...)``) and identity initialisation (a block with its
last batch norm's weight 0 is its shortcut)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten, tree_map

from benchmarks.reference import BottleneckNetRef
from cifar100_func.config import Config, load_config
from cifar100_func.core import augment as aug
from cifar100_func.core import model, optim
from cifar100_func.core.hyper import Hyper
from cifar100_func.core.seeding import generator
from cifar100_func.core.step import make_train_step
from cifar100_func.data.dataset import Split
from cifar100_func.data.loader import Pipeline, train_batches
from cifar100_func.runtime import from_config, recipe
from cifar100_func.runtime.interop import from_state_dict, to_state_dict


# ------------------------------------------------------------------------------------ alternating flips
def _airbench_flips(n: int, seed: int, epochs: int) -> list[torch.Tensor]:
    """airbench's rule, epoch after epoch: a random half mirrored in the first epoch (one coin per image from the
    seed's stream), then every image the other way round from the epoch before."""
    flipped = torch.rand(n, generator=generator(seed, "alternating_flip")) < 0.5
    out = [flipped]
    for _ in range(epochs - 1):
        flipped = ~flipped
        out.append(flipped)
    return out


def test_alternating_flips_follow_airbench():
    n, seed = 200, 7
    ours = [aug.alternating_flips(n, seed, e) for e in range(4)]
    for a, b in zip(ours, _airbench_flips(n, seed, 4)):
        assert torch.equal(a, b)
    assert torch.all(ours[0] ^ ours[1]) and 60 < int(ours[0].sum()) < 140  # each image once each way; ~half


def test_two_epochs_of_batches_show_every_image_once_flipped_once_not():
    n, bs, seed = 48, 16, 3
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    split = Split(images, torch.arange(n))  # the label says which image it is
    settings = aug.Augmentation(crop_padding=0, flip="alternating", brightness=0.0, contrast=0.0, saturation=0.0,
                                hue=0.0)
    pipe = Pipeline.create((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), settings, "cpu")
    plain = images.float() / 255
    mirrored = {}
    for epoch in (0, 1):
        for x, y in train_batches(split, pipe, bs, seed, epoch):
            for img, i in zip(x, y.tolist()):
                is_plain = torch.allclose(img, plain[i], atol=1e-5)
                assert is_plain or torch.allclose(img, plain[i].flip(-1), atol=1e-5)
                mirrored.setdefault(i, []).append(not is_plain)
    assert sorted(mirrored) == list(range(n))
    assert all(sorted(m) == [False, True] for m in mirrored.values())
    first = torch.tensor([mirrored[i][0] for i in range(n)])
    assert torch.equal(first, _airbench_flips(n, seed, 1)[0])
    # the other draws of the epoch (crop offsets, jitter) are those of random flips: the stream is unchanged
    rand = aug.sample_params(n, aug.Augmentation(), generator(seed, "augment", 0))
    alt = aug.with_alternating_flips(rand, torch.arange(n), seed, 0)
    assert torch.equal(alt.top, rand.top) and torch.equal(alt.hue, rand.hue)


def test_flip_mode_from_the_config():
    assert from_config.augmentation(Config()).flip == "random"
    assert from_config.augmentation(load_config(None, ["augment.flip=alternating"])).flip == "alternating"


# ------------------------------------------------------------------------------------ lr multiplier
def _tree(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return {"conv": r(4, 3, 3, 3), "bn": {"weight": r(4), "bias": r(4)}, "fc": {"weight": r(5, 4), "bias": r(5)}}


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_norm_bias_lr_mult_equals_two_param_groups(name):
    lr, wd, mult = 0.05, 1e-3, 4.0
    tc = load_config(None, [f"train.optimizer.name={name}", f"train.optimizer.norm_bias_lr_mult={mult}"]).train
    opt = recipe.optimizer(tc, Hyper(lr, wd), 10)
    init = _tree()
    leaves = [p.clone().requires_grad_(True) for p in tree_flatten(init)[0]]
    groups = [{"params": [p for p in leaves if p.ndim > 1]}, {"params": [p for p in leaves if p.ndim <= 1],
                                                               "lr": lr * mult}]
    o = tc.optimizer
    ref = (torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=wd)
           if name == "sgd" else
           (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(groups, lr=lr, betas=o.betas, eps=o.eps,
                                                                        weight_decay=wd))
    params, state = init, opt.init(init)
    for step in range(5):
        g = torch.Generator().manual_seed(step)
        grads = tree_map(lambda p: torch.randn(p.shape, generator=g, dtype=torch.float64), init)
        for p, gr in zip(leaves, tree_flatten(grads)[0]):
            p.grad = gr.clone()
        ref.step()
        params, state = opt.update(grads, state, params)
        for a, b in zip(tree_flatten(params)[0], leaves):
            torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)  # the lr is a float32 state


def test_lr_mult_one_is_the_single_group_chain():
    tc = Config().train
    chain = recipe.optimizer(tc, Hyper(0.01, 0.0), 10).factory(lr=torch.tensor(0.01), weight_decay=torch.tensor(0.0))
    assert len(chain.init([torch.zeros(2)])) == 3  # decay, adam, lr: no multiplier transform


# ------------------------------------------------------------------------------------ batch-norm momentum
ARCH = model.Arch((1, 1, 1), 4, 10)


def _reference(arch: model.Arch, params, state) -> BottleneckNetRef:
    ref = BottleneckNetRef(arch.blocks, arch.mid, arch.num_classes).double()
    ref.load_state_dict(to_state_dict(params, state))
    return ref


def test_bn_momentum_matches_batchnorm2d():
    cfg = load_config(None, ["model.bn_momentum=0.35", "model.blocks=[1,1,1]", "model.bottleneck_mid=4"])
    arch = from_config.arch(cfg, 10)
    assert arch == model.Arch((1, 1, 1), 4, 10, bn_momentum=0.35)
    params, state = model.init(arch, torch.Generator().manual_seed(0))
    params, state = from_state_dict(to_state_dict(params, state), arch, torch.float64)
    ref = _reference(arch, params, state)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.35
    step = make_train_step(optim.sgd(0.0, 0.0, 0.0), precision="fp64", bn_momentum=arch.bn_momentum)
    o = optim.sgd(0.0, 0.0, 0.0).init(params)
    ref.train()
    for t in range(3):
        x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        ref(x)
        params, state, o, _, _ = step(params, state, o, x, torch.zeros(6, dtype=torch.int64))
    got = to_state_dict(params, state)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=1e-10, atol=1e-12, msg=k)


def test_default_momentum_is_the_old_constant():
    assert model.Arch().bn_momentum == model.BN_MOMENTUM == 0.1 == Config().model.bn_momentum
    assert not model.Arch().identity_init and not Config().model.identity_init


# ------------------------------------------------------------------------------------ identity initialisation
def test_identity_init_zeroes_each_branch_s_last_batch_norm_only():
    arch = model.Arch((2, 1, 1), 4, 10, identity_init=True)
    plain_p, plain_s = model.init(model.Arch((2, 1, 1), 4, 10), torch.Generator().manual_seed(0))
    params, state = model.init(arch, torch.Generator().manual_seed(0))
    got, want = to_state_dict(params, state), to_state_dict(plain_p, plain_s)
    for k, v in want.items():
        if k.endswith("bn3.weight"):
            assert torch.all(got[k] == 0)
        else:
            assert torch.equal(got[k], v), k


def test_a_zero_initialised_block_is_its_shortcut_as_in_the_reference():
    arch = model.Arch((2, 1, 1), 4, 10, identity_init=True)
    params, state = model.init(arch, torch.Generator().manual_seed(1))
    params, state = from_state_dict(to_state_dict(params, state), arch, torch.float64)
    ref = BottleneckNetRef(arch.blocks, arch.mid, arch.num_classes).double()
    ref.load_state_dict(to_state_dict(*model.init(model.Arch((2, 1, 1), 4, 10), torch.Generator().manual_seed(1))))
    for block in (*ref.layer1, *ref.layer2, *ref.layer3):
        nn.init.zeros_(block.bn3.weight)  # the reference's zero-init of the residual branch
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for train in (False, True):  # eval first: the train pass moves the reference's running statistics
        ref.train(train)
        torch.testing.assert_close(model.apply(params, state, x, train=train)[0], ref(x), rtol=1e-10, atol=1e-12)
    ref.train()
    h = F.relu(torch.randn(4, 64, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    out, _ = model._block_apply(params["layer1"][1], state["layer1"][1], h, 1, True)
    torch.testing.assert_close(out, h, rtol=0, atol=0)  # no shortcut convolution: the block is the identity
    torch.testing.assert_close(ref.layer1[1](h.clone()), h, rtol=0, atol=0)
    short = ref.layer2[0].shortcut(ref.layer1(h.clone()))  # a projecting block is relu(its shortcut)
    torch.testing.assert_close(ref.layer2[0](ref.layer1(h.clone())), F.relu(short))


def test_model_options_from_the_config():
    assert from_config.model_options(Config()) == {"bn_momentum": 0.1, "identity_init": False}
    cfg = load_config(None, ["model.identity_init=true"])
    assert from_config.arch(cfg, 100, (1, 2, 3), 8) == model.Arch((1, 2, 3), 8, 100, identity_init=True)
    assert torch.all(model.init(from_config.arch(cfg, 10), torch.Generator())[0]["layer3"][0]["bn3"]["weight"] == 0)
