"""The standard training path: one model, no stacking, as fast as the device allows.

:func:`fit` is the one training loop of the project (the ``train`` command, the overfit check and the study
call it): per epoch it trains on device-resident batches with the pure step, evaluates on the validation
split, records metrics, and (when given paths) writes ``metrics.jsonl``, curves and atomic checkpoints.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from . import model
from .checkpoint import load_file, save_checkpoint, tree_to
from .config import Config
from .data import Dataset, Split
from .errors import CheckpointError, TrainingDiverged
from .interop import from_state_dict
from .io import atomic_write_text
from .loader import Pipeline, eval_batches, steps_per_epoch, train_batches
from .optim import hyperparams, make_optimizer
from .schedules import make_schedule
from .seeding import generator
from .step import cast_tree, make_eval_step, make_train_step

# config keys that may change between an interrupted run and its --resume without changing the result
RESUME_FREE_KEYS = ("train.epochs", "paths.", "dataset.root", "dataset.download", "train.compile")


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


def to_memory_format(tree: Any, channels_last: bool) -> Any:
    if not channels_last:
        return tree
    return torch.utils._pytree.tree_map(
        lambda t: t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t, tree)


def evaluate_split(params, state, split: Split, pipe: Pipeline, batch_size: int, eval_step: Callable,
                   keep_predictions: bool = False) -> dict[str, Any]:
    """Loss, accuracy and top-5 accuracy of one model on a whole split (the last partial batch included)."""
    loss = torch.zeros((), device=split.y.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.y.device)
    top5 = torch.zeros_like(correct)
    preds = []
    with torch.no_grad():
        for x, y in eval_batches(split, pipe, batch_size):
            l, c, t5, p = eval_step(params, state, x, y)
            loss, correct, top5 = loss + l, correct + c, top5 + t5
            if keep_predictions:
                preds.append(p)
    n = max(len(split), 1)
    out: dict[str, Any] = {"loss": loss.item() / n, "acc": correct.item() / n, "top5_acc": top5.item() / n}
    if keep_predictions:
        out["predictions"] = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)
    return out


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


def fit(cfg: Config, data: Dataset, device: torch.device, files: RunFiles | None = None, *,
        resume: bool = False, run_name: str = "train", progress: bool | None = None,
        log: Callable[[str], None] = print) -> FitResult:
    """Train one model of ``cfg`` on ``data`` (already on ``device``) for ``cfg.train.epochs`` epochs."""
    files = files or RunFiles()
    tc = cfg.train
    arch = arch_from(cfg, data.num_classes)
    optimizer = make_optimizer(tc.optimizer)
    steps = steps_per_epoch(len(data.train), tc.batch_size)
    schedule = make_schedule(tc.scheduler, steps * tc.epochs)
    label = "synthetic" if data.synthetic else "cifar100"

    metrics: list[dict] = []
    best_acc, best_epoch, start_epoch = -1.0, 0, 0
    if resume and files.last_ckpt is not None and files.last_ckpt.is_file():
        ckpt = load_file(files.last_ckpt)
        why = _resume_mismatch(ckpt.get("config", {}), cfg.to_dict())
        if why:
            raise CheckpointError(f"cannot --resume {files.last_ckpt}: the config changed ({why})")
        params, state = from_state_dict(ckpt["state_dict"], arch)
        opt_state = ckpt["opt_state"]
        metrics = list(ckpt["metrics"])
        best_acc, best_epoch, start_epoch = ckpt["best_val_acc"], ckpt["best_epoch"], ckpt["epoch"]
        log(f"resuming {run_name} after epoch {start_epoch} (best val acc {best_acc:.4f} at epoch {best_epoch})")
    else:
        params, state = model.init(arch, generator(tc.seed, "init"))
        opt_state = optimizer.init(params)
    params = to_memory_format(tree_to(cast_tree(params, tc.precision), device), tc.channels_last)
    state = tree_to(cast_tree(state, tc.precision), device)
    opt_state = to_memory_format(tree_to(cast_tree(opt_state, tc.precision), device), tc.channels_last)

    step_fn = make_train_step(optimizer, label_smoothing=tc.label_smoothing, precision=tc.precision,
                              device_type=device.type)
    eval_step = make_eval_step(precision=tc.precision, device_type=device.type)
    if tc.compile:
        step_fn = compiled(step_fn, log)
    pipe = Pipeline.create(cfg.preprocess, cfg.augment, device, tc.channels_last)
    base_lr, wd = tc.optimizer.lr, tc.optimizer.weight_decay
    if files.run_dir is not None and metrics:
        _write_metrics(files.run_dir, metrics)

    step_losses: list[float] = []
    for epoch in range(start_epoch, tc.epochs):
        t0 = time.perf_counter()
        losses = torch.zeros(steps, device=device, dtype=torch.float64 if tc.precision == "fp64" else torch.float32)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="step", leave=False,
                   disable=(not progress) if progress is not None else None)
        for i, (x, y) in enumerate(train_batches(data.train, pipe, tc.batch_size, tc.seed, epoch)):
            gstep = epoch * steps + i
            lr = base_lr * schedule(gstep)
            hp = hyperparams(lr, wd, device)
            params, state, opt_state, loss, c = step_fn(params, state, opt_state, hp, x, y)
            losses[i] = loss
            correct += c
            seen += len(y)
            if i % 50 == 49 or i == steps - 1:
                _check_finite(losses[: i + 1], epoch, steps, schedule, base_lr, files, best_epoch)
                bar.set_postfix(loss=f"{losses[max(0, i - 49): i + 1].mean().item():.3f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}")
            bar.update(1)
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - t0
        val = evaluate_split(params, state, data.val, pipe, tc.eval_batch_size, eval_step)
        record = {
            "epoch": epoch + 1,
            "train_loss": losses.mean().item(),
            "train_acc": correct.item() / max(seen, 1),
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "val_top5_acc": val["top5_acc"],
            "lr": base_lr * schedule((epoch + 1) * steps - 1),
            "seconds": time.perf_counter() - t0,
            "train_seconds": train_seconds,
            "images_per_sec": seen / train_seconds,
            "dataset": label,
        }
        metrics.append(record)
        step_losses += losses.tolist()
        improved = record["val_acc"] > best_acc
        if improved:
            best_acc, best_epoch = record["val_acc"], epoch + 1
        log(
            f"[{label}] epoch {epoch + 1}/{tc.epochs}  train loss {record['train_loss']:.4f} acc "
            f"{record['train_acc']:.4f} | val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f} | "
            f"{record['seconds']:.1f}s, {record['images_per_sec']:.0f} img/s" + ("  *best*" if improved else "")
        )
        common = dict(config=cfg.to_dict(), epoch=epoch + 1, metrics=metrics, best_val_acc=best_acc,
                      best_epoch=best_epoch, run_name=run_name, dataset=label)
        if improved and files.best_ckpt is not None:
            save_checkpoint(files.best_ckpt, params, state, **common)
        if files.last_ckpt is not None:
            save_checkpoint(files.last_ckpt, params, state, opt_state=opt_state, **common)
        if files.run_dir is not None:
            _write_metrics(files.run_dir, metrics)
            _write_curves(files.run_dir, metrics, run_name, data.synthetic)
    return FitResult(params, state, metrics, best_acc, best_epoch, step_losses)


MIN_STEPS_TO_COMPILE = 200  # below this, compiling (a minute or more per step function on 2 cores) costs more


def worth_compiling(enabled: bool, n_steps: int) -> bool:
    """Whether a run of ``n_steps`` steps with ``compile`` set to ``enabled`` should be compiled: short runs
    (the LR finder, a reduced grid's stacks) spend more time compiling than compilation saves."""
    return enabled and n_steps >= MIN_STEPS_TO_COMPILE


def compiled(fn: Callable, log: Callable[[str], None] = print) -> Callable:
    """``torch.compile(fn)``, falling back to eager (with one warning) where compilation is unavailable.

    Dynamo's caches are cleared first: every stack of a grid (and every stage of a study) compiles a fresh
    closure of the same code, and past ``recompile_limit`` (8) dynamo would silently run the rest eagerly.
    """
    torch._dynamo.reset()
    fast = torch.compile(fn)
    state = {"fn": fast, "first": True}

    def call(*args):
        if state["first"]:
            state["first"] = False
            try:
                return fast(*args)
            except Exception as exc:  # noqa: BLE001 - no compiler, unsupported backend...
                log(f"warning: torch.compile failed ({type(exc).__name__}); training eagerly instead")
                state["fn"] = fn
        return state["fn"](*args)

    return call


def _check_finite(losses: torch.Tensor, epoch: int, steps: int, schedule, base_lr: float,
                  files: RunFiles, best_epoch: int) -> None:
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad) == 0:
        return
    i = int(bad[0])
    gstep = epoch * steps + i
    kept = (f"the best checkpoint {files.best_ckpt} (epoch {best_epoch}) is intact"
            if files.best_ckpt is not None and best_epoch else "no checkpoint was written")
    raise TrainingDiverged(
        f"training diverged at epoch {epoch + 1}, step {i + 1} (global step {gstep + 1}, "
        f"lr {base_lr * schedule(gstep):.3g}): loss is {losses[i].item()}; {kept}; try a smaller train.optimizer.lr"
    )


def _write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))


def _write_curves(run_dir: Path, metrics: list[dict], run_name: str, synthetic: bool) -> None:
    from .plots import learning_curve

    tag = " [SYNTHETIC DATA]" if synthetic else ""
    learning_curve(metrics, "loss", run_dir / "loss.png", f"{run_name}: loss{tag}")
    learning_curve(metrics, "acc", run_dir / "accuracy.png", f"{run_name}: accuracy{tag}")
