"""Batched train-time augmentation on the device; every image draws its own parameters.

Order and semantics follow the reference pipeline ``RandomCrop(32, padding=4) -> RandomHorizontalFlip ->
ColorJitter -> ToTensor -> Normalize`` with torchvision's maths, but on a whole batch of float images in
[0, 1] at once. Parameters are drawn on the CPU from an explicit generator (so a seed gives the same images
on every device) and then applied with pure tensor functions, each testable on its own. The settings come in as
an :class:`Augmentation` (plain values, no config schema).

Flips are ``random`` (a coin per image and epoch, as torchvision) or ``alternating`` (airbench): each image is
mirrored on alternate epochs, from a per-image coin drawn once from the seed (:func:`alternating_flips`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .seeding import generator

GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass(frozen=True)
class Augmentation:
    """The augmentation's settings: crop padding, flip probability, colour-jitter strengths (0: off), on or off;
    ``flip``: ``random`` or ``alternating`` (which ignores ``hflip_p``: every image is mirrored every other epoch)."""

    enabled: bool = True
    crop_padding: int = 4
    hflip_p: float = 0.5
    flip: str = "random"
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1


@dataclass(frozen=True)
class AugmentParams:
    """Per-image random parameters for a batch of N images (all tensors have leading dimension N)."""

    top: torch.Tensor  # crop offsets into the padded image, in [0, 2 * padding]
    left: torch.Tensor
    flip: torch.Tensor  # bool
    brightness: torch.Tensor  # multiplicative factors, 1 = unchanged
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor  # additive hue shift in turns, 0 = unchanged
    order: torch.Tensor  # (N, 4): the order in which the four colour transforms are applied

    def to(self, device: torch.device | str) -> "AugmentParams":
        return AugmentParams(**{k: v.to(device) for k, v in self.__dict__.items()})


def sample_params(n: int, settings: Augmentation, generator: torch.Generator) -> AugmentParams:
    """Draw parameters for ``n`` images as torchvision's RandomCrop/RandomHorizontalFlip/ColorJitter do."""
    g = generator

    def factor(strength: float) -> torch.Tensor:
        return 1.0 + strength * (2.0 * torch.rand(n, generator=g) - 1.0)

    pad = settings.crop_padding
    return AugmentParams(
        top=torch.randint(0, 2 * pad + 1, (n,), generator=g),
        left=torch.randint(0, 2 * pad + 1, (n,), generator=g),
        flip=torch.rand(n, generator=g) < settings.hflip_p,
        brightness=factor(settings.brightness),
        contrast=factor(settings.contrast),
        saturation=factor(settings.saturation),
        hue=settings.hue * (2.0 * torch.rand(n, generator=g) - 1.0),
        order=torch.argsort(torch.rand(n, 4, generator=g), dim=1),
    )


def alternating_flips(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Whether each of ``n`` images (by index in its split) is mirrored in ``epoch``: a coin per image drawn once
    from ``seed``, XOR the epoch's parity, so over any two consecutive epochs every image is seen both ways."""
    coins = torch.rand(n, generator=generator(seed, "alternating_flip")) < 0.5
    return coins ^ bool(epoch % 2)


def with_alternating_flips(p: AugmentParams, order: torch.Tensor, seed: int, epoch: int) -> AugmentParams:
    """``p`` (drawn for the positions of an epoch's ``order``) with the flips of :func:`alternating_flips` for the
    images at those positions; every other parameter, and so the random stream, unchanged."""
    flips = alternating_flips(len(order), seed, epoch)[order.cpu()]
    return replace(p, flip=flips.to(p.flip.device))


# ------------------------------------------------------------------------------- geometric transforms
def random_crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad each image by ``padding`` pixels, then cut the HxW window at (top[i], left[i])."""
    if padding == 0:
        return x
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images whose ``flip`` flag is set."""
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


# ------------------------------------------------------------------------------- colour transforms
def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = x.unbind(dim=1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor[:, None, None, None]
    return (f * x + (1.0 - f) * other).clamp(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor[:, None, None, None]).clamp(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with the mean of its own grayscale version."""
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> HSV with hue in [0, 1) turns (channels on dim 1)."""
    r, g, b = x.unbind(dim=1)
    vmax = x.amax(dim=1)
    chroma = vmax - x.amin(dim=1)
    gray = chroma == 0
    sat = chroma / torch.where(gray, torch.ones_like(vmax), vmax)
    c = torch.where(gray, torch.ones_like(chroma), chroma)
    # hue sector by which channel holds the maximum (red wins ties, then green)
    is_r = vmax == r
    is_g = (vmax == g) & ~is_r
    is_b = ~is_r & ~is_g
    hue = (
        is_r * ((g - b) / c)
        + is_g * (2.0 + (b - r) / c)
        + is_b * (4.0 + (r - g) / c)
    )
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    return torch.stack((hue, sat, vmax), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(dim=1)
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # (r, g, b) for sectors 0..5: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    table = torch.stack(
        (
            torch.stack((v, q, p, p, t, v), dim=1),
            torch.stack((t, v, v, q, p, p), dim=1),
            torch.stack((p, p, t, v, v, q), dim=1),
        ),
        dim=1,
    )  # (N, 3, 6, H, W)
    index = sector[:, None, None].expand(-1, 3, 1, -1, -1)
    return table.gather(2, index).squeeze(2)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each image by ``shift[i]`` turns (torchvision semantics, shift in [-0.5, 0.5])."""
    hsv = rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, 0] + shift[:, None, None], 1.0)
    return hsv_to_rgb(torch.cat((hue[:, None], hsv[:, 1:]), dim=1))


def _blend_pass(x: torch.Tensor, factor: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
    """One brightness/contrast/saturation per image (``op[i]``) as a single blend; factor 1 = identity."""
    gray = grayscale(x)
    sel = op[:, None, None, None]
    mean = gray.mean(dim=(1, 2, 3), keepdim=True) * (sel == CONTRAST)  # target 0 for brightness
    return _blend(x, torch.where(sel == SATURATION, gray, mean), factor)


def color_jitter(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Apply brightness, contrast, saturation and hue in each image's own random order.

    The three factor ops are one blend with a per-image target (0, gray mean, gray), so the batch takes
    3 blend passes, ONE hue pass, then 3 more: blend k of an image (its order with hue removed) runs
    before hue if k < its hue position, else after. No data-dependent shapes or host syncs.
    """
    hue_pos = (p.order == HUE).to(torch.int64).argmax(dim=1, keepdim=True)  # (N, 1)
    k = torch.arange(3, device=p.order.device)
    ops = p.order.gather(1, k + (k >= hue_pos))  # (N, 3): the blend ops in order, hue skipped
    factors = torch.stack((p.brightness, p.contrast, p.saturation), dim=1).gather(1, ops)
    before = k < hue_pos
    one = torch.ones_like(factors)
    pre, post = torch.where(before, factors, one), torch.where(before, one, factors)
    for i in range(3):
        x = _blend_pass(x, pre[:, i], ops[:, i])
    x = adjust_hue(x, p.hue)
    for i in range(3):
        x = _blend_pass(x, post[:, i], ops[:, i])
    return x


# ------------------------------------------------------------------------------- pipelines
def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1] (as ``ToTensor``)."""
    return x.to(torch.float32) / 255.0


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def augment(x: torch.Tensor, p: AugmentParams, settings: Augmentation) -> torch.Tensor:
    """Crop, flip and colour-jitter a float batch in [0, 1] with the given per-image parameters."""
    x = random_crop(x, p.top, p.left, settings.crop_padding)
    x = hflip(x, p.flip)
    return color_jitter(x, p)
