"""Test-time augmentation: the views of a batch a model predicts on, and their predictions averaged.

``views(x, mode)`` takes normalised batches (B, C, H, W), or (K, B, C, H, W) for K models' own batches: ``none``
is ``[x]``; ``flip`` ``[x, mirror]``; ``flip_translate`` those two, then each of them shifted by 2 pixels right,
left, down and up (10 views). A shift is a padded crop of the *normalised* image: the pixels it brings in are
``fill``, by default 0, the normalised zero (the data set's mean colour); ``fill = -mean / std`` per channel
would bring in black, as the training crop's padding of the raw image does. :func:`average` is the mean of the
views' softmax probabilities, computed from their log-probabilities.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("none", "flip", "flip_translate")
SHIFT = 2
# (rows, columns) the content moves by: right, left, down, up
DIRECTIONS = ((0, SHIFT), (0, -SHIFT), (SHIFT, 0), (-SHIFT, 0))


def translate(x: Tensor, dy: int, dx: int, fill: float | Tensor = 0.0) -> Tensor:
    """``x`` with its content moved ``dy`` rows down and ``dx`` columns right, the uncovered border ``fill``
    (a number, or one value per channel: a tensor of shape (C,))."""
    h, w = x.shape[-2:]
    pads = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
    padded = F.pad(x, pads)
    if not (isinstance(fill, (int, float)) and fill == 0):
        inside = F.pad(torch.ones_like(x[..., :1, :, :]), pads) > 0
        fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
        padded = torch.where(inside, padded, fill)
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top:top + h, left:left + w]


def views(x: Tensor, mode: str, fill: float | Tensor = 0.0) -> list[Tensor]:
    """The test-time views of a batch under ``mode`` (see the module docstring), each shaped like ``x``."""
    if mode not in MODES:
        raise ValueError(f"test-time augmentation {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "none":
        return [x]
    mirror = x.flip(-1)
    if mode == "flip":
        return [x, mirror]
    return [x, mirror] + [translate(v, dy, dx, fill) for v in (x, mirror) for dy, dx in DIRECTIONS]


def log_mean_exp(log_probs: Tensor) -> Tensor:
    """The log of the mean over the first dimension of probabilities given as log-probabilities, in log space (exact
    however small they are): views of an image, or members of an ensemble."""
    return torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])


def average(log_probs: Sequence[Tensor]) -> Tensor:
    """The log of the mean of the views' probabilities, from their log-probabilities (each (..., B, classes))."""
    return log_mean_exp(torch.stack(list(log_probs)))
