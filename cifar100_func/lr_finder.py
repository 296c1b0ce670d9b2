"""``python -m cifar100_func.lr_finder``: learning-rate range test, several seeds at once under vmap.

The lr grows geometrically from ``lr_finder.start`` to ``lr_finder.end`` over at most one epoch of batches,
one optimiser step per batch, with the config's model and optimiser. ``lr_finder.seeds`` models (own init, own
batch order and augmentation) follow the same schedule as one stack under ``torch.func.vmap``. It stops once
the mean smoothed loss exceeds ``stop_factor`` x its minimum, or a loss is not finite.

Two readings are reported: the lr of steepest descent of the smoothed loss, and the *upper bound*: the lr at
which the smoothed loss bottoms out and starts to rise. As the reference study learnt, the finder gives an upper
bound for the lr, not an optimum.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import cli
from .config import Config
from .data import Dataset
from .io import atomic_write_json, atomic_write_text
from .loader import steps_per_epoch, train_batches
from .optim import make_optimizer
from .stacked import init_stack, make_stacked_step, with_stacked_rules
from .step import make_train_step
from .trainer import arch_from, compiled, worth_compiling


def lr_schedule(start: float, end: float, steps: int) -> np.ndarray:
    """``steps`` learning rates, geometric from ``start`` to ``end`` (both included)."""
    if steps == 1:
        return np.array([start])
    return start * (end / start) ** (np.arange(steps) / (steps - 1))


def smooth(losses: np.ndarray, beta: float) -> np.ndarray:
    """Bias-corrected exponential moving average along axis 0 (as the fast.ai finder)."""
    out = np.empty_like(losses, dtype=np.float64)
    avg = np.zeros(losses.shape[1:])
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def suggestions(lrs: np.ndarray, curve: np.ndarray) -> dict:
    """Steepest descent of the smoothed loss vs log lr (before its minimum) and the lr of the minimum."""
    i_min = int(np.argmin(curve))
    lo = max(1, len(curve) // 10)  # the first points are dominated by the EMA warm-up
    if i_min - lo >= 2:
        slope = np.gradient(curve[lo : i_min + 1], np.log(lrs[lo : i_min + 1]))
        i_steep = lo + int(np.argmin(slope))
    else:
        i_steep = i_min
    return {
        "steepest_descent_lr": float(lrs[i_steep]),
        "upper_bound_lr": float(lrs[i_min]),
        "min_smoothed_loss": float(curve[i_min]),
        "rule": "steepest: argmin d(smoothed loss)/d(log lr) before the minimum; upper bound: lr at the minimum "
                "of the smoothed loss, where it starts to rise (an upper bound for training, not an optimum)",
    }


def find_lr(cfg: Config, data: Dataset, device: torch.device, progress_every: int = 0, log=print) -> dict:
    """Run the range test; returns lrs, raw and smoothed losses (steps x seeds) and the suggestions."""
    lf, tc = cfg.lr_finder, cfg.train
    k = lf.seeds
    n_steps = steps_per_epoch(len(data.train), tc.batch_size)
    if lf.max_steps is not None:
        n_steps = min(n_steps, lf.max_steps)
    lrs = lr_schedule(lf.start, lf.end, n_steps)
    seeds = [tc.seed + s for s in range(k)]
    arch = arch_from(cfg, data.num_classes)
    optimizer = make_optimizer(tc.optimizer)
    P, S, O = init_stack(arch, seeds, optimizer, tc.precision, device)
    active = torch.ones(k, dtype=torch.bool, device=device)
    step = make_stacked_step(make_train_step(optimizer, label_smoothing=tc.label_smoothing,
                                             precision=tc.precision, device_type=device.type), shared_data=False)
    compile_step = worth_compiling(tc.compile, n_steps)
    if compile_step:
        step = compiled(step, log)
    (step,), pipe = with_stacked_rules([step], cfg, device, compile_step)
    streams = [train_batches(data.train, pipe, tc.batch_size, s, 0) for s in seeds]
    wd = torch.full((k,), tc.optimizer.weight_decay, device=device)
    losses: list[np.ndarray] = []
    best = math.inf
    avg = np.zeros(k)
    stop_reason = "reached the end of the schedule"
    for i, batches in enumerate(zip(*streams)):
        if i == n_steps:
            break
        x = torch.stack([b[0] for b in batches])
        y = torch.stack([b[1] for b in batches])
        H = {"lr": torch.full((k,), float(lrs[i]), device=device), "weight_decay": wd}
        P, S, O, loss, _, active = step(P, S, O, H, x, y, active)
        loss = loss.double().cpu().numpy()
        losses.append(loss)
        avg = lf.smoothing * avg + (1 - lf.smoothing) * loss
        mean_smoothed = float(np.mean(avg / (1 - lf.smoothing ** (i + 1))))
        if progress_every and i % progress_every == 0:
            log(f"step {i + 1}/{n_steps}: lr {lrs[i]:.2e}, smoothed loss {mean_smoothed:.4f}")
        if not np.all(np.isfinite(loss)):
            stop_reason = f"a loss was not finite at lr {lrs[i]:.3g} (step {i + 1})"
            losses.pop()
            break
        best = min(best, mean_smoothed)
        if i > 0 and mean_smoothed > lf.stop_factor * best:
            stop_reason = f"smoothed loss exceeded {lf.stop_factor:g}x its minimum at lr {lrs[i]:.3g} (step {i + 1})"
            break
    raw = np.array(losses)
    smoothed = smooth(raw, lf.smoothing) if len(raw) else raw
    curve = smoothed.mean(axis=1) if len(raw) else np.array([])
    used = lrs[: len(raw)]
    out = {"lrs": used, "losses": raw, "smoothed": smoothed, "seeds": seeds, "stop_reason": stop_reason,
           "steps": len(raw), "planned_steps": n_steps}
    if len(raw) >= 3:
        out.update(suggestions(used, curve))
    return out


def write_outputs(res: dict, out_dir: Path, synthetic: bool) -> None:
    from .plots import lr_finder_figure

    buf = io.StringIO()
    w = csv.writer(buf)
    k = len(res["seeds"])
    w.writerow(["step", "lr"] + [f"loss_seed{s}" for s in res["seeds"]] + [f"smoothed_seed{s}" for s in res["seeds"]]
               + ["smoothed_mean", "smoothed_min", "smoothed_max"])
    for i, lr in enumerate(res["lrs"]):
        sm = res["smoothed"][i]
        w.writerow([i + 1, f"{lr:.6g}"] + [f"{v:.6f}" for v in res["losses"][i]] + [f"{v:.6f}" for v in sm]
                   + [f"{sm.mean():.6f}", f"{sm.min():.6f}", f"{sm.max():.6f}"])
    atomic_write_text(out_dir / "lr_finder.csv", buf.getvalue())
    summary = {key: res[key] for key in ("steepest_descent_lr", "upper_bound_lr", "min_smoothed_loss", "rule")
               if key in res}
    summary.update({"seeds": res["seeds"], "steps": res["steps"], "planned_steps": res["planned_steps"],
                    "stop_reason": res["stop_reason"], "dataset": "synthetic" if synthetic else "cifar100",
                    "num_seeds": k})
    atomic_write_json(out_dir / "lr_finder.json", summary)
    lr_finder_figure(res, out_dir / "lr_finder.png", synthetic)


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.base_parser("cifar100_func.lr_finder", "Learning-rate range test (several seeds stacked under vmap).")
    run = cli.prepare(p.parse_args(argv), "lr_finder")
    cfg, device, data, out_dir = run.cfg, run.device, run.data, run.out_dir
    print(f"{run.tag}: lr {cfg.lr_finder.start:g} -> {cfg.lr_finder.end:g}, {cfg.lr_finder.seeds} seeds stacked, "
          f"{cfg.train.optimizer.name}, wd {cfg.train.optimizer.weight_decay:g}, device {device}", flush=True)
    res = find_lr(cfg, data.to(device), device, progress_every=100)
    write_outputs(res, out_dir, data.synthetic)
    print(f"stopped: {res['stop_reason']} after {res['steps']} of {res['planned_steps']} steps")
    if "upper_bound_lr" in res:
        print(f"steepest descent at lr {res['steepest_descent_lr']:.3g}; the loss bottoms out (upper bound) at lr "
              f"{res['upper_bound_lr']:.3g}\nrule: {res['rule']}")
    print(f"wrote {out_dir / 'lr_finder.png'}, lr_finder.csv, lr_finder.json")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
