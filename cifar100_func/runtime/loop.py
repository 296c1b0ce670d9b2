"""The one training loop of the project, for one model or a stack of K, and the one evaluation routine.

``train(plan, data, backend)`` trains what a :class:`Plan` describes: K = 1 is the standard path (the plain step,
no vmap: the fastest kernels, channels-last, compiled), K > 1 a stack (the grid, the LR finder, an ensemble), which
the backend's executor (:mod:`.executor`) runs as one vmapped step or as the standard path's step over each member
in turn; either way every tree outside the step loop is stacked and the results are the same. What differs
between commands comes in as data (seeds, each model's optimiser with its hyper-parameters and schedules, shared or
own batches, freezing diverged members) or as small callbacks (:class:`Hooks`: a check at the logging interval that
may stop the run, an end-of-epoch hook for metrics and checkpoints). Inside an epoch nothing goes to the host
except at the logging interval: losses and accuracies accumulate on the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.utils._pytree import tree_map
from tqdm import tqdm

from ..core import model, trees
from .backend import Backend, Runner
from .executor import eval_step, train_executor
from ..data.dataset import Dataset, Split
from ..data.loader import Pipeline, bn_batches, eval_batches, steps_per_epoch, train_batches
from ..core.optim import Optimizer
from ..core.precision import Precision
from ..core.seeding import generator
from ..core.hyper import Scheduled
from ..core.step import averaged_trees, precision_of
from ..core.tta import log_mean_exp


@dataclass
class Plan:
    """What to train: K models of one architecture and everything in which commands differ, as data."""

    arch: model.Arch
    seeds: list[int]  # one per model: initial weights (and batch order and augmentation without shared_data)
    optimizers: list[Optimizer]  # one per model: its hyper-parameters and schedules (all built alike)
    epochs: int
    plain_epochs: int = 0  # the last N epochs train without augmentation
    ensemble: bool = False  # also validate the mean of the members' softmax (EpochEnd.ensemble)
    shared_data: bool = True  # one batch stream (of seeds[0]) for all models, as the reference grid
    guard: bool = False  # freeze a member whose step is not finite (else a hook must deal with a NaN loss)
    validate: bool = True  # evaluate on the validation split after each epoch
    max_steps: int | None = None  # stop after this many steps in all
    compile: bool | None = None  # None: the backend's compile policy; True/False force it (tests, benchmarks)
    grid: bool = False  # a stack of the grid search (grid.compile may decide its compiling)
    stacked: bool | None = None  # None: a stack (the backend's executor) when K > 1, the plain step for K = 1
    # optimisers that average the weights but not their batch-norm statistics: the training images (plain, the
    # first of the split, rounded down to whole batches) the averaged weights' statistics are recomputed on
    bn_images: int = 2000

    @property
    def k(self) -> int:
        return len(self.seeds)


@dataclass
class Start:
    """Where a run continues: its trees after global step ``step`` (an epoch's end, or inside an epoch) and the
    metrics so far; ``active`` (stacks) marks the members not frozen."""

    params: Any
    state: Any
    opt_state: Any
    step: int
    metrics: list[list[dict]]
    active: torch.Tensor | None = None


@dataclass
class Check:
    """What a check at the logging interval sees: the losses of every step of this session so far, (steps, K), on
    the host; the first of them is global step ``first_step`` (0-based; not 0 in a resumed run)."""

    losses: np.ndarray
    lrs: np.ndarray  # the lr of each of those steps, (steps, K), as the optimiser's state recorded it
    epoch: int
    first_step: int
    correct: list[int] = field(default_factory=list)  # per model, right answers in this epoch so far
    seen: int = 0  # training images (per model) in this epoch so far


@dataclass
class EpochEnd:
    """What the end-of-epoch hook sees; ``records`` has one metrics dict per model, the trees are the run's."""

    epoch: int  # 1-based
    records: list[dict]
    history: list[list[dict]]  # per model, every epoch's record so far (a resumed run's earlier ones too)
    params: Any
    state: Any
    opt_state: Any
    ensemble: dict | None = None  # the ensemble's validation loss, acc, top5_acc (Plan.ensemble)
    averaged: tuple[Any, Any] | None = None  # optimisers that average: the averaged (params, state), validated


@dataclass
class Hooks:
    check_every: int = 50
    on_check: Callable[[Check], int | None] | None = None  # returns n to stop, keeping the first n steps' losses
    on_epoch: Callable[[EpochEnd], None] | None = None


@dataclass
class Result:
    params: Any  # stacked trees for a stack, one model's for K = 1
    state: Any
    opt_state: Any
    metrics: list[list[dict]]  # per model, one record per epoch
    step_losses: torch.Tensor  # (steps run in this session, K), on the host
    diverged_at: list[int | None]  # global step (1-based) of each model's first rejected step
    model_images_per_sec: float
    first_step_seconds: float
    runner: str
    active: torch.Tensor  # members not frozen (shape (K,) for a stack, () for one model)
    extra: dict = field(default_factory=dict)
    averaged: tuple[Any, Any] | None = None  # optimisers that average: the averaged (params, state) at the end


stack_trees, unstack = trees.stack, trees.member  # re-exports for runtime/trainer.py; use core.trees


def init_trees(plan: Plan, precision: Precision | str, device: torch.device) -> tuple[Any, Any, Any]:
    """(params, BN state, optimiser state) of every model, stacked when the plan is a stack."""
    precision = precision_of(precision)
    inits = [precision.params(model.init(plan.arch, generator(seed, "init"))) for seed in plan.seeds]
    out = [(p, s, opt.init(p, s)) for (p, s), opt in zip(inits, plan.optimizers)]
    if _stacked(plan):
        out = [tuple(stack_trees([t[i] for t in out]) for i in range(3))]
    return tree_map(lambda t: t.to(device), out[0])


def _stacked(plan: Plan) -> bool:
    return plan.k > 1 if plan.stacked is None else plan.stacked


def ensemble_sums(log_probs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                  torch.Tensor]:
    """(loss sum, correct, top-5 correct, predictions) of an ensemble on a batch: the mean of its members' softmax
    probabilities, from their log-probabilities ``log_probs`` (K, B, C); the loss is the negative log of the mean
    probability of ``y``, computed in log space (exact however small that probability)."""
    log_mean = log_mean_exp(log_probs.double())
    loss = -log_mean.gather(-1, y[:, None]).sum()
    top5 = log_mean.topk(min(5, log_mean.shape[-1]), dim=-1).indices
    return loss, (top5[:, 0] == y).sum(), (top5 == y[:, None]).any(dim=-1).sum(), top5[:, 0]


def evaluate(eval_fn: Callable, params: Any, state: Any, split: Split, pipe: Pipeline, batch_size: int,
             runner: Runner, keep_predictions: bool = False, ensemble: bool = False) -> dict[str, Any]:
    """Loss, accuracy and top-5 accuracy of every model on a whole split (the last partial batch included): lists
    of K values; with ``keep_predictions`` also the (K, N) predicted classes; with ``ensemble`` (a stack) also
    ``res["ensemble"]``, the same metrics of the mean of the members' softmax (and its predictions, (N,))."""
    sums: list[torch.Tensor] | None = None
    ens: list[torch.Tensor] | None = None
    preds, ens_preds = [], []
    with torch.no_grad():
        for x, y in eval_batches(split, pipe, batch_size):
            out = eval_fn(params, state, runner.batch(x), y)
            parts = [t.reshape(-1) for t in out[:3]]  # (K,) whether stacked or not
            sums = parts if sums is None else [a + b for a, b in zip(sums, parts)]
            if keep_predictions:
                preds.append(out[3].reshape(-1, len(y)))
            if ensemble:
                *e, e_pred = ensemble_sums(out[4].reshape(-1, *out[4].shape[-2:]), y)
                ens = e if ens is None else [a + b for a, b in zip(ens, e)]
                ens_preds.append(e_pred)
    n = max(len(split), 1)
    if sums is None:
        raise ValueError("evaluate: the split is empty")
    loss, correct, top5 = (t.double().cpu() / n for t in sums)
    res: dict[str, Any] = {"loss": loss.tolist(), "acc": correct.tolist(), "top5_acc": top5.tolist()}
    if keep_predictions:
        res["predictions"] = torch.cat(preds, dim=1).cpu()
    if ens is not None:
        res["ensemble"] = dict(zip(("loss", "acc", "top5_acc"), (float(t) / n for t in ens)))
        if keep_predictions:
            res["ensemble"]["predictions"] = torch.cat(ens_preds).cpu()
    return res


def make_eval(backend: Backend, runner: Runner, stacked: bool) -> Callable:
    """The evaluation step as ``runner`` runs it, ``fn(runner.params(params), state, x, y)`` (a stack's: vmapped
    or member by member as its executor says, the batch shared; compiled or not: the backend's compile policy)."""
    return eval_step(precision_of(backend.precision), runner, stacked)


def _batches(plan: Plan, split: Split, pipe: Pipeline, batch_size: int, epoch: int, skip: int):
    if epoch >= plan.epochs - plan.plain_epochs:
        pipe = pipe.plain()
    if plan.shared_data:
        return train_batches(split, pipe, batch_size, plan.seeds[0], epoch, skip)
    streams = [train_batches(split, pipe, batch_size, s, epoch, skip) for s in plan.seeds]
    return ((torch.stack(xs), torch.stack(ys)) for xs, ys in (zip(*batch) for batch in zip(*streams)))


def train(plan: Plan, data: Dataset, backend: Backend, pipe: Pipeline, *, batch_size: int, eval_batch_size: int,
          start: Start | None = None, hooks: Hooks | None = None, desc: str = "train", progress: bool | None = None,
          log: Callable[[str], None] = print) -> Result:
    """Train the plan's models on ``data`` (already on the backend's device); see the module docstring."""
    hooks = hooks or Hooks()
    device, k = backend.device, plan.k
    stacked = _stacked(plan)
    if plan.shared_data and len(set(plan.seeds)) != 1:
        raise ValueError("shared data needs one seed for all models")
    if not stacked and k != 1:
        raise ValueError("an unstacked plan trains one model")
    steps = steps_per_epoch(len(data.train), batch_size)
    total = steps * plan.epochs if plan.max_steps is None else min(steps * plan.epochs, plan.max_steps)
    if len(plan.optimizers) != k:
        raise ValueError(f"{len(plan.optimizers)} optimisers for {k} models")
    for name, v in plan.optimizers[0].hyper.items():
        if isinstance(v, Scheduled) and len(v.multipliers) < total:
            raise ValueError(f"the schedule of {name} has {len(v.multipliers)} steps for a run of {total}")
    runner = backend.runner(k if stacked else None, total - (start.step if start else 0), plan.compile, log,
                            grid=plan.grid)
    precision = precision_of(backend.precision)
    executor = train_executor(plan.optimizers[0], precision, runner, stacked=stacked, guard=plan.guard,
                              shared_data=plan.shared_data, bn_momentum=plan.arch.bn_momentum)
    averages = plan.optimizers[0].average is not None

    def to_validate(P: Any, S: Any, O: Any) -> tuple[Any, Any]:
        """The trees validated: the averaged weights when the optimisers average (else ``P``, ``S``)."""
        bn = bn_batches(data.train, pipe, plan.bn_images, eval_batch_size)
        return averaged_trees(P, S, O, bn, stacked=stacked, precision=precision, device_type=device.type)

    eval_fn = make_eval(backend, runner, stacked)

    active = torch.ones(k if stacked else (), dtype=torch.bool, device=device)
    if start is None:
        P, S, O = init_trees(plan, precision, device)
        base, metrics = 0, [[] for _ in range(k)]
    else:
        P, S, O = (tree_map(lambda t: t.to(device), tr) for tr in (start.params, start.state, start.opt_state))
        base, metrics = start.step, [list(m) for m in start.metrics]
        if start.active is not None:
            active = start.active.to(device).reshape(active.shape)
    first_epoch = base // steps
    carry = executor.enter(P, S, O, active)
    losses = torch.full((total, k), float("nan"), dtype=precision.output, device=device)
    lrs = torch.full((total, k), float("nan"), device=device)
    host_losses, host_lrs = np.zeros((0, k)), np.zeros((0, k))
    bar = tqdm(total=total, initial=min(base, total), desc=desc, unit="step", leave=False,
               disable=(not progress) if progress is not None else None)
    train_seconds = first_step = 0.0
    g = base
    stop_at: int | None = None
    images = 0
    for epoch in range(first_epoch, plan.epochs):
        if g >= total:
            break
        t0 = time.perf_counter()
        correct = torch.zeros(k, dtype=torch.int64, device=device)
        g0, seen = g, 0
        for x, y in _batches(plan, data.train, pipe, batch_size, epoch, g - epoch * steps):
            carry, loss, c = executor.step(carry, x, y)
            if g == base:  # the first step includes compilation: keep it out of the rate
                loss.sum().item()
                first_step = time.perf_counter() - t0
            losses[g] = loss
            lrs[g] = executor.lr(carry)
            correct += c
            seen += y.shape[-1]
            g += 1
            bar.update(1)
            last = g == total or g == (epoch + 1) * steps
            if g % hooks.check_every == 0 or last:
                new = slice(base + len(host_losses), g)
                host_losses = np.concatenate([host_losses, losses[new].double().cpu().numpy()])
                host_lrs = np.concatenate([host_lrs, lrs[new].double().cpu().numpy()])
                done = time.perf_counter() - t0
                bar.set_postfix(models=k, epoch=f"{epoch + 1}/{plan.epochs}", img_s=f"{k * seen / done:.0f}",
                                loss=f"{np.nanmean(host_losses[-hooks.check_every:]):.3f}")
                if hooks.on_check is not None:
                    stop_at = hooks.on_check(Check(host_losses, host_lrs, epoch, base, correct.tolist(), seen))
                    if stop_at is not None:
                        break
            if last:
                break
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        train_seconds += dt
        images += k * seen
        if stop_at is not None:
            break
        P, S, O, active = executor.exit(carry)
        VP, VS = to_validate(P, S, O)
        val = (evaluate(eval_fn, runner.params(VP), VS, data.val, pipe, eval_batch_size, runner,
                        ensemble=plan.ensemble and stacked) if plan.validate else None)
        done = g - epoch * steps  # steps of this epoch done: a run may stop (or have started) inside one
        records = _records(epoch + 1 if done == steps else round(epoch + done / steps, 4),
                           host_losses[g0 - base:g - base], host_lrs[g - 1 - base], correct.tolist(), seen, val,
                           active.reshape(-1).tolist(), {"seconds": time.perf_counter() - t0, "train_seconds": dt,
                                   "images_per_sec": seen / dt, "runner": runner.describe()})
        for history, rec in zip(metrics, records):
            history.append(rec)
        if hooks.on_epoch is not None:
            hooks.on_epoch(EpochEnd(epoch + 1, records, metrics, P, S, O, val.get("ensemble") if val else None,
                                    (VP, VS) if averages else None))
    bar.close()
    P, S, O, active = executor.exit(carry)
    n_run = stop_at if stop_at is not None else len(host_losses)
    step_losses = torch.as_tensor(host_losses[:n_run])
    bad = ~torch.isfinite(step_losses)
    diverged_at = [base + int(bad[:, j].nonzero()[0]) + 1 if bad[:, j].any() else None for j in range(k)]
    timed = images - k * min(batch_size, len(data.train))  # the first step is not timed
    rate = timed / max(train_seconds - first_step, 1e-9) if g - base > 1 else 0.0
    return Result(P, S, O, metrics, step_losses, diverged_at, rate, first_step, runner.describe(), active,
                  extra={"compile_fallback": runner.fallback}, averaged=to_validate(P, S, O) if averages else None)


def _records(epoch: float, losses: np.ndarray, lrs: np.ndarray, correct: list[int], seen: int, val: dict | None,
             active: list[bool], timing: dict) -> list[dict]:
    """One metrics record per model for the epoch (or the part of it) just trained; ``lrs``: each model's lr at
    its last step, as its optimiser's state recorded it."""
    out = []
    for j in range(len(correct)):
        rec = {"epoch": epoch, "train_loss": float(np.mean(losses[:, j])), "train_acc": correct[j] / max(seen, 1)}
        if val is not None:
            rec.update(val_loss=val["loss"][j], val_acc=val["acc"][j], val_top5_acc=val["top5_acc"][j])
        rec.update(lr=float(lrs[j]), diverged=not active[j], **timing)
        out.append(rec)
    return out
