"""Class probabilities of trained models on a whole split: what every conclusion after training starts from.

A configuration's seed ensemble, the ensemble selected across a sweep, calibration and the test evaluation all read
the softmax probabilities of each model on every image, (K, N, C). With test-time views (:mod:`..core.tta`) a
model's probabilities are the mean over its views, and the plain ones (the first view) come along, so a report can
always put the plain figure beside the augmented one.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..data.dataset import Split
from ..data.loader import Pipeline, eval_batches
from .backend import Backend
from .loop import ensemble_sums, make_eval


def probabilities(params: Any, state: Any, split: Split, pipe: Pipeline, backend: Backend, *, members: int = 0,
                  batch_size: int = 500, tta: str = "none") -> dict[str, torch.Tensor]:
    """``{"none": plain, tta: with views}``: (K, N, C) float32 probabilities on the CPU of one model
    (``members=0``, K = 1) or a stack of ``members`` (trees on the backend's device), in eval mode."""
    runner = backend.runner(members or None, 0)
    fn = make_eval(backend, runner, stacked=members > 0)
    params = runner.params(params)
    plain, viewed = [], []
    with torch.no_grad():
        for x, y in eval_batches(split, pipe, batch_size):
            xs = [x]
            if tta != "none":
                from ..core.tta import views

                xs = views(x, tta)
            probs = [_stacked(fn(params, state, runner.batch(v), y)[4]).float() for v in xs]
            plain.append(probs[0].cpu())
            if tta != "none":
                viewed.append((torch.stack(probs).mean(dim=0)).cpu())
    if not plain:
        raise ValueError("probabilities: the split is empty")
    out = {"none": torch.cat(plain, dim=1)}
    if tta != "none":
        out[tta] = torch.cat(viewed, dim=1)
    return out


def _stacked(probs: torch.Tensor) -> torch.Tensor:
    """(B, C) of one model as (1, B, C); a stack's (K, B, C) as it is."""
    return probs if probs.ndim == 3 else probs[None]


def mean_probs(probs: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
    """The (weighted) mean over K models of ``probs`` (K, N, C): an ensemble's probabilities (N, C), float64."""
    k = probs.shape[0]
    w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else \
        torch.as_tensor(weights, dtype=torch.float64) / float(sum(weights))
    return (probs.double() * w.to(probs.device)[:, None, None]).sum(dim=0)


def scores(probs: torch.Tensor, y: torch.Tensor, weights: Sequence[float] | None = None) -> dict[str, float]:
    """Loss (NLL of the averaged probability), accuracy and top-5 accuracy of the (weighted) mean of ``probs``
    (K, N, C) over its K models; K = 1 is one model's."""
    loss, correct, top5, _ = ensemble_sums(mean_probs(probs, weights)[None], y.to(probs.device))
    n = max(len(y), 1)
    return {"loss": float(loss) / n, "acc": float(correct) / n, "top5_acc": float(top5) / n}
