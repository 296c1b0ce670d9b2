"""Class log-probabilities of trained models on a whole split: what every conclusion after training starts from.

A configuration's seed ensemble, the ensemble selected across a sweep, calibration and the test evaluation all read
each model's prediction on every image, (K, N, C). An ensemble is the (weighted) mean of its members' softmax
probabilities; the predictions travel as log-probabilities, so a confidently wrong prediction keeps its true loss
instead of underflowing to a probability of zero. With test-time views (:mod:`..core.tta`) a model's prediction is
the mean of its views' probabilities, and the plain one (the first view) comes along, so a report can always put
the plain figure beside the augmented one.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..core import tta as tta_views
from ..data.dataset import Split
from ..data.loader import Pipeline, eval_batches
from .backend import Backend
from .loop import ensemble_sums, make_eval


def log_probabilities(params: Any, state: Any, split: Split, pipe: Pipeline, backend: Backend, *, members: int = 1,
                      batch_size: int = 500, tta: str = "none") -> dict[str, torch.Tensor]:
    """``{"none": plain, tta: with views}``: (K, N, C) log-probabilities on the CPU of one model (``members`` 1,
    K = 1) or a stack of ``members`` > 1 (trees on the backend's device), in eval mode; float32 (float64 when the
    precision is fp64). As in training, one model's trees are unstacked."""
    stacked = members > 1
    runner = backend.runner(members if stacked else None, 0)
    fn = make_eval(backend, runner, stacked=stacked)
    params = runner.params(params)
    plain, viewed = [], []
    with torch.no_grad():
        for x, y in eval_batches(split, pipe, batch_size):
            xs = tta_views.views(x, tta)
            preds = [_stacked(fn(params, state, runner.batch(v), y)[4]) for v in xs]
            plain.append(preds[0].cpu())
            if tta != "none":
                viewed.append(tta_views.average(preds).cpu())
    if not plain:
        raise ValueError("log_probabilities: the split is empty")
    out = {"none": torch.cat(plain, dim=1)}
    if tta != "none":
        out[tta] = torch.cat(viewed, dim=1)
    return out


def _stacked(pred: torch.Tensor) -> torch.Tensor:
    """(B, C) of one model as (1, B, C); a stack's (K, B, C) as it is."""
    return pred if pred.ndim == 3 else pred[None]


def mean_log_probs(log_probs: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
    """The log of the (weighted) mean over K models of their probabilities, from ``log_probs`` (K, N, C): an
    ensemble's log-probabilities (N, C), float64."""
    k = log_probs.shape[0]
    if weights is None:
        return tta_views.log_mean_exp(log_probs.double())
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (k,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"ensemble weights must be {k} finite values >= 0 with a positive sum, got {list(weights)}")
    log_w = (w / w.sum()).log().to(log_probs.device)
    return torch.logsumexp(log_probs.double() + log_w[:, None, None], dim=0)


def scores(log_probs: torch.Tensor, y: torch.Tensor, weights: Sequence[float] | None = None) -> dict[str, float]:
    """Loss (NLL of the averaged probability), accuracy and top-5 accuracy of the (weighted) mean over the K models
    of ``log_probs`` (K, N, C); K = 1 is one model's."""
    loss, correct, top5, _ = ensemble_sums(mean_log_probs(log_probs, weights)[None], y.to(log_probs.device))
    n = max(len(y), 1)
    return {"loss": float(loss) / n, "acc": float(correct) / n, "top5_acc": float(top5) / n}
