"""TensorBoard event files for every run the loop trains: one log folder per model (a stack's members are runs of
their own), written from the loop's hooks, so every command gets the same scalars without a loop of its own.

Scalars (x axis: the global step, 1-based): ``train/loss`` at every step, ``train/acc`` over each logging interval,
``train/lr`` at each check (the lr the optimiser's state recorded for that step); ``val/loss``, ``val/acc``,
``val/top5_acc`` and ``train/epoch_acc`` at each epoch's end.
:func:`write_hparams` adds a configuration and its final metrics to TensorBoard's hparams view.
``tensorboard --logdir runs`` shows them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .loop import Check, EpochEnd, Hooks, Plan


class Events:
    """The event writers of a plan's K models; ``start_step`` > 0 (a resumed run) drops what an interrupted run
    wrote after that step, so the curves continue without a double."""

    def __init__(self, dirs: Sequence[Path], plan: Plan, steps_per_epoch: int, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        if len(dirs) != plan.k:
            raise ValueError(f"{len(dirs)} event folders for {plan.k} models")
        self.writers = [SummaryWriter(str(d), purge_step=start_step + 1 if start_step else None) for d in dirs]
        self.steps = steps_per_epoch
        self.written = start_step  # global steps logged so far
        self.mark: tuple[int, list[int], int] | None = None  # (epoch, correct, seen) at the last check

    def check(self, c: Check, upto: int | None = None) -> None:
        """Log the steps of ``c`` not logged yet (only the first ``upto`` of the session when a hook stopped)."""
        end = c.first_step + (len(c.losses) if upto is None else min(upto, len(c.losses)))
        for g in range(self.written, end):
            for j, w in enumerate(self.writers):
                w.add_scalar("train/loss", float(c.losses[g - c.first_step, j]), g + 1)
        if end > self.written:
            before = self.mark if self.mark is not None and self.mark[0] == c.epoch else (c.epoch, [0] * len(c.correct), 0)
            for j, w in enumerate(self.writers):
                w.add_scalar("train/lr", float(c.lrs[end - 1 - c.first_step, j]), end)
                if c.correct and c.seen > before[2]:
                    w.add_scalar("train/acc", (c.correct[j] - before[1][j]) / (c.seen - before[2]), end)
        self.mark = (c.epoch, list(c.correct), c.seen)
        self.written = max(self.written, end)

    def epoch(self, e: EpochEnd) -> None:
        for w, rec in zip(self.writers, e.records):
            step = int(round(rec["epoch"] * self.steps))
            w.add_scalar("train/epoch_acc", rec["train_acc"], step)
            for key in ("val_loss", "val_acc", "val_top5_acc"):
                if key in rec:
                    w.add_scalar(key.replace("val_", "val/"), rec[key], step)
            w.flush()

    def hooks(self, inner: Hooks) -> Hooks:
        """``inner`` with the events written at its checks and epoch ends (after ``inner`` decides to stop)."""

        def check(c: Check) -> int | None:
            stop = inner.on_check(c) if inner.on_check is not None else None
            self.check(c, stop)
            return stop

        def epoch(e: EpochEnd) -> None:
            self.epoch(e)
            if inner.on_epoch is not None:
                inner.on_epoch(e)

        return Hooks(inner.check_every, check, epoch)

    def close(self) -> None:
        for w in self.writers:
            w.close()


def write_hparams(folder: Path, hparams: dict, metrics: dict) -> None:
    """One configuration and its final metrics in TensorBoard's hparams view (in the run's own folder)."""
    from torch.utils.tensorboard import SummaryWriter

    clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
    vals = {f"hparam/{k}": float(v) if v is not None and np.isfinite(v) else float("nan") for k, v in metrics.items()}
    with SummaryWriter(str(folder)) as w:
        w.add_hparams(clean, vals, run_name=".")
