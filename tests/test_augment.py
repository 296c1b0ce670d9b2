"""The batched augmentation against torchvision.transforms.v2.functional, applied image by image."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from cifar100_func.core import augment as aug

ATOL = 1e-5
H = W = 8


# ------------------------------------------------------------------------------------------ inputs
def _images(seed: int = 0, n: int = 6, h: int = H, w: int = W) -> torch.Tensor:
    """Random float images in [0, 1] with the awkward cases planted in them.

    image 0: all black; image 1: all gray (r = g = b, several levels); image 2: saturated (only 0s and 1s);
    image 3: channel ties (r = g > b, g = b > r, r = b > g, r = g < b, ...); the rest: uniform noise with a
    few pure-gray and exactly-0/1 pixels mixed in.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    x[0] = 0.0
    x[1] = torch.rand(1, h, w, generator=g).expand(3, h, w)
    x[2] = (torch.rand(3, h, w, generator=g) > 0.5).float()
    # ties between channels, pixel by pixel
    hi = torch.rand(h, w, generator=g) * 0.5 + 0.5
    lo = torch.rand(h, w, generator=g) * 0.5
    patterns = [
        (hi, hi, lo), (lo, hi, hi), (hi, lo, hi),  # two channels share the max
        (lo, lo, hi), (hi, lo, lo), (lo, hi, lo),  # two channels share the min
        (hi, hi, hi), (torch.ones_like(hi), torch.ones_like(hi), lo),
    ]
    tie = torch.empty(3, h, w)
    for k in range(h * w):
        i, j = divmod(k, w)
        r, gg, b = patterns[k % len(patterns)]
        tie[:, i, j] = torch.stack((r[i, j], gg[i, j], b[i, j]))
    x[3] = tie
    for k in range(4, n):
        x[k, :, 0, :] = x[k, 0, 0, :]  # a gray row
        x[k, :, 1, 0] = 1.0
        x[k, :, 1, 1] = 0.0
        x[k, 0, 2, :] = 1.0  # a saturated red row
    return x


def _factors(n: int, low: float, high: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = low + (high - low) * torch.rand(n, generator=g)
    return f


def _check(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    err = (got - want).abs().max().item()
    assert err <= ATOL, f"{what}: max abs difference {err:.3g} > {ATOL}"


# --------------------------------------------------------------------------------- geometric ops
@pytest.mark.parametrize("padding", [0, 1, 4])
def test_random_crop_matches_torchvision_pad_crop(padding):
    x = _images(1, n=8)
    g = torch.Generator().manual_seed(11)
    top = torch.randint(0, 2 * padding + 1, (8,), generator=g)
    left = torch.randint(0, 2 * padding + 1, (8,), generator=g)
    if padding:  # make sure the extreme offsets are covered
        top[:4] = torch.tensor([0, 0, 2 * padding, 2 * padding])
        left[:4] = torch.tensor([0, 2 * padding, 0, 2 * padding])
    got = aug.random_crop(x, top, left, padding)
    for i in range(x.shape[0]):
        padded = TF.pad(x[i], [padding], fill=0) if padding else x[i]
        want = TF.crop(padded, int(top[i]), int(left[i]), H, W)
        _check(got[i], want, f"crop image {i} (padding={padding}, top={int(top[i])}, left={int(left[i])})")


def test_random_crop_non_square():
    x = _images(2, n=4, h=6, w=10)
    top = torch.tensor([0, 3, 6, 1])
    left = torch.tensor([6, 0, 2, 5])
    got = aug.random_crop(x, top, left, 3)
    for i in range(4):
        want = TF.crop(TF.pad(x[i], [3], fill=0), int(top[i]), int(left[i]), 6, 10)
        _check(got[i], want, f"non-square crop image {i}")


def test_hflip_matches_torchvision():
    x = _images(3, n=6)
    flip = torch.tensor([True, False, True, True, False, False])
    got = aug.hflip(x, flip)
    for i in range(6):
        want = TF.horizontal_flip(x[i]) if flip[i] else x[i]
        _check(got[i], want, f"hflip image {i} (flip={bool(flip[i])})")


# ---------------------------------------------------------------------------------- colour ops
@pytest.mark.parametrize(
    "ours, theirs, low, high",
    [
        (aug.adjust_brightness, TF.adjust_brightness, 0.0, 2.0),
        (aug.adjust_contrast, TF.adjust_contrast, 0.0, 2.0),
        (aug.adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
    ],
    ids=["brightness", "contrast", "saturation"],
)
def test_factor_ops_match_torchvision(ours, theirs, low, high):
    x = _images(4, n=8)
    f = _factors(8, low, high, seed=5)
    f[0], f[1], f[2] = 1.0, low, high  # identity and the extremes
    got = ours(x, f)
    for i in range(x.shape[0]):
        want = theirs(x[i], float(f[i]))
        _check(got[i], want, f"{ours.__name__} image {i} (factor={float(f[i]):.4f})")


def test_hue_matches_torchvision():
    x = _images(6, n=8)
    shift = _factors(8, -0.5, 0.5, seed=7)
    shift[:4] = torch.tensor([0.0, -0.5, 0.5, 0.25])
    got = aug.adjust_hue(x, shift)
    for i in range(x.shape[0]):
        want = TF.adjust_hue(x[i], float(shift[i]))
        _check(got[i], want, f"adjust_hue image {i} (shift={float(shift[i]):.4f})")


@pytest.mark.parametrize("shift", [-0.5, -0.3, -1e-7, 0.0, 1e-7, 1 / 6, 1 / 3, 0.5])
def test_hue_on_every_image_kind(shift):
    """Every planted case (black, gray, saturated, channel ties) under the same shift."""
    x = _images(8, n=5)
    got = aug.adjust_hue(x, torch.full((5,), shift))
    for i in range(5):
        _check(got[i], TF.adjust_hue(x[i], shift), f"adjust_hue image {i} (shift={shift})")


def test_hue_zero_shift_is_identity():
    x = _images(9, n=5)
    got = aug.adjust_hue(x, torch.zeros(5))
    _check(got, x, "adjust_hue(x, 0)")


# -------------------------------------------------------------------------------- colour jitter
_TV_OPS = {
    aug.BRIGHTNESS: lambda img, p, i: TF.adjust_brightness(img, float(p.brightness[i])),
    aug.CONTRAST: lambda img, p, i: TF.adjust_contrast(img, float(p.contrast[i])),
    aug.SATURATION: lambda img, p, i: TF.adjust_saturation(img, float(p.saturation[i])),
    aug.HUE: lambda img, p, i: TF.adjust_hue(img, float(p.hue[i])),
}


def _tv_jitter(img: torch.Tensor, p: aug.AugmentParams, i: int) -> torch.Tensor:
    for op in p.order[i].tolist():
        img = _TV_OPS[op](img, p, i)
    return img


def _strong_params(n: int, seed: int, order: torch.Tensor | None = None) -> aug.AugmentParams:
    """Large factors so that applying the ops in the wrong order gives clearly different images."""
    cfg = aug.Augmentation(crop_padding=2, hflip_p=0.5, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.4)
    p = aug.sample_params(n, cfg, torch.Generator().manual_seed(seed))
    if order is not None:
        p = aug.AugmentParams(**{**p.__dict__, "order": order})
    return p


def test_color_jitter_applies_each_images_own_order():
    perms = torch.tensor(list(itertools.permutations(range(4))))  # all 24 orders, one per image
    n = perms.shape[0]
    x = _images(10, n=n)
    p = _strong_params(n, seed=12, order=perms)
    got = aug.color_jitter(x, p)
    for i in range(n):
        _check(got[i], _tv_jitter(x[i], p, i), f"color_jitter image {i} (order={perms[i].tolist()})")


def test_color_jitter_order_matters():
    """Guard for the test above: with these parameters, different orders really give different images."""
    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(3)).expand(2, -1, -1, -1).clone()
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    p = _strong_params(1, seed=12)
    p = aug.AugmentParams(**{k: v.expand(2, *v.shape[1:]) for k, v in p.__dict__.items()} | {"order": order})
    out = aug.color_jitter(x, p)
    assert (out[0] - out[1]).abs().max() > 1e-2


def test_color_jitter_with_sampled_params():
    n = 16
    x = _images(13, n=n)
    p = _strong_params(n, seed=14)
    got = aug.color_jitter(x, p)
    for i in range(n):
        _check(got[i], _tv_jitter(x[i], p, i), f"color_jitter image {i} (order={p.order[i].tolist()})")


def test_color_jitter_random_batch_matches_per_image_reference():
    """64 random images, random orders and factors (hue first, last and in between) vs a per-image loop."""
    n = 64
    g = torch.Generator().manual_seed(20)
    x = torch.rand(n, 3, 16, 16, generator=g)
    order = torch.argsort(torch.rand(n, 4, generator=g), dim=1)
    order[:4] = torch.tensor([[3, 0, 1, 2], [2, 3, 1, 0], [1, 0, 3, 2], [0, 2, 1, 3]])  # hue at each position
    p = _strong_params(n, seed=21, order=order)
    hue_pos = (order == aug.HUE).nonzero()[:, 1]
    assert set(hue_pos.tolist()) == {0, 1, 2, 3}
    got = aug.color_jitter(x, p)
    for i in range(n):
        want = x[i]
        for op in order[i].tolist():
            if op == aug.BRIGHTNESS:
                want = TF.adjust_brightness(want, float(p.brightness[i]))
            elif op == aug.CONTRAST:
                want = TF.adjust_contrast(want, float(p.contrast[i]))
            elif op == aug.SATURATION:
                want = TF.adjust_saturation(want, float(p.saturation[i]))
            else:
                want = TF.adjust_hue(want, float(p.hue[i]))
        _check(got[i], want, f"color_jitter image {i} (order={order[i].tolist()})")


def test_augment_pipeline_matches_torchvision():
    cfg = aug.Augmentation(crop_padding=4, hflip_p=0.5, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)
    n = 12
    x = _images(15, n=n)
    p = aug.sample_params(n, cfg, torch.Generator().manual_seed(16))
    got = aug.augment(x, p, cfg)
    for i in range(n):
        img = TF.crop(TF.pad(x[i], [cfg.crop_padding], fill=0), int(p.top[i]), int(p.left[i]), H, W)
        if bool(p.flip[i]):
            img = TF.horizontal_flip(img)
        img = _tv_jitter(img, p, i)
        _check(got[i], img, f"augment image {i}")


# ------------------------------------------------------------------------------ to_float / normalize
def test_normalize_matches_torchvision():
    x = _images(17, n=4)
    mean = torch.tensor([0.5071, 0.4867, 0.4408])
    std = torch.tensor([0.2675, 0.2565, 0.2761])
    got = aug.normalize(x, mean, std)
    for i in range(4):
        _check(got[i], TF.normalize(x[i], mean.tolist(), std.tolist()), f"normalize image {i}")


def test_to_float_matches_to_dtype():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, -1, -1).contiguous()
    got = aug.to_float(x)
    want = TF.to_dtype(x, torch.float32, scale=True)
    _check(got, want, "to_float")
    assert got.min() == 0.0 and got.max() == 1.0


def test_uint8_crop_flip_matches_torchvision():
    g = torch.Generator().manual_seed(18)
    n, pad = 8, 4
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    x[0] = 0
    x[1] = 255
    top = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    flip[:2] = torch.tensor([True, False])
    got = aug.hflip(aug.random_crop(aug.to_float(x), top, left, pad), flip)
    for i in range(n):
        img = TF.to_dtype(x[i], torch.float32, scale=True)
        img = TF.crop(TF.pad(img, [pad], fill=0), int(top[i]), int(left[i]), 32, 32)
        if bool(flip[i]):
            img = TF.horizontal_flip(img)
        _check(got[i], img, f"uint8 crop+flip image {i}")
    # the same crop/flip on the uint8 image, converted afterwards
    for i in range(n):
        img = TF.crop(TF.pad(x[i], [pad], fill=0), int(top[i]), int(left[i]), 32, 32)
        if bool(flip[i]):
            img = TF.horizontal_flip(img)
        _check(got[i], TF.to_dtype(img, torch.float32, scale=True), f"uint8 crop+flip (convert last) image {i}")


# ---------------------------------------------------------------------------------- sample_params
CFG = aug.Augmentation(crop_padding=3, hflip_p=0.3, brightness=0.2, contrast=0.4, saturation=0.6, hue=0.1)


def test_sample_params_shapes_and_ranges():
    n = 4000
    p = aug.sample_params(n, CFG, torch.Generator().manual_seed(0))
    for name in ("top", "left", "flip", "brightness", "contrast", "saturation", "hue"):
        assert getattr(p, name).shape == (n,), name
    assert p.order.shape == (n, 4)
    assert p.flip.dtype == torch.bool
    assert not p.top.is_floating_point() and not p.left.is_floating_point()
    for name in ("top", "left"):
        v = getattr(p, name)
        assert v.min() >= 0 and v.max() <= 2 * CFG.crop_padding, name
        # every offset in [0, 2 * padding] shows up
        assert set(v.tolist()) == set(range(2 * CFG.crop_padding + 1)), name
    for name in ("brightness", "contrast", "saturation"):
        s = getattr(CFG, name)
        v = getattr(p, name)
        assert v.min() >= 1 - s and v.max() <= 1 + s, name
        assert v.min() < 1 - 0.9 * s and v.max() > 1 + 0.9 * s, f"{name} does not span [1-s, 1+s]"
    assert p.hue.min() >= -CFG.hue and p.hue.max() <= CFG.hue
    assert p.hue.min() < -0.9 * CFG.hue and p.hue.max() > 0.9 * CFG.hue


def test_sample_params_flip_rate():
    n = 20000
    for prob in (0.0, 0.3, 0.5, 1.0):
        cfg = aug.Augmentation(hflip_p=prob)
        p = aug.sample_params(n, cfg, torch.Generator().manual_seed(1))
        rate = p.flip.float().mean().item()
        # 5 standard deviations of a binomial proportion
        tol = 5 * (prob * (1 - prob) / n) ** 0.5
        assert abs(rate - prob) <= tol, f"p={prob}: flip rate {rate}"


def test_sample_params_orders_are_permutations():
    n = 5000
    p = aug.sample_params(n, CFG, torch.Generator().manual_seed(2))
    assert (p.order.sort(dim=1).values == torch.arange(4)).all()
    seen = {tuple(r) for r in p.order.tolist()}
    assert len(seen) == 24, f"only {len(seen)} of the 24 orders seen"


def test_sample_params_zero_strengths_are_identity():
    cfg = aug.Augmentation(crop_padding=0, hflip_p=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    p = aug.sample_params(64, cfg, torch.Generator().manual_seed(3))
    assert (p.top == 0).all() and (p.left == 0).all() and not p.flip.any()
    for name in ("brightness", "contrast", "saturation"):
        assert (getattr(p, name) == 1.0).all(), name
    assert (p.hue == 0).all()
    x = _images(19, n=64)
    _check(aug.augment(x, p, cfg), x, "augment with zero strengths")


def _as_tuple(p: aug.AugmentParams) -> tuple[torch.Tensor, ...]:
    return tuple(p.__dict__[k] for k in ("top", "left", "flip", "brightness", "contrast", "saturation", "hue",
                                        "order"))


def test_sample_params_seeded():
    a = aug.sample_params(256, CFG, torch.Generator().manual_seed(123))
    b = aug.sample_params(256, CFG, torch.Generator().manual_seed(123))
    c = aug.sample_params(256, CFG, torch.Generator().manual_seed(124))
    for name, u, v in zip(("top", "left", "flip", "brightness", "contrast", "saturation", "hue", "order"),
                          _as_tuple(a), _as_tuple(b)):
        assert torch.equal(u, v), f"same seed, different {name}"
    for name, u, v in zip(("top", "left", "flip", "brightness", "contrast", "saturation", "hue", "order"),
                          _as_tuple(a), _as_tuple(c)):
        assert not torch.equal(u, v), f"different seeds, same {name}"
    # the global RNG plays no part
    torch.manual_seed(0)
    d = aug.sample_params(256, CFG, torch.Generator().manual_seed(123))
    torch.manual_seed(1)
    e = aug.sample_params(256, CFG, torch.Generator().manual_seed(123))
    assert all(torch.equal(u, v) for u, v in zip(_as_tuple(d), _as_tuple(e)))


def test_params_to_device_roundtrip():
    p = aug.sample_params(8, CFG, torch.Generator().manual_seed(4))
    q = p.to("cpu")
    assert all(torch.equal(u, v) for u, v in zip(_as_tuple(p), _as_tuple(q)))
