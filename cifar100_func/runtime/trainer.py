"""The standard path: one model of a config trained by the one loop (:mod:`.loop`), with what a final run needs
on top: a run's files (``metrics.jsonl``, curves, atomic best and last checkpoints), exact ``--resume`` and a
clear stop when the loss diverges. The ``train`` command, the overfit check and the study's final stage call
:func:`fit`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils._pytree import tree_leaves, tree_structure, tree_unflatten

from ..core import model
from .backend import Backend
from .checkpoint import load_file, save_checkpoint
from ..config import Config
from ..data.dataset import Dataset
from ..errors import CheckpointError, TrainingDiverged
from .events import Events
from .interop import from_state_dict
from .io import atomic_write_text, to_json
from ..data.loader import steps_per_epoch
from . import from_config
from .from_config import pipeline
from .loop import Check, EpochEnd, Hooks, Plan, Start, stack_trees, train
from ..core.hyper import Hyper
from ..core.step import precision_of
from . import recipe


@dataclass
class RunFiles:
    """Where a run writes. ``None`` anywhere means: do not write that."""

    run_dir: Path | None = None
    best_ckpt: Path | None = None
    last_ckpt: Path | None = None
    events: Path | None = None  # TensorBoard folder (an ensemble: one subfolder per member)


@dataclass
class FitResult:
    params: Any
    state: Any
    metrics: list[dict] = field(default_factory=list)
    best_val_acc: float = -1.0
    best_epoch: int = 0
    step_losses: list[float] = field(default_factory=list)  # every training step of this session, in order


def arch_from(cfg: Config, num_classes: int) -> model.Arch:
    return from_config.arch(cfg, num_classes)


def schedule_fields(cfg: Config, hypers: list[Hyper], steps: int, epochs: int) -> dict[str, Any]:
    """The :class:`.loop.Plan` fields a config's recipe fixes for models with ``hypers`` trained ``epochs`` epochs
    of ``steps`` steps: each model's optimiser (its hyper-parameters and schedules in its state) and the final
    epochs without augmentation, the images the averaged weights' batch-norm statistics are recomputed on."""
    return {"optimizers": recipe.optimizers(cfg.train, hypers, steps * epochs),
            "plain_epochs": min(cfg.augment.off_last_epochs, epochs), "bn_images": cfg.train.ema.bn_images}


def _resume_mismatch(saved: dict, cfg: Config, members: int) -> str | None:
    """Why a run saved with the config ``saved`` (a checkpoint's copy) cannot be continued under ``cfg``, or None:
    the fingerprints of what the run computes from (:func:`..inputs.resume`: all but ``train.epochs``, which may
    grow, and the keys that say *how* it runs) differ; the message names the first key that differs."""
    from ..config import from_dict
    from ..errors import ConfigError
    from ..fingerprint import first_difference, fingerprint
    from ..inputs import resume

    try:
        before = resume(from_dict(saved), members)
    except ConfigError as exc:
        return f"its config does not fit this version's schema: {exc}"
    now = resume(cfg, members)
    if fingerprint(before) == fingerprint(now):
        return None
    return f"{first_difference(before, now)}, from the interrupted run to now"


def _load_start(path: Path, cfg: Config, data: Dataset, precision: str,
                members: int) -> tuple[Start, float, int, list[dict]]:
    """Where ``path`` left off: the loop's start, best val acc and epoch, and the run's own metrics history."""
    ckpt = load_file(path)
    why = _resume_mismatch(ckpt.get("config", {}), cfg, members)
    if why:
        raise CheckpointError(f"cannot --resume {path}: the config changed ({why})")
    sds = ckpt.get("ensemble") or [ckpt["state_dict"]]
    if len(sds) != members:
        raise CheckpointError(f"cannot --resume {path}: it holds {len(sds)} model(s), this run trains {members}")
    arch = arch_from(cfg, data.num_classes)
    prec = precision_of(precision)
    dtype = None if prec.param == torch.float32 else prec.param  # an fp64 run's checkpoint holds float64: keep it
    models = [tuple(prec.params(t) for t in from_state_dict(sd, arch, dtype)) for sd in sds]
    steps = steps_per_epoch(len(data.train), cfg.train.batch_size)
    opt = recipe.optimizer(cfg.train, recipe.hyper(cfg), steps * cfg.train.epochs)
    template = [opt.init(p, s) for p, s in models]
    params, state, template = ((models[0][0], models[0][1], template[0]) if members == 1 else
                               (stack_trees([p for p, _ in models]), stack_trees([s for _, s in models]),
                                stack_trees(template)))
    leaves = ckpt.get("opt_state")
    if not isinstance(leaves, list) or len(leaves) != len(tree_leaves(template)):
        raise CheckpointError(f"cannot --resume {path}: its optimiser state does not fit {cfg.train.optimizer.name}")
    saved = tree_unflatten(leaves, tree_structure(template))
    # the run's step count and moments; the schedules of this config (a resumed run may have more epochs)
    opt_state = saved._replace(hyper=template.hyper._replace(count=saved.hyper.count,
                                                             hyperparams=saved.hyper.hyperparams))
    history = list(ckpt["metrics"])
    per_model = [history] if members == 1 else [[rec["members"][j] for rec in history] for j in range(members)]
    start = Start(params, state, opt_state, ckpt["epoch"] * steps, per_model)
    return start, ckpt["best_val_acc"], ckpt["best_epoch"], history


def _ensemble_record(end: EpochEnd) -> dict:
    """An ensemble's epoch: its validation metrics (the mean of the members' softmax), the members' mean training
    metrics, and every member's own record under ``"members"``."""
    recs, e = end.records, end.ensemble or {}
    mean = lambda key: float(np.mean([r[key] for r in recs]))  # noqa: E731
    return {"epoch": recs[0]["epoch"], "train_loss": mean("train_loss"), "train_acc": mean("train_acc"),
            "val_loss": e["loss"], "val_acc": e["acc"], "val_top5_acc": e["top5_acc"],
            "members_val_acc": mean("val_acc"), "lr": recs[0]["lr"], "diverged": any(r["diverged"] for r in recs),
            **{k: recs[0][k] for k in ("seconds", "train_seconds", "runner")},
            "images_per_sec": recs[0]["images_per_sec"] * len(recs), "members": recs}


def fit(cfg: Config, data: Dataset, backend: Backend, files: RunFiles | None = None, *, resume: bool = False,
        run_name: str = "train", members: int = 1, progress: bool | None = None,
        log: Callable[[str], None] = print) -> FitResult:
    """Train one model of ``cfg`` on ``data`` (already on the backend's device) for ``cfg.train.epochs`` epochs;
    with ``members`` > 1 a seed ensemble (seeds ``train.seed + j``, each its own batch order and augmentation) as
    one stack, validated, checkpointed and selected as the ensemble (mean of the members' softmax)."""
    files = files or RunFiles()
    tc = cfg.train
    arch = arch_from(cfg, data.num_classes)
    steps = steps_per_epoch(len(data.train), tc.batch_size)
    sched = schedule_fields(cfg, [recipe.hyper(cfg)] * members, steps, tc.epochs)
    label = "synthetic" if data.synthetic else "cifar100"
    best = {"acc": -1.0, "epoch": 0}
    start = None
    if resume and files.last_ckpt is not None and files.last_ckpt.is_file():
        start, best["acc"], best["epoch"], history = _load_start(files.last_ckpt, cfg, data, backend.precision,
                                                                 members)
        log(f"resuming {run_name} after epoch {start.step // steps} (best val acc {best['acc']:.4f} at epoch "
            f"{best['epoch']})")
        ensemble_history = [] if members == 1 else history
        if files.run_dir is not None:
            _write_metrics(files.run_dir, history)
    else:
        ensemble_history = []

    def check(c: Check) -> None:
        bad = np.flatnonzero(~np.isfinite(c.losses).all(axis=1))
        if len(bad) == 0:
            return None
        g = c.first_step + int(bad[0])
        kept = (f"the best checkpoint {files.best_ckpt} (epoch {best['epoch']}) is intact"
                if files.best_ckpt is not None and best["epoch"] else "no checkpoint was written")
        raise TrainingDiverged(
            f"training diverged at epoch {g // steps + 1}, step {g % steps + 1} (global step {g + 1}, lr "
            f"{c.lrs[bad[0]].max():.3g}): loss is {c.losses[bad[0]].tolist()}; {kept}; try a smaller "
            "train.optimizer.lr")

    def on_epoch(end: EpochEnd) -> None:
        rec = end.records[0] if members == 1 else _ensemble_record(end)
        rec["dataset"] = label
        improved = rec["val_acc"] > best["acc"]
        if improved:
            best["acc"], best["epoch"] = rec["val_acc"], end.epoch
        log(f"[{label}] epoch {end.epoch}/{tc.epochs}  train loss {rec['train_loss']:.4f} acc "
            f"{rec['train_acc']:.4f} | val loss {rec['val_loss']:.4f} acc {rec['val_acc']:.4f} | "
            f"{rec['seconds']:.1f}s, {rec['images_per_sec']:.0f} img/s"
            + (f" | {members} members, mean val acc {rec['members_val_acc']:.4f}" if members > 1 else "")
            + ("  *best*" if improved else ""))
        if members == 1:
            history = end.history[0]
        else:
            ensemble_history.append(rec)
            history = ensemble_history
        common = dict(config=cfg.to_dict(), epoch=end.epoch, metrics=history, best_val_acc=best["acc"],
                      best_epoch=best["epoch"], run_name=run_name, dataset=label,
                      members=members if members > 1 else 0)
        if improved and files.best_ckpt is not None:  # the weights validated: the averaged ones, if averaging
            save_checkpoint(files.best_ckpt, *(end.averaged or (end.params, end.state)),
                            weights="averaged" if end.averaged else "trained", **common)
        if files.last_ckpt is not None:
            save_checkpoint(files.last_ckpt, end.params, end.state, opt_state=tree_leaves(end.opt_state), **common)
        if files.run_dir is not None:
            _write_metrics(files.run_dir, history)
            _write_curves(files.run_dir, history, run_name, data.synthetic)

    plan = Plan(arch, [tc.seed + j for j in range(members)], epochs=tc.epochs, **sched,
                shared_data=members == 1, ensemble=members > 1)
    pipe = pipeline(cfg, backend.device)
    hooks = Hooks(50, check, on_epoch)
    events = None
    if files.events is not None:
        dirs = [files.events] if members == 1 else [files.events / f"seed{s}" for s in plan.seeds]
        events = Events(dirs, plan, steps, start.step if start else 0)
        hooks = events.hooks(hooks)
    try:
        res = train(plan, data, backend, pipe, batch_size=tc.batch_size, eval_batch_size=tc.eval_batch_size,
                    start=start, hooks=hooks, desc=run_name, progress=progress, log=log)
    finally:
        if events is not None:
            events.close()
    params, state = res.averaged or (res.params, res.state)  # the weights validated
    return FitResult(params, state, res.metrics[0] if members == 1 else ensemble_history, best["acc"],
                     best["epoch"], res.step_losses.mean(dim=1).tolist())


def _write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    atomic_write_text(run_dir / "metrics.jsonl", "".join(to_json(m) + "\n" for m in metrics))


def _write_curves(run_dir: Path, metrics: list[dict], run_name: str, synthetic: bool) -> None:
    from ..report.plots import learning_curve

    tag = " [SYNTHETIC DATA]" if synthetic else ""
    learning_curve(metrics, "loss", run_dir / "loss.png", f"{run_name}: loss{tag}")
    learning_curve(metrics, "acc", run_dir / "accuracy.png", f"{run_name}: accuracy{tag}")
