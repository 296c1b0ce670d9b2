"""``cifar100-func lr_finder``: learning-rate range test, several seeds at once under vmap.

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
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import cli
from ..config import Config
from ..data.dataset import Dataset
from ..runtime.io import atomic_write_json, atomic_write_text
from ..runtime.backend import Backend
from ..core import schedules
from ..core.hyper import Scheduled
from ..runtime import recipe
from ..data.loader import steps_per_epoch
from ..runtime.from_config import pipeline
from ..runtime.events import Events
from ..runtime.loop import Check, Hooks, Plan, train
from ..runtime.trainer import arch_from

CHECK_EVERY = 20  # steps between two looks at the losses: the run may go up to 19 steps past its stop, unused


def sweep(start: float, end: float, steps: int) -> Scheduled:
    """The range test's lr: ``start`` times an exponential schedule that ends at ``end`` after ``steps`` steps."""
    return Scheduled(start, schedules.table(schedules.exponential(steps, end / start), steps))


def lr_schedule(start: float, end: float, steps: int) -> np.ndarray:
    """The lrs of :func:`sweep` in float64 (the x axis of the analysis): geometric from ``start`` to ``end``."""
    factor = schedules.exponential(steps, end / start)
    return start * np.array([factor(i) for i in range(steps)])


def smooth(losses: np.ndarray, beta: float) -> np.ndarray:
    """Bias-corrected exponential moving average along axis 0 (as the fast.ai finder)."""
    out = np.empty_like(losses, dtype=np.float64)
    avg = np.zeros(losses.shape[1:])
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def steepest_descent(lrs: np.ndarray, curve: np.ndarray, lo: int, hi: int, decades: float = 1.0) -> tuple[int, float]:
    """Where the smoothed loss falls fastest between points ``lo`` and ``hi`` (both included): the centre of the
    window of ``decades`` of lr over which a least-squares line through the curve has the most negative slope;
    returns (index, slope per decade). A pointwise derivative of a curve this noisy picks a spike of a few steps
    (a short range test's first decade, where nothing trains yet, shows them); a line through a decade averages
    them out. When the range is shorter than a window, the pointwise derivative is all there is."""
    x = np.log10(lrs)
    width = max(3, 2 * int(decades / 2 / (x[1] - x[0])) + 1)  # the lrs are geometric: equal steps of log lr
    if hi - lo + 1 >= width:
        starts = range(lo, hi - width + 2)
        slopes = [np.polyfit(x[s : s + width], curve[s : s + width], 1)[0] for s in starts]
        k = int(np.argmin(slopes))
        return starts[k] + width // 2, float(slopes[k])
    if hi - lo >= 2:
        slope = np.gradient(curve[lo : hi + 1], x[lo : hi + 1])
        return lo + int(np.argmin(slope)), float(np.min(slope))
    return hi, 0.0


def suggestions(lrs: np.ndarray, curve: np.ndarray) -> dict:
    """Steepest descent of the smoothed loss vs log lr (before its minimum) and the lr of the minimum."""
    i_min = int(np.argmin(curve))
    lo = max(1, len(curve) // 10)  # the first points are dominated by the EMA warm-up
    i_steep, slope = steepest_descent(lrs, curve, lo, i_min) if i_min > lo else (i_min, 0.0)
    return {
        "steepest_descent_lr": float(lrs[i_steep]),
        "steepest_slope_per_decade": slope,
        "upper_bound_lr": float(lrs[i_min]),
        "min_smoothed_loss": float(curve[i_min]),
        "rule": "steepest: the centre of the one-decade window before the minimum over which a straight line "
                "through the smoothed loss falls fastest; upper bound: lr at the minimum of the smoothed loss, "
                "where it starts to rise (an upper bound for training, not an optimum)",
    }


def stop_rule(losses: np.ndarray, lrs: np.ndarray, smoothing: float, stop_factor: float) -> tuple[int, str] | None:
    """Where the range test stops, given the losses of every step so far ((steps, seeds)): ``(n, reason)`` keeps
    the first n steps; None when it goes on. It stops before the first step with a non-finite loss, or after the
    first step whose mean smoothed loss exceeds ``stop_factor`` times its minimum so far."""
    finite = np.isfinite(losses).all(axis=1)
    n_ok = len(losses) if finite.all() else int(np.argmin(finite))
    if n_ok:
        curve = smooth(losses[:n_ok], smoothing).mean(axis=1)
        best = np.minimum.accumulate(curve)
        above = np.flatnonzero(curve[1:] > stop_factor * best[:-1])
        if len(above):
            i = int(above[0]) + 1
            return i + 1, f"smoothed loss exceeded {stop_factor:g}x its minimum at lr {lrs[i]:.3g} (step {i + 1})"
    if n_ok < len(losses):
        return n_ok, f"a loss was not finite at lr {lrs[n_ok]:.3g} (step {n_ok + 1})"
    return None


def find_lr(cfg: Config, data: Dataset, backend: Backend, progress: bool | None = None, log=print,
            events: Path | None = None) -> dict:
    """Run the range test; returns lrs, raw and smoothed losses (steps x seeds) and the suggestions. With
    ``events``, TensorBoard event files there (one folder per seed; x axis: step, with ``train/lr`` beside)."""
    lf, tc = cfg.lr_finder, cfg.train
    n_steps = steps_per_epoch(len(data.train), tc.batch_size)
    if lf.max_steps is not None:
        n_steps = min(n_steps, lf.max_steps)
    lrs = lr_schedule(lf.start, lf.end, n_steps)
    seeds = [tc.seed + s for s in range(lf.seeds)]
    opt = recipe.optimizer(tc, recipe.hyper(cfg), n_steps, lr=sweep(lf.start, lf.end, n_steps))
    plan = Plan(arch_from(cfg, data.num_classes), seeds, [opt] * len(seeds), 1, shared_data=len(seeds) == 1,
                guard=True, validate=False, max_steps=n_steps)
    stopped: dict = {}

    def check(c: Check) -> int | None:
        found = stop_rule(c.losses, lrs, lf.smoothing, lf.stop_factor)
        if found is not None:
            stopped["n"], stopped["why"] = found
            return found[0]
        return None

    pipe = pipeline(cfg, backend.device)
    hooks = Hooks(CHECK_EVERY, check)
    writer = None if events is None else Events([events / f"seed{s}" for s in seeds], plan, n_steps)
    try:
        res = train(plan, data, backend, pipe, batch_size=tc.batch_size, eval_batch_size=tc.eval_batch_size,
                    hooks=writer.hooks(hooks) if writer else hooks, desc="lr_finder", progress=progress, log=log)
    finally:
        if writer is not None:
            writer.close()
    raw = res.step_losses.numpy()
    stop_reason = stopped.get("why", "reached the end of the schedule")
    smoothed = smooth(raw, lf.smoothing) if len(raw) else raw
    curve = smoothed.mean(axis=1) if len(raw) else np.array([])
    used = lrs[: len(raw)]
    out = {"lrs": used, "losses": raw, "smoothed": smoothed, "seeds": seeds, "stop_reason": stop_reason,
           "steps": len(raw), "planned_steps": n_steps}
    if len(raw) >= 3:
        out.update(suggestions(used, curve))
    return out


def write_outputs(res: dict, out_dir: Path, synthetic: bool) -> dict:
    from ..report.plots import lr_finder_figure

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
    summary = {key: res[key] for key in ("steepest_descent_lr", "steepest_slope_per_decade", "upper_bound_lr",
                                         "min_smoothed_loss", "rule") if key in res}
    summary.update({"seeds": res["seeds"], "steps": res["steps"], "planned_steps": res["planned_steps"],
                    "stop_reason": res["stop_reason"], "dataset": "synthetic" if synthetic else "cifar100",
                    "num_seeds": k})
    atomic_write_json(out_dir / "lr_finder.json", summary)
    lr_finder_figure(res, out_dir / "lr_finder.png", synthetic)
    return summary


@dataclass(frozen=True)
class LrFinderResult:
    """The range test's summary (``lr_finder.json``: the two readings, steps, why it stopped) and its folder."""

    summary: dict
    out_dir: Path

    @property
    def figure(self) -> Path:
        return self.out_dir / "lr_finder.png"


def out_dir(cfg: Config) -> Path:
    return Path(cfg.paths.runs_dir) / "lr_finder"


def load(cfg: Config) -> LrFinderResult:
    """The result an earlier run left (raises when it is missing or damaged)."""
    d = out_dir(cfg)
    return LrFinderResult(json.loads((d / "lr_finder.json").read_text()), d)


@cli.exclusive(lambda cfg, *args, **kwargs: [out_dir(cfg)])
def execute(cfg: Config, rt: cli.Runtime) -> LrFinderResult:
    """Run the range test of ``cfg``; writes ``<runs_dir>/lr_finder/``."""
    out = out_dir(cfg)
    run = cli.setup(cfg, rt, out)
    device, data = run.device, run.data
    print(f"{run.tag}: lr {cfg.lr_finder.start:g} -> {cfg.lr_finder.end:g}, {cfg.lr_finder.seeds} seeds stacked, "
          f"{cfg.train.optimizer.name}, wd {cfg.train.optimizer.weight_decay:g}\nbackend: {run.backend.header()}",
          flush=True)
    res = find_lr(cfg, data.to(device), run.backend, events=out / "tb" if cfg.paths.tensorboard else None)
    summary = write_outputs(res, out, data.synthetic)
    print(f"stopped: {res['stop_reason']} after {res['steps']} of {res['planned_steps']} steps")
    if "upper_bound_lr" in res:
        print(f"steepest descent at lr {res['steepest_descent_lr']:.3g}; the loss bottoms out (upper bound) at lr "
              f"{res['upper_bound_lr']:.3g}\nrule: {res['rule']}")
    print(f"wrote {out / 'lr_finder.png'}, lr_finder.csv, lr_finder.json")
    return LrFinderResult(summary, out)


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.base_parser("cifar100-func lr_finder", "Learning-rate range test (several seeds stacked under vmap).")
    args = p.parse_args(argv)
    execute(cli.load(args), cli.runtime(args))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
