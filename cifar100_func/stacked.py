"""K models of one architecture trained at the same time as one stacked model under ``torch.func.vmap``.

Params, BatchNorm state, optimiser state and hyper-parameters carry a leading axis of size K; one step is
``vmap`` of the very step function the standard path uses (:func:`.step.make_train_step`). Data is either one
batch shared by all K models (``in_dims=None``: same seed, same order, same augmentation, as the reference grid)
or one batch per model (independent seeds). A model whose loss turns NaN/inf is frozen: its update is masked
out, the others train on untouched (models never mix inside the vmapped step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch.func import vmap
from torch.utils._pytree import tree_leaves, tree_map
from tqdm import tqdm

from . import model
from .batching import per_model_rules, uses_per_model
from .config import Config
from .data import Dataset, Split
from .loader import Pipeline, eval_batches, steps_per_epoch, train_batches
from .optim import make_optimizer
from .schedules import make_schedule
from .seeding import generator
from .step import cast_tree, make_eval_step, make_train_step


def stack_trees(trees: Sequence[Any]) -> Any:
    """[tree_1, ..., tree_K] -> one tree whose leaves have a leading axis K."""
    return tree_map(lambda *leaves: torch.stack(leaves), *trees)


def unstack(tree: Any, i: int) -> Any:
    """The i-th model's tree out of a stacked tree."""
    return tree_map(lambda t: t[i], tree)


def tree_where(mask: torch.Tensor, new: Any, old: Any) -> Any:
    """Per model: ``new`` where ``mask[k]`` else ``old`` (mask has shape (K,))."""
    return tree_map(lambda n, o: torch.where(mask.view(-1, *([1] * (n.ndim - 1))), n, o), new, old)


def init_stack(arch: model.Arch, seeds: Sequence[int], optimizer, precision: str, device) -> tuple[Any, Any, Any]:
    """Stacked (params, BN state, optimiser state) of one model per seed, on ``device``."""
    inits = [cast_tree(model.init(arch, generator(seed, "init")), precision) for seed in seeds]
    P = stack_trees([p for p, _ in inits])
    S = stack_trees([s for _, s in inits])
    O = stack_trees([optimizer.init(p) for p, _ in inits])
    return tuple(tree_map(lambda t: t.to(device), tr) for tr in (P, S, O))  # type: ignore[return-value]


def make_stacked_step(step_fn: Callable, shared_data: bool) -> Callable:
    """``(P, S, O, H, x, y, active) -> (P, S, O, loss[K], correct[K], active)`` with diverged models frozen.

    A member's step is rejected, and the member frozen at its last good weights from then on, when its loss or
    any of its new weights is not finite; a rejected step reports a NaN loss (so the first NaN marks it).
    """
    data_dim = None if shared_data else 0
    vstep = vmap(step_fn, in_dims=(0, 0, 0, 0, data_dim, data_dim))

    def stacked_step(P, S, O, H, x, y, active):
        nP, nS, nO, loss, correct = vstep(P, S, O, H, x, y)
        finite_weights = torch.stack([torch.isfinite(t).flatten(1).all(1) for t in tree_leaves(nP)]).all(0)
        ok = active & torch.isfinite(loss) & finite_weights
        loss = torch.where(ok, loss, torch.full_like(loss, float("nan")))
        return tree_where(ok, nP, P), tree_where(ok, nS, S), tree_where(ok, nO, O), loss, correct, ok

    return stacked_step


def make_stacked_eval(eval_step: Callable) -> Callable:
    return vmap(eval_step, in_dims=(0, 0, None, None))


def with_stacked_rules(fns: Sequence[Callable], cfg: Config, device: torch.device,
                       compiled: bool) -> tuple[list[Callable], Pipeline]:
    """Stacked functions (steps, evals) wrapped in the batching rules ``grid.batching`` asks for on ``device``,
    and the batch pipeline that suits them (channels-last for the per-model kernels, NCHW for the grouped ones).

    The rules are entered around each call, not inside the function, because they must be in force when
    ``torch.compile`` traces it (entering and leaving costs about 0.2 ms).
    """
    form = cfg.grid.batching

    def wrap(fn: Callable) -> Callable:
        def call(*args):
            with per_model_rules(device, form, compiled):
                return fn(*args)

        return call

    pipe = Pipeline.create(cfg.preprocess, cfg.augment, device,
                           channels_last=cfg.train.channels_last and uses_per_model(device, form, compiled))
    return [wrap(fn) for fn in fns], pipe


@dataclass
class Member:
    """One configuration of a stack: its name, hyper-parameters and seed."""

    name: str
    lr: float
    weight_decay: float
    seed: int


@dataclass
class StackResult:
    params: Any  # stacked
    state: Any
    metrics: list[list[dict]]  # per member, one record per epoch
    step_losses: torch.Tensor  # (total steps, K)
    diverged_at: list[int | None]  # global step (1-based) of the first rejected step, per member
    model_images_per_sec: float = 0.0
    extra: dict = field(default_factory=dict)


def evaluate_stack(P, S, split: Split, pipe: Pipeline, batch_size: int, stacked_eval: Callable) -> dict:
    """Loss and accuracy per member on a whole split (one vmapped forward per batch)."""
    loss = correct = None
    with torch.no_grad():
        for x, y in eval_batches(split, pipe, batch_size):
            l, c, _, _ = stacked_eval(P, S, x, y)
            loss = l if loss is None else loss + l
            correct = c if correct is None else correct + c
    n = max(len(split), 1)
    return {"loss": (loss / n).tolist(), "acc": (correct.double() / n).tolist()}


def fit_stack(cfg: Config, data: Dataset, device: torch.device, arch: model.Arch, members: Sequence[Member],
              epochs: int, *, shared_data: bool, compile_step: bool = False, desc: str = "stack",
              progress: bool | None = None, on_epoch: Callable[[int, list[dict]], None] | None = None) -> StackResult:
    """Train ``members`` (one architecture) together for ``epochs`` epochs; validation is stacked too.

    With ``shared_data`` every member must have the same seed (one batch stream for all).
    """
    tc = cfg.train
    k = len(members)
    if shared_data and len({m.seed for m in members}) != 1:
        raise ValueError("shared data needs one seed for all members")
    optimizer = make_optimizer(tc.optimizer)
    P, S, O = init_stack(arch, [m.seed for m in members], optimizer, tc.precision, device)
    active = torch.ones(k, dtype=torch.bool, device=device)
    wd = torch.tensor([m.weight_decay for m in members], dtype=torch.float32, device=device)
    base_lr = torch.tensor([m.lr for m in members], dtype=torch.float32, device=device)
    losses_dtype = torch.float64 if tc.precision == "fp64" else torch.float32

    step_fn = make_train_step(optimizer, label_smoothing=tc.label_smoothing, precision=tc.precision,
                              device_type=device.type)
    stacked_step = make_stacked_step(step_fn, shared_data)
    stacked_eval = make_stacked_eval(make_eval_step(precision=tc.precision, device_type=device.type))
    if compile_step:  # eager vmap is several times slower than compiled on a CPU, validation included
        from .trainer import compiled

        stacked_step, stacked_eval = compiled(stacked_step), compiled(stacked_eval)
    (stacked_step, stacked_eval), pipe = with_stacked_rules([stacked_step, stacked_eval], cfg, device, compile_step)
    steps = steps_per_epoch(len(data.train), tc.batch_size)
    schedule = make_schedule(tc.scheduler, steps * epochs)
    losses = torch.zeros(steps * epochs, k, device=device, dtype=losses_dtype)
    metrics: list[list[dict]] = [[] for _ in members]
    bar = tqdm(total=steps * epochs, desc=desc, unit="step", leave=False,
               disable=(not progress) if progress is not None else None)
    train_seconds = first_step = 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        correct = torch.zeros(k, dtype=torch.int64, device=device)
        seen = 0
        if shared_data:
            batches = train_batches(data.train, pipe, tc.batch_size, members[0].seed, epoch)
        else:
            streams = [train_batches(data.train, pipe, tc.batch_size, m.seed, epoch) for m in members]
            batches = ((torch.stack(xs), torch.stack(ys)) for xs, ys in
                       (zip(*batch) for batch in zip(*streams)))
        for i, (x, y) in enumerate(batches):
            g = epoch * steps + i
            H = {"lr": base_lr * schedule(g), "weight_decay": wd}
            P, S, O, loss, c, active = stacked_step(P, S, O, H, x, y, active)
            if g == 0:  # the first step includes compilation: keep it out of the throughput
                loss.sum().item()
                first_step = time.perf_counter() - t0
            losses[g] = loss
            correct += c
            seen += y.shape[-1]
            bar.update(1)
            if i % 20 == 19:
                bar.set_postfix(models=k, epoch=f"{epoch + 1}/{epochs}",
                                model_img_s=f"{k * seen / (time.perf_counter() - t0):.0f}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        train_seconds += dt
        val = evaluate_stack(P, S, data.val, pipe, tc.eval_batch_size, stacked_eval)
        ep_losses = losses[epoch * steps : (epoch + 1) * steps]
        for j in range(k):
            metrics[j].append({
                "epoch": epoch + 1,
                "train_loss": ep_losses[:, j].mean().item(),
                "train_acc": correct[j].item() / max(seen, 1),
                "val_loss": val["loss"][j],
                "val_acc": val["acc"][j],
                "diverged": not bool(active[j]),
                "seconds": dt,
            })
        if on_epoch is not None:
            on_epoch(epoch, [mm[-1] for mm in metrics])
    bar.close()
    bad = ~torch.isfinite(losses)
    diverged_at = [int(bad[:, j].nonzero()[0]) + 1 if bad[:, j].any() else None for j in range(k)]
    total = k * (steps * epochs - 1) * min(tc.batch_size, len(data.train))
    rate = total / max(train_seconds - first_step, 1e-9) if steps * epochs > 1 else 0.0
    return StackResult(P, S, metrics, losses, diverged_at, rate, {"first_step_seconds": first_step})

