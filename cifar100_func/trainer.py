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
from torch.utils._pytree import tree_leaves, tree_structure, tree_unflatten

from . import model
from .backend import Backend
from .checkpoint import load_file, save_checkpoint
from .config import Config
from .data import Dataset
from .errors import CheckpointError, TrainingDiverged
from .hparams import Hyper
from .interop import from_state_dict
from .io import atomic_write_text
from .loader import Pipeline, steps_per_epoch
from .loop import Check, EpochEnd, Hooks, Plan, Start, train
from .optim import make_optimizer
from .schedules import make_schedule, momentum_table, schedule_table
from .step import cast_tree

# config keys that may change between an interrupted run and its --resume without changing the result
RESUME_FREE_KEYS = ("train.epochs", "paths.", "dataset.root", "dataset.download", "train.compile",
                    "train.compile_mode")


@dataclass
class RunFiles:
    """Where a run writes. ``None`` anywhere means: do not write that."""

    run_dir: Path | None = None
    best_ckpt: Path | None = None
    last_ckpt: Path | None = None


@dataclass
class FitResult:
    params: Any
    state: Any
    metrics: list[dict] = field(default_factory=list)
    best_val_acc: float = -1.0
    best_epoch: int = 0
    step_losses: list[float] = field(default_factory=list)  # every training step of this session, in order


def arch_from(cfg: Config, num_classes: int) -> model.Arch:
    return model.Arch(tuple(cfg.model.blocks), cfg.model.bottleneck_mid, num_classes)  # type: ignore[arg-type]


def lr_factors(cfg: Config, steps: int, epochs: int):
    """The lr multiplier of every step of ``epochs`` epochs of ``steps`` steps under ``train.scheduler``."""
    return schedule_table(make_schedule(cfg.train.scheduler, steps * epochs), steps * epochs)


def schedule_fields(cfg: Config, steps: int, epochs: int) -> dict[str, Any]:
    """The :class:`.loop.Plan` fields a config's schedule fixes for a run of ``epochs`` epochs of ``steps`` steps:
    the lr multiplier and momentum of every step, and the final epochs without augmentation."""
    return {"lr_factor": lr_factors(cfg, steps, epochs),
            "momentum": momentum_table(cfg.train.scheduler, steps * epochs),
            "plain_epochs": min(cfg.augment.off_last_epochs, epochs)}


def _resume_mismatch(saved: dict, current: dict, prefix: str = "") -> str | None:
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if any(dotted == k or (k.endswith(".") and dotted.startswith(k)) for k in RESUME_FREE_KEYS):
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _resume_mismatch(a, b, dotted + ".")
            if found:
                return found
        elif a != b:
            return f"{dotted} was {a!r} in the interrupted run, now {b!r}"
    return None


def _load_start(path: Path, cfg: Config, data: Dataset, precision: str) -> tuple[Start, float, int]:
    ckpt = load_file(path)
    why = _resume_mismatch(ckpt.get("config", {}), cfg.to_dict())
    if why:
        raise CheckpointError(f"cannot --resume {path}: the config changed ({why})")
    params, state = from_state_dict(ckpt["state_dict"], arch_from(cfg, data.num_classes))
    params, state = cast_tree(params, precision), cast_tree(state, precision)
    template = make_optimizer(cfg.train.optimizer).init(params)
    leaves = ckpt.get("opt_state")
    if not isinstance(leaves, list) or len(leaves) != len(tree_leaves(template)):
        raise CheckpointError(f"cannot --resume {path}: its optimiser state does not fit {cfg.train.optimizer.name}")
    opt_state = tree_unflatten(leaves, tree_structure(template))
    steps = steps_per_epoch(len(data.train), cfg.train.batch_size)
    start = Start(params, state, opt_state, ckpt["epoch"] * steps, [list(ckpt["metrics"])])
    return start, ckpt["best_val_acc"], ckpt["best_epoch"]


def fit(cfg: Config, data: Dataset, backend: Backend, files: RunFiles | None = None, *, resume: bool = False,
        run_name: str = "train", progress: bool | None = None, log: Callable[[str], None] = print) -> FitResult:
    """Train one model of ``cfg`` on ``data`` (already on the backend's device) for ``cfg.train.epochs`` epochs."""
    files = files or RunFiles()
    tc = cfg.train
    arch = arch_from(cfg, data.num_classes)
    steps = steps_per_epoch(len(data.train), tc.batch_size)
    sched = schedule_fields(cfg, steps, tc.epochs)
    factors = sched["lr_factor"]
    hyper = Hyper.of(cfg)
    label = "synthetic" if data.synthetic else "cifar100"
    best = {"acc": -1.0, "epoch": 0}
    start = None
    if resume and files.last_ckpt is not None and files.last_ckpt.is_file():
        start, best["acc"], best["epoch"] = _load_start(files.last_ckpt, cfg, data, backend.precision)
        log(f"resuming {run_name} after epoch {start.step // steps} (best val acc {best['acc']:.4f} at epoch "
            f"{best['epoch']})")
        if files.run_dir is not None:
            _write_metrics(files.run_dir, start.metrics[0])

    def check(c: Check) -> None:
        bad = np.flatnonzero(~np.isfinite(c.losses[:, 0]))
        if len(bad) == 0:
            return None
        g = c.first_step + int(bad[0])
        kept = (f"the best checkpoint {files.best_ckpt} (epoch {best['epoch']}) is intact"
                if files.best_ckpt is not None and best["epoch"] else "no checkpoint was written")
        raise TrainingDiverged(
            f"training diverged at epoch {g // steps + 1}, step {g % steps + 1} (global step {g + 1}, lr "
            f"{hyper.lr * float(factors[g]):.3g}): loss is {c.losses[bad[0], 0]}; {kept}; try a smaller "
            "train.optimizer.lr")

    def on_epoch(end: EpochEnd) -> None:
        rec = end.records[0]
        rec["dataset"] = label
        improved = rec["val_acc"] > best["acc"]
        if improved:
            best["acc"], best["epoch"] = rec["val_acc"], end.epoch
        log(f"[{label}] epoch {end.epoch}/{tc.epochs}  train loss {rec['train_loss']:.4f} acc "
            f"{rec['train_acc']:.4f} | val loss {rec['val_loss']:.4f} acc {rec['val_acc']:.4f} | "
            f"{rec['seconds']:.1f}s, {rec['images_per_sec']:.0f} img/s" + ("  *best*" if improved else ""))
        history = end.history[0]
        common = dict(config=cfg.to_dict(), epoch=end.epoch, metrics=history, best_val_acc=best["acc"],
                      best_epoch=best["epoch"], run_name=run_name, dataset=label)
        if improved and files.best_ckpt is not None:
            save_checkpoint(files.best_ckpt, end.params, end.state, **common)
        if files.last_ckpt is not None:
            save_checkpoint(files.last_ckpt, end.params, end.state, opt_state=tree_leaves(end.opt_state), **common)
        if files.run_dir is not None:
            _write_metrics(files.run_dir, history)
            _write_curves(files.run_dir, history, run_name, data.synthetic)

    plan = Plan(arch, [tc.seed], [hyper], tc.optimizer, tc.epochs, **sched)
    pipe = Pipeline.create(cfg.preprocess, cfg.augment, backend.device)
    res = train(plan, data, backend, pipe, batch_size=tc.batch_size, eval_batch_size=tc.eval_batch_size,
                start=start, hooks=Hooks(50, check, on_epoch), desc=run_name,
                progress=progress, log=log)
    return FitResult(res.params, res.state, res.metrics[0], best["acc"], best["epoch"],
                     res.step_losses[:, 0].tolist())


def _write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))


def _write_curves(run_dir: Path, metrics: list[dict], run_name: str, synthetic: bool) -> None:
    from .plots import learning_curve

    tag = " [SYNTHETIC DATA]" if synthetic else ""
    learning_curve(metrics, "loss", run_dir / "loss.png", f"{run_name}: loss{tag}")
    learning_curve(metrics, "acc", run_dir / "accuracy.png", f"{run_name}: accuracy{tag}")
