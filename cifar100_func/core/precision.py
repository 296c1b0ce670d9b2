"""Numeric precision as one value: the dtypes of parameters, of the computation and of the outputs.

The backend resolves a config's ``train.precision`` (``auto`` included) to one of :data:`PRECISIONS` for its device
and hands it to the step builders; nothing else branches on a precision's name.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map


@dataclass(frozen=True)
class Precision:
    """``param``: weights, BN statistics and optimiser state; ``compute``: convolutions and matmuls (autocast when it
    differs from ``param``); ``output``: logits, losses and metrics."""

    name: str
    param: torch.dtype
    compute: torch.dtype
    output: torch.dtype

    def autocast(self, device_type: str):
        """A context that runs the model in ``compute`` (a no-op when it equals ``param``)."""
        if self.compute == self.param:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.compute)

    def params(self, tree: Any) -> Any:
        """A tree's floating-point leaves in ``param``."""
        return tree_map(lambda t: t.to(self.param) if t.is_floating_point() and t.dtype != self.param else t, tree)

    def inputs(self, x: Tensor) -> Tensor:
        """A batch of images in ``param`` (autocast lowers it to ``compute`` where it pays)."""
        return x if x.dtype == self.param else x.to(self.param)

    def outputs(self, t: Tensor) -> Tensor:
        return t if t.dtype == self.output else t.to(self.output)


PRECISIONS = {
    "fp32": Precision("fp32", torch.float32, torch.float32, torch.float32),
    "bf16": Precision("bf16", torch.float32, torch.bfloat16, torch.float32),
    "fp64": Precision("fp64", torch.float64, torch.float64, torch.float64),  # numerical checks
}
