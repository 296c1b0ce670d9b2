"""An ensemble's scores from its members' log-probabilities against ``F.cross_entropy`` and the softmax mean
computed directly in float64, including predictions so confidently wrong that float32 probabilities underflow."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cifar100_func.runtime.predict import mean_log_probs, scores


def _logits(k: int, n: int = 64, c: int = 10, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, n, c, generator=g, dtype=torch.float64) * scale


def test_one_model_equals_cross_entropy_even_far_below_float32():
    z = _logits(1, scale=150.0)  # losses of hundreds: exp(-loss) is 0 in float32
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    assert float((z[0].float().softmax(-1).gather(1, y[:, None]) == 0).sum()) > 0  # the case the design is for
    got = scores(z.log_softmax(-1).float(), y)
    want = F.cross_entropy(z[0], y).item()
    assert abs(got["loss"] - want) <= 1e-6 * want
    assert got["acc"] == (z[0].argmax(-1) == y).double().mean().item()
    assert got["top5_acc"] == (z[0].topk(5, -1).indices == y[:, None]).any(-1).double().mean().item()


def test_weighted_ensemble_equals_the_float64_softmax_mean():
    z = _logits(3)
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(2))
    w = [0.5, 0.25, 0.25]
    want = sum(wj * z[j].softmax(-1) for j, wj in enumerate(w))
    torch.testing.assert_close(mean_log_probs(z.log_softmax(-1), w).exp(), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(mean_log_probs(z.log_softmax(-1), w), want.log(), rtol=1e-12, atol=0)
    got = scores(z.log_softmax(-1), y, w)
    assert abs(got["loss"] - float(-want.gather(1, y[:, None]).log().mean())) < 1e-12
    assert got["acc"] == (want.argmax(-1) == y).double().mean().item()
    plain = scores(z.log_softmax(-1), y)  # no weights: the plain mean
    assert abs(plain["loss"] - float(-(z.softmax(-1).mean(0)).gather(1, y[:, None]).log().mean())) < 1e-12


def test_ensemble_weights_are_checked():
    z = _logits(2).log_softmax(-1)
    for bad in ([1.0], [1.0, -0.5], [0.0, 0.0], [float("nan"), 1.0]):
        with pytest.raises(ValueError, match="ensemble weights"):
            mean_log_probs(z, bad)
    # a zero weight leaves a member out, as the mean of the others
    torch.testing.assert_close(mean_log_probs(z, [1.0, 0.0]), z[0], rtol=1e-12, atol=0)
