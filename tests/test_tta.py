"""Test-time views against torch.flip and torchvision's pad and crop, image by image."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from cifar100_func.core import tta


def _batch(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _shifted(img: torch.Tensor, dy: int, dx: int, fill: list[float] | float = 0.0) -> torch.Tensor:
    """torchvision: pad 2 pixels on every side with ``fill``, then crop the window whose content moved by
    (dy, dx)."""
    padded = TF.pad(img, [2, 2, 2, 2], fill=0.0)
    if fill != 0.0:  # per-channel fill: torchvision's tensor pad takes one number, so pad each channel
        padded = torch.stack([TF.pad(c[None], [2, 2, 2, 2], fill=f)[0] for c, f in zip(img, fill)])
    h, w = img.shape[-2:]
    return TF.crop(padded, 2 - dy, 2 - dx, h, w)


def _reference_views(img: torch.Tensor, mode: str, fill=0.0) -> list[torch.Tensor]:
    if mode == "none":
        return [img]
    mirror = TF.hflip(img)
    if mode == "flip":
        return [img, mirror]
    moves = [(0, 2), (0, -2), (2, 0), (-2, 0)]  # right, left, down, up
    return [img, mirror] + [_shifted(v, dy, dx, fill) for v in (img, mirror) for dy, dx in moves]


@pytest.mark.parametrize("mode, count", [("none", 1), ("flip", 2), ("flip_translate", 10)])
def test_views_of_a_batch_match_torchvision(mode, count):
    x = _batch(3, 3, 8, 8)
    got = tta.views(x, mode)
    assert len(got) == count
    for i in range(len(x)):
        for v, ref in zip(got, _reference_views(x[i], mode)):
            assert torch.equal(v[i], ref)


def test_mirror_is_torch_flip_and_a_shift_moves_content():
    x = _batch(2, 3, 6, 6)
    assert torch.equal(tta.views(x, "flip")[1], torch.flip(x, dims=[3]))
    right = tta.translate(x, 0, 2)
    assert torch.equal(right[..., 2:], x[..., :-2]) and torch.all(right[..., :2] == 0)
    up = tta.translate(x, -2, 0)
    assert torch.equal(up[..., :-2, :], x[..., 2:, :]) and torch.all(up[..., -2:, :] == 0)


def test_per_channel_fill_and_stacked_batches():
    x = _batch(2, 4, 3, 8, 8)  # K = 2 models' own batches
    fill = [-1.5, 0.25, 2.0]  # e.g. -mean / std: black in the raw image
    got = tta.views(x, "flip_translate", fill=torch.tensor(fill))
    for k in range(2):
        for i in range(4):
            for v, ref in zip(got, _reference_views(x[k, i], "flip_translate", fill)):
                assert torch.equal(v[k, i], ref)


def test_average_is_the_mean_probability_and_bad_modes_fail():
    logits = [_batch(4, 5, seed=s).double() for s in range(3)]
    mean = tta.average([z.log_softmax(-1) for z in logits]).exp()
    probs = [z.softmax(-1) for z in logits]
    torch.testing.assert_close(mean, (probs[0] + probs[1] + probs[2]) / 3)
    torch.testing.assert_close(mean.sum(-1), torch.ones(4, dtype=torch.float64))
    # a view that is confidently wrong keeps its loss: far below float32's smallest probability
    far = torch.tensor([[0.0, -200.0]], dtype=torch.float64)
    assert float(tta.average([far, far])[0, 1]) == pytest.approx(-200.0)
    with pytest.raises(ValueError, match="flip_translate"):
        tta.views(_batch(1, 3, 4, 4), "rotate")
