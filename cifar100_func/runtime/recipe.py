"""The one translation from a config's training recipe (``train.optimizer``, ``train.scheduler``,
``train.label_smoothing``, ``train.ema``) to the core's plain arguments: each model's :class:`.optim.Optimizer`,
with its hyper-parameters, schedules and weight averaging in its state. The core (``optim``, ``schedules``,
``hyper``, ``step``) knows nothing of the config schema."""

from __future__ import annotations

from typing import Sequence

from ..config import Config, EmaConfig, OptimizerConfig, SchedulerConfig, TrainConfig
from ..core import schedules
from ..core.hyper import Hyper, Scheduled, Value
from ..core.optim import Averaging, Optimizer, adam, matrices_only, sgd


def hyper(cfg: Config) -> Hyper:
    """The per-model values a config's ``train`` section sets (a grid point sets its own)."""
    t = cfg.train
    return Hyper(t.optimizer.lr, t.optimizer.weight_decay, t.label_smoothing)


def lr_schedule(sc: SchedulerConfig, total_steps: int) -> schedules.Schedule | None:
    """The multiplier of the peak lr at every step under ``sc``; None for a constant lr."""
    if sc.name == "cosine":
        return schedules.cosine(total_steps, sc.min_lr_ratio)
    if sc.name == "onecycle":
        return schedules.onecycle(total_steps, sc.warmup_pct, sc.div_factor, sc.final_div_factor)
    return None


def scheduled(base: float, schedule: schedules.Schedule | None, total_steps: int) -> Value:
    """``base`` times ``schedule`` over ``total_steps`` steps, or the constant ``base``."""
    return base if schedule is None else Scheduled(base, schedules.table(schedule, total_steps))


def momentum(oc: OptimizerConfig, sc: SchedulerConfig, total_steps: int) -> Value:
    """SGD's momentum: one-cycle's inverse cycle when ``cycle_momentum``, else the optimiser's constant."""
    if sc.cycle_momentum and sc.name == "onecycle":
        cycle = schedules.onecycle_momentum(total_steps, sc.warmup_pct, sc.base_momentum, sc.max_momentum)
        return Scheduled(1.0, schedules.table(cycle, total_steps))
    return oc.momentum


def averaging(ec: EmaConfig) -> Averaging | None:
    """``train.ema`` as the optimiser's weight averaging, or None (``decay`` null)."""
    if ec.decay is None:
        return None
    return Averaging(ec.decay, warmup=ec.warmup, model_state=ec.bn == "average")


def optimizer(tc: TrainConfig, h: Hyper, total_steps: int, *, lr: Value | None = None) -> Optimizer:
    """One model's optimiser for a run of ``total_steps`` steps: ``train.optimizer`` with the values of ``h``
    (peak lr, weight decay, label smoothing) under ``train.scheduler``. ``lr`` replaces the scheduler (the LR
    finder's sweep): the momentum is then the optimiser's constant one."""
    oc, sc = tc.optimizer, tc.scheduler
    if lr is not None:
        sc = SchedulerConfig(name="none")
    lr = scheduled(h.lr, lr_schedule(sc, total_steps), total_steps) if lr is None else lr
    mask = None if oc.decay_norm_and_bias else matrices_only
    loss = {"label_smoothing": h.label_smoothing}
    extra = {"norm_bias_lr_mult": oc.norm_bias_lr_mult, "average": averaging(tc.ema)}
    if oc.name == "sgd":
        return sgd(lr, h.weight_decay, momentum(oc, sc, total_steps), oc.nesterov, decay_mask=mask, loss=loss,
                   **extra)
    return adam(lr, h.weight_decay, tuple(oc.betas), oc.eps, decoupled=oc.name == "adamw", decay_mask=mask,
                loss=loss, **extra)


def optimizers(tc: TrainConfig, hypers: Sequence[Hyper], total_steps: int) -> list[Optimizer]:
    """One optimiser per model of a stack (built alike, so their states stack)."""
    return [optimizer(tc, h, total_steps) for h in hypers]
