"""Weight averaging against torch.optim.swa_utils on the reference nn.Module (benchmarks/reference.py), in fp64:
the EMA kept in the optimiser's state against ``AveragedModel`` with an EMA ``multi_avg_fn`` driven by
``torch.optim.SGD``, step by step; recomputed batch-norm statistics against ``update_bn``."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from torch.utils._pytree import tree_leaves, tree_map

from benchmarks.reference import BottleneckNetRef
from cifar100_func.core import model, optim, trees
from cifar100_func.core.step import averaged_trees, guarded, make_train_step, recompute_bn
from cifar100_func.config import Config, load_config
from cifar100_func.core.hyper import Hyper
from cifar100_func.data.dataset import Split
from cifar100_func.data.loader import bn_batches
from cifar100_func.runtime.from_config import pipeline
from cifar100_func.runtime import recipe
from cifar100_func.runtime.interop import from_state_dict, to_state_dict

ARCH = model.Arch((1, 1, 1), 4, 10)
LR, WD, MOMENTUM, STEPS = 0.05, 5e-4, 0.9, 6


def _data(step: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def _start(seed: int = 0):
    params, state = model.init(ARCH, torch.Generator().manual_seed(seed))
    sd = to_state_dict(params, state)
    ref = BottleneckNetRef(ARCH.blocks, ARCH.mid, ARCH.num_classes).double()
    ref.load_state_dict(sd)
    return *from_state_dict(sd, ARCH, torch.float64), ref


def _warmup_ema(decay: float):
    """An EMA ``multi_avg_fn`` with TensorFlow's warm-up: ``min(decay, (1 + n) / (10 + n))``, ``n`` averaged."""

    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        for e, c in zip(ema, current):
            if e.is_floating_point():
                e.lerp_(c, 1 - d)
            else:
                e.copy_(c)

    return update


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_with_averaged_statistics_matches_averaged_model(warmup):
    decay = 0.8  # the step itself differs from the module by ~1e-8 after 6 steps (fp64 conv gradients)
    params, state, ref = _start()
    opt = optim.sgd(LR, WD, MOMENTUM, True, average=optim.Averaging(decay, warmup=warmup, model_state=True))
    step = make_train_step(opt, precision="fp64")
    o = opt.init(params, state)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WD,
                              foreach=False)
    avg_fn = _warmup_ema(decay) if warmup else get_ema_multi_avg_fn(decay)
    ema = AveragedModel(ref, multi_avg_fn=avg_fn, use_buffers=True)
    ref.train()
    for t in range(STEPS):
        x, y = _data(t)
        ref_opt.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        ref_opt.step()
        ema.update_parameters(ref)
        params, state, o, _, _ = step(params, state, o, x, y)

        got = to_state_dict(optim.averaged(o), optim.averaged_model_state(o))
        want = ema.module.state_dict()
        assert list(got) == list(want)
        for k, v in want.items():
            if v.is_floating_point():  # AveragedModel averages the integer batch counts too; ours keeps the last
                torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-7, msg=f"step {t + 1}: {k}")
        torch.testing.assert_close(to_state_dict(params, state)["fc.weight"], ref.fc.weight.detach())
    # the averaged weights load into the reference module and predict as AveragedModel does
    avg_ref = BottleneckNetRef(ARCH.blocks, ARCH.mid, ARCH.num_classes).double()
    avg_ref.load_state_dict(to_state_dict(optim.averaged(o), optim.averaged_model_state(o)))
    x, _ = _data(99)
    torch.testing.assert_close(avg_ref.eval()(x), ema.eval()(x))


def test_without_averaging_the_state_and_the_update_are_unchanged():
    params, model_state, _ = _start()
    plain = optim.sgd(LR, WD, MOMENTUM)
    assert optim.averaged(plain.init(params)) is None and isinstance(plain.init(params), optim.OptState)
    averaging = optim.sgd(LR, WD, MOMENTUM, average=optim.Averaging(0.9))
    a, b = plain.init(params), averaging.init(params)
    assert optim.averaged_model_state(b) is None
    grads = trees.to(params, "cpu")
    pa, _ = plain.update(grads, a, params)
    pb, b = averaging.update(grads, b, params)
    assert all(torch.equal(u, v) for u, v in zip(tree_leaves(pa), tree_leaves(pb)))
    assert all(torch.equal(u, v) for u, v in zip(tree_leaves(optim.averaged(b)), tree_leaves(pb)))  # first: a copy
    # every leaf of the state is a tensor (what moving, stacking and guarding a state need)
    with_bn = optim.sgd(LR, average=optim.Averaging(0.9, model_state=True))
    for o in (b, averaging.init(params), with_bn.init(params, model_state)):
        assert all(isinstance(t, torch.Tensor) for t in tree_leaves(o))
        assert tree_leaves(trees.to(trees.stack([o, o]), "cpu"))
    with pytest.raises(ValueError, match="model state"):
        optim.sgd(LR, average=optim.Averaging(0.9, model_state=True)).init(params)


def test_a_stack_averages_each_member_as_alone():
    decay = 0.7
    opt = optim.adam(0.01, 1e-4, average=optim.Averaging(decay, warmup=True, model_state=True))
    step = make_train_step(opt, precision="fp64")
    starts = [_start(seed)[:2] for seed in (0, 1)]
    alone = []
    for p, s in starts:
        o = opt.init(p, s)
        for t in range(2):
            p, s, o, _, _ = step(p, s, o, *_data(t, 4))
        alone.append(o)
    P = trees.stack([p for p, _ in starts])
    S = trees.stack([s for _, s in starts])
    O = trees.stack([opt.init(p, s) for p, s in starts])
    vstep = guarded(torch.func.vmap(step, in_dims=(0, 0, 0, None, None)))  # as the grid runs a stack
    active = torch.ones(2, dtype=torch.bool)
    for t in range(2):
        P, S, O, _, _, active = vstep(P, S, O, *_data(t, 4), active)
    assert bool(active.all())
    for j, o in enumerate(alone):
        for a, b in zip(tree_leaves(optim.averaged(o)), tree_leaves(trees.member(optim.averaged(O), j))):
            torch.testing.assert_close(a, b)
        for a, b in zip(tree_leaves(optim.averaged_model_state(o)),
                        tree_leaves(trees.member(optim.averaged_model_state(O), j))):
            torch.testing.assert_close(a, b)


def test_recomputed_statistics_match_update_bn():
    params, state, ref = _start()
    # trained statistics first, so that the recomputation must reset them
    step = make_train_step(optim.sgd(LR, WD, MOMENTUM), precision="fp64")
    o = optim.sgd(LR, WD, MOMENTUM).init(params)
    for t in range(2):
        params, state, o, _, _ = step(params, state, o, *_data(t))
    ref.load_state_dict(to_state_dict(params, state))
    batches = [_data(50 + i, n)[0] for i, n in enumerate((16, 16, 7))]  # a last partial batch
    update_bn([(x, 0) for x in batches], ref)
    got = to_state_dict(params, recompute_bn(params, state, batches, precision="fp64"))
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=1e-10, atol=1e-12, msg=k)
    assert int(got["stem.1.num_batches_tracked"]) == 3

    # a stack: each member as alone, the batches shared
    other, other_state, _ = _start(1)
    P, S = trees.stack([params, other]), trees.stack([state, other_state])
    stacked = recompute_bn(P, S, batches, stacked=True, precision="fp64")
    alone = [recompute_bn(p, s, batches, precision="fp64") for p, s in ((params, state), (other, other_state))]
    for j, s in enumerate(alone):
        for a, b in zip(tree_leaves(s), tree_leaves(trees.member(stacked, j))):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_config_s_ema():
    assert recipe.optimizer(Config().train, Hyper(0.01, 0.0), 10).average is None  # off by default
    tc = load_config(None, ["train.ema.decay=0.99", "train.ema.warmup=true"]).train
    assert recipe.optimizer(tc, Hyper(0.01, 0.0), 10).average == optim.Averaging(0.99, True, model_state=True)
    tc = load_config(None, ["train.ema.decay=0.99", "train.ema.bn=recompute"]).train
    assert recipe.optimizer(tc, Hyper(0.01, 0.0), 10).average == optim.Averaging(0.99, False, model_state=False)


def test_the_trees_to_validate():
    params, state, _ = _start()
    batches = [_data(60)[0]]
    plain = optim.sgd(LR, WD, MOMENTUM)
    got = averaged_trees(params, state, plain.init(params), batches)
    assert got[0] is params and got[1] is state
    grads = tree_map(torch.ones_like, params)
    for bn_alongside in (True, False):
        opt = optim.sgd(LR, WD, MOMENTUM, average=optim.Averaging(0.5, model_state=bn_alongside))
        o = opt.init(params, state)
        new, o = opt.update(grads, o, params, model_state=state)
        new, o = opt.update(grads, o, new, model_state=state)
        got_p, got_s = averaged_trees(new, state, o, iter(batches), precision="fp64")
        assert got_p is optim.averaged(o)
        want_s = state if bn_alongside else recompute_bn(got_p, state, batches, precision="fp64")
        for a, b in zip(tree_leaves(got_s), tree_leaves(want_s)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_batch_norm_recomputation_batches_are_whole():
    """``update_bn`` weighs every batch alike, so the loop's batches for it are of one size: the first images,
    rounded down to whole batches (512 images in batches of 500 once gave a 12-image batch half the weight)."""
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (23, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(23))
    cfg = Config()
    pipe = pipeline(cfg, "cpu")
    mean, std = (torch.tensor(v, dtype=torch.float64).view(3, 1, 1)
                 for v in (cfg.preprocess.mean, cfg.preprocess.std))
    by_hand = (split.x.double() / 255 - mean) / std
    for images, batch, sizes in ((10, 4, [4, 4]), (512, 500, [23]), (3, 500, [3]), (23, 5, [5] * 4)):
        got = list(bn_batches(split, pipe, images, batch))
        assert [len(x) for x in got] == sizes, (images, batch)
        torch.testing.assert_close(torch.cat(got).double(), by_hand[: sum(sizes)], rtol=0, atol=1e-5)
