"""Batches straight from device-resident uint8 tensors: a seeded permutation per epoch, augmentation and
normalisation as batched tensor code (the airbench way: no DataLoader, no worker processes, no PIL).

Randomness for epoch ``e`` comes from generators seeded by ``(seed, "order"/"augment", e)``, so any epoch
can be replayed on its own: this is what makes ``--resume`` give the same result as an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import torch

from ..core import augment as aug
from ..core.augment import Augmentation
from .dataset import Split
from ..core.seeding import generator


@dataclass(frozen=True)
class Pipeline:
    """What turns uint8 batches into model inputs: normalisation statistics and augmentation (the memory format is
    the backend's choice, :meth:`.backend.Runner.batch`)."""

    mean: torch.Tensor
    std: torch.Tensor
    augment: Augmentation

    @staticmethod
    def create(mean: Sequence[float], std: Sequence[float], augment: Augmentation,
               device: torch.device | str) -> "Pipeline":
        """Per-channel normalisation statistics of the images in [0, 1], and the augmentation's settings."""
        return Pipeline(torch.tensor(mean, device=device), torch.tensor(std, device=device), augment)

    def plain(self) -> "Pipeline":
        """The same pipeline without augmentation (a final phase on plain images)."""
        return replace(self, augment=replace(self.augment, enabled=False))

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return aug.normalize(x, self.mean, self.std)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full training batches per epoch (the last partial batch is dropped; one short batch if n < batch)."""
    return max(1, n // batch_size)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=generator(seed, "order", epoch))


def train_batches(split: Split, pipe: Pipeline, batch_size: int, seed: int, epoch: int,
                  start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Augmented, normalised training batches of epoch ``epoch``, from its step ``start_step`` on (a run that
    continues in the middle of an epoch gets the very batches it would have had)."""
    n = len(split)
    device = split.x.device
    order = epoch_order(n, seed, epoch)
    params = None
    if pipe.augment.enabled:
        params = aug.sample_params(n, pipe.augment, generator(seed, "augment", epoch)).to(device)
        if pipe.augment.flip == "alternating":
            params = aug.with_alternating_flips(params, order, seed, epoch)
    order = order.to(device)
    bs = min(batch_size, n)
    for step in range(start_step, steps_per_epoch(n, batch_size)):
        pos = torch.arange(step * bs, (step + 1) * bs, device=device)
        idx = order[pos]
        x = aug.to_float(split.x[idx])
        if params is not None:
            p = aug.AugmentParams(**{k: v[pos] for k, v in params.__dict__.items()})
            x = aug.augment(x, p, pipe.augment)
        yield pipe.finish(x), split.y[idx]


def eval_batches(split: Split, pipe: Pipeline, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised batches in order, no augmentation, the last partial batch kept."""
    for start in range(0, len(split), batch_size):
        x = aug.to_float(split.x[start : start + batch_size])
        yield pipe.finish(x), split.y[start : start + batch_size]


def bn_batches(split: Split, pipe: Pipeline, images: int, batch_size: int) -> Iterator[torch.Tensor]:
    """The first ``images`` of ``split`` (rounded down to whole batches), normalised, in batches of one size:
    ``min(batch_size, images)``. A cumulative average of batch statistics (``update_bn``) weighs every batch alike,
    so a short last batch would count as much as a full one."""
    n = min(images, len(split))
    size = min(batch_size, n)
    for x, _ in eval_batches(split.head(n // size * size), pipe, size):
        yield x
