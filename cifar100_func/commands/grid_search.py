"""``cifar100-func grid_search``: the study's hyper-parameter grid, vectorised, in one process.

Configurations that share an architecture (``blocks``, ``mid``) are trained at the same time as stacked
models under ``torch.func.vmap`` (:mod:`.grid_run`: one plan each for the loop of :mod:`.loop`, exhaustive or
successive halving, with per-stack records that let an interrupted grid resume); groups run one after another, at most
``grid.max_stack`` models per stack. Writes ``<runs_dir>/grid_search/``: ``metrics.jsonl`` (one object per model
per epoch), ``results.csv``, ``results.md``, ``grid_search_train.png``, ``grid_search_val.png``,
``grid_search_heatmap.png`` and the config snapshot; checkpoints only with ``grid.save_checkpoints: true``
(``ckpt/<config name>.ckpt``, reference layout; never ``best.ckpt``).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import cli

from ..core import model
from ..runtime.checkpoint import save_checkpoint
from ..config import Config, parse_override
from ..data.dataset import Dataset
from ..errors import ConfigError
from ..runtime.io import atomic_write_json, atomic_write_text, to_json
from ..runtime.backend import Backend
from ..runtime import from_config
from ..grid.ensembles import analyse
from ..grid.run import GridRun, Member, Stack, member_trees
from ..runtime.events import write_hparams
from ..core.hyper import Hyper

ONLY_KEYS = {
    "lr": "lr", "train.optimizer.lr": "lr",
    "weight_decay": "weight_decay", "wd": "weight_decay", "train.optimizer.weight_decay": "weight_decay",
    "blocks": "blocks", "model.blocks": "blocks",
    "mid": "mid", "bottleneck_mid": "mid", "model.bottleneck_mid": "mid",
    "label_smoothing": "label_smoothing", "ls": "label_smoothing", "train.label_smoothing": "label_smoothing",
}


@dataclass(frozen=True)
class GridPoint:
    """One configuration of the grid, with its position in the full grid (which fixes its seed)."""

    index: int
    lr: float
    weight_decay: float
    blocks: tuple[int, int, int]
    mid: int
    label_smoothing: float | None = None  # None: not a grid axis (train.label_smoothing)

    @property
    def name(self) -> str:
        ls = "" if self.label_smoothing is None else f"_ls{self.label_smoothing:g}"
        return f"lr{self.lr:g}_wd{self.weight_decay:g}{ls}_b{'-'.join(map(str, self.blocks))}_m{self.mid}"

    def hyper(self, cfg: Config) -> Hyper:
        ls = cfg.train.label_smoothing if self.label_smoothing is None else self.label_smoothing
        return Hyper(self.lr, self.weight_decay, ls)

    @property
    def arch_key(self) -> tuple:
        return (self.blocks, self.mid)


def expand(cfg: Config) -> list[GridPoint]:
    """Every combination of ``hparams``, in a fixed order (architecture-major, as the report's table)."""
    h = cfg.hparams
    combos = itertools.product(h.blocks, h.bottleneck_mid, h.lr, h.weight_decay, h.label_smoothing or [None])
    return [GridPoint(i, lr, wd, tuple(b), mid, ls)  # type: ignore[arg-type]
            for i, (b, mid, lr, wd, ls) in enumerate(combos)]


def parse_only(filters: Sequence[str]) -> dict[str, Any]:
    """``--only model.blocks=[3,3,3]`` -> {"blocks": (3, 3, 3)}; unknown keys are a ConfigError."""
    out: dict[str, Any] = {}
    for text in filters:
        path, value = parse_override(text)
        key = ".".join(path)
        if key not in ONLY_KEYS:
            raise ConfigError(f"--only {key}: can filter on {', '.join(sorted(set(ONLY_KEYS)))}")
        field = ONLY_KEYS[key]
        out[field] = tuple(value) if isinstance(value, list) else value
    return out


def select(points: list[GridPoint], only: dict[str, Any]) -> list[GridPoint]:
    chosen = [p for p in points if all(getattr(p, k) == v for k, v in only.items())]
    if not chosen:
        raise ConfigError(f"--only {only}: matches none of the {len(points)} grid configurations")
    return chosen


def stacks(points: list, max_stack: int | None) -> list[list]:
    """Group by architecture (``.arch_key``), then cut each group into stacks of at most ``max_stack`` models."""
    groups: dict[tuple, list] = {}
    for p in points:
        groups.setdefault(p.arch_key, []).append(p)
    out = []
    for group in groups.values():
        size = max_stack or len(group)
        out += [group[i : i + size] for i in range(0, len(group), size)]
    return out


def grid_data(cfg: Config) -> Config:
    """The config the grid reads its data with: at most ``grid.max_train`` training images (a quick profile ranks
    on a subset and trains its final run on all of them)."""
    n = cfg.grid.max_train
    if n is None:
        return cfg
    return replace(cfg, dataset=replace(cfg.dataset, max_train=min(n, cfg.dataset.max_train or n)))


def member_seeds(cfg: Config, point: GridPoint) -> list[int]:
    """The ``hparams.seeds`` seeds of a configuration: ``train.seed + k`` for every configuration alike (paired
    comparisons; with one seed every model uses ``train.seed``, the reference), or, with ``grid.independent_seeds``,
    seeds of its own: ``train.seed + index * seeds + k``."""
    n = cfg.hparams.seeds
    base = cfg.train.seed + (point.index * n if cfg.grid.independent_seeds else 0)
    return [base + k for k in range(n)]


@dataclass(frozen=True)
class Slot:
    """One model of the grid: a configuration at its ``k``-th seed."""

    point: GridPoint
    k: int
    seed: int
    seeds: int  # of the configuration

    @property
    def arch_key(self) -> tuple:
        return self.point.arch_key

    def member(self, cfg: Config) -> Member:
        name = self.point.name if self.seeds == 1 else f"{self.point.name}_s{self.k}"
        return Member(name, self.point.hyper(cfg), self.seed, self.point.name if self.seeds > 1 else "")


def run_grid(cfg: Config, data: Dataset, backend: Backend, points: list[GridPoint], out_dir: Path | None,
             progress: bool | None = None, log=print, force: bool = False, data_root: str | None = None) -> list[dict]:
    """:func:`train_grid`'s ranked rows."""
    return train_grid(cfg, data, backend, points, out_dir, progress, log, force, data_root)[0]


def train_grid(cfg: Config, data: Dataset, backend: Backend, points: list[GridPoint], out_dir: Path | None,
               progress: bool | None = None, log=print, force: bool = False,
               data_root: str | None = None) -> tuple[list[dict], list[Stack]]:
    """Train every point at each of its ``hparams.seeds`` seeds, stack by stack and rung by rung (:mod:`..grid.run`),
    on ``grid.engine`` (this process, or Ray: :mod:`..grid.ray_engine`); one ranked summary row per point (its seeds
    under ``row["members"]``) and the trained stacks. With ``out_dir``, per-stack records there let a new run keep
    finished work."""
    from ..runtime.stack_size import resolve_max_stack  # grid.max_stack, "auto" sized per architecture

    slots = [Slot(p, k, seed, cfg.hparams.seeds) for p in points for k, seed in enumerate(member_seeds(cfg, p))]
    arch = lambda g: from_config.arch(cfg, data.num_classes, g[0].point.blocks, g[0].point.mid)  # noqa: E731
    groups = [s for g in stacks(slots, None) for s in stacks(g, resolve_max_stack(cfg, backend, arch(g), log))]
    runs = [Stack(n, arch(g), [s.member(cfg) for s in g], list(range(len(g)))) for n, g in enumerate(groups, start=1)]

    def save_final(stack: Stack, trees) -> None:
        if out_dir is None or not cfg.grid.save_checkpoints:
            return
        for pos, i in enumerate(stack.running):
            params, state = member_trees(trees, pos, len(stack.running))
            m = stack.members[i]
            save_checkpoint(out_dir / "ckpt" / f"{m.name}.ckpt", params, state, config=cfg.to_dict(),
                            grid_point=m.configuration, seed=m.seed, epoch=cfg.grid.epochs, metrics=stack.metrics[i])

    records = None if out_dir is None else out_dir / "stacks"
    events = out_dir / "tb" if out_dir is not None and cfg.paths.tensorboard else None
    engine = None
    if cfg.grid.engine == "ray":
        from ..grid.ray_engine import RayEngine

        engine = RayEngine(cfg, data, data_root, log)
    GridRun(cfg, data, backend, runs, records, force, progress, log, save_final, events, engine).run()
    where: dict[int, list[tuple[Stack, int, Slot]]] = {}
    for stack, group in zip(runs, groups):
        for i, slot in enumerate(group):
            where.setdefault(slot.point.index, []).append((stack, i, slot))
    rows = [configuration_row(cfg, p, where[p.index], log) for p in points]
    if out_dir is not None:
        keys = ("config", "lr", "weight_decay", "label_smoothing", "blocks", "mid")
        lines = [to_json({**{k: r[k] for k in keys}, "seed": m["seed"], **rec}) for r in rows for m in r["members"]
                 for rec in m["history"]]
        atomic_write_text(out_dir / "metrics.jsonl", "".join(line + "\n" for line in lines))
    _rank(rows)
    if events is not None:
        for r in rows:
            write_hparams(events / r["config"],
                          {"lr": r["lr"], "weight_decay": r["weight_decay"], "label_smoothing": r["label_smoothing"],
                           "blocks": "-".join(map(str, r["blocks"])), "mid": r["mid"]},
                          {"final_val_acc": r["final_val_acc"], "best_val_acc": r["best_val_acc"],
                           "epochs": r["epochs"], "rank": r["rank"]})
    return rows, runs


def configuration_row(cfg: Config, p: GridPoint, members: list[tuple[Stack, int, Slot]], log=print) -> dict:
    """One configuration's summary over its seeds: the seed mean of each metric (the ranking's), its spread and
    standard error, each seed's own record under ``"members"``, and the mean of the seeds' curves."""
    from ..stats.seeds import summarise

    stack0 = members[0][0]
    params_count = model.count_params(model.init(stack0.arch, torch.Generator().manual_seed(0))[0])
    seeds = []
    for stack, i, slot in members:
        hist = stack.metrics[i]
        seeds.append({"name": stack.members[i].name, "seed": slot.seed, "history": hist,
                      "final_val_acc": hist[-1]["val_acc"], "final_val_loss": hist[-1]["val_loss"],
                      "best_val_acc": max([r["val_acc"] for r in hist if not r["diverged"]] or [0.0]),
                      "final_train_acc": hist[-1]["train_acc"], "rung_val_acc": stack.rung_val_acc[i],
                      "diverged_at_step": stack.diverged_at[i], "pruned_at_rung": stack.pruned_at[i],
                      "step_losses": stack.step_losses[i]})
        if stack.diverged_at[i] is not None:
            log(f"  {stack.members[i].name}: diverged at step {stack.diverged_at[i]} (frozen there; the others were "
                "unaffected)")
    mean = lambda key: float(np.mean([m[key] for m in seeds]))  # noqa: E731
    acc, loss = summarise([m["final_val_acc"] for m in seeds]), summarise([m["final_val_loss"] for m in seeds])
    diverged = [m["diverged_at_step"] for m in seeds if m["diverged_at_step"] is not None]
    return {
        "config": p.name, "lr": p.lr, "weight_decay": p.weight_decay,
        "label_smoothing": p.hyper(cfg).label_smoothing, "ls_axis": p.label_smoothing is not None,
        "blocks": list(p.blocks), "mid": p.mid, "params": params_count, "seeds": len(seeds),
        "best_val_acc": mean("best_val_acc"), "final_val_acc": acc.mean, "final_train_acc": mean("final_train_acc"),
        "val_acc_mean": acc.mean, "val_acc_sd": acc.sd, "val_acc_sem": acc.sem,
        "val_loss_mean": loss.mean, "val_loss_sd": loss.sd, "val_loss_sem": loss.sem,
        "epochs": seeds[0]["history"][-1]["epoch"],
        "rung_val_acc": _mean_of_lists([m["rung_val_acc"] for m in seeds]),
        "pruned": seeds[0]["pruned_at_rung"] is not None, "pruned_at_rung": seeds[0]["pruned_at_rung"],
        "diverged": bool(diverged), "diverged_at_step": min(diverged) if diverged else None,
        "history": mean_history([m["history"] for m in seeds]),
        "step_losses": _mean_of_lists([m["step_losses"] for m in seeds]), "members": seeds,
    }


def _mean_of_lists(lists: list[list]) -> list:
    """The element-wise mean over seeds (a missing value, a diverged step read back from JSON as null, is NaN)."""
    if len(lists) == 1:
        return lists[0]
    return np.mean(np.array(lists, dtype=float), axis=0).tolist()


def mean_history(histories: list[list[dict]]) -> list[dict]:
    """Epoch by epoch, the mean over seeds of every number (``diverged``: any seed); one seed's history as it is."""
    if len(histories) == 1:
        return histories[0]
    out = []
    for recs in zip(*histories):
        rec = {}
        for key, v in recs[0].items():
            values = [r[key] for r in recs]
            if isinstance(v, bool):
                rec[key] = any(values)
            elif isinstance(v, (int, float)):
                rec[key] = float(np.mean([np.nan if x is None else x for x in values]))
            else:
                rec[key] = v
        out.append(rec)
    return out


def _rank(rows: list[dict]) -> None:
    """Diverged last; then the configurations that trained furthest (halving), by their seeds' mean last
    validation accuracy."""
    order = sorted(rows, key=lambda r: (r["diverged"], -len(r["rung_val_acc"]), -r["final_val_acc"]))
    for i, r in enumerate(order, start=1):
        r["rank"] = i


COLUMNS = ["rank", "config", "lr", "weight_decay", "label_smoothing", "blocks", "mid", "params", "epochs",
           "rung_val_acc", "pruned", "seeds", "best_val_acc", "final_val_acc", "val_acc_sd", "val_acc_sem",
           "ensemble_val_acc", "final_train_acc", "diverged"]


def _cell(r: dict, c: str) -> Any:
    if c == "blocks":
        return "-".join(map(str, r[c]))
    if c == "rung_val_acc":
        return " ".join(f"{v:.4f}" for v in r[c])
    return r.get(c, "")


def _val(r: dict) -> str:
    """The validation accuracy of a configuration: one seed's, or the seeds' mean +- its standard error."""
    if r.get("seeds", 1) == 1:
        return f"{100 * r['final_val_acc']:.2f}%"
    return f"{100 * r['final_val_acc']:.2f} +- {100 * r['val_acc_sem']:.2f}%"


def results_markdown(rows: list[dict], synthetic: bool) -> str:
    """The ranked table of every configuration: the epoch it reached, its validation accuracy at each rung, and
    whether it was pruned (halving) or diverged (``results.md``, and the report's grid section)."""
    lines = ["# Grid search results" + (" (SYNTHETIC DATA)" if synthetic else ""), "",
             "| rank | lr | wd | ls | blocks | mid | params | epochs | val acc at each rung | pruned | seeds | "
             "best val acc | final val acc (seed mean +- SE) | ensemble of its seeds | final train acc | diverged |",
             "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: "
             "| --- |"]
    for r in sorted(rows, key=lambda r: r["rank"]):
        rung = " / ".join(f"{100 * v:.2f}%" for v in r["rung_val_acc"])
        pruned = f"after rung {r['pruned_at_rung']}" if r["pruned"] else "no"
        lines.append(f"| {r['rank']} | {r['lr']:g} | {r['weight_decay']:g} | {r.get('label_smoothing', 0):g} | "
                     f"{tuple(r['blocks'])} | {r['mid']} | "
                     f"{r['params']:,} | {r['epochs']:g} | {rung} | {pruned} | {r.get('seeds', 1)} | "
                     f"{100 * r['best_val_acc']:.2f}% | {_val(r)} | "
                     + (f"{100 * r['ensemble_val_acc']:.2f}% | " if r.get("seeds", 1) > 1 and "ensemble_val_acc" in r
                        else "- | ")
                     + f"{100 * r['final_train_acc']:.2f}% | "
                     f"{'yes' if r['diverged'] else 'no'} |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], out_dir: Path, synthetic: bool) -> None:
    """``results.csv`` and ``results.md`` (:func:`results_markdown`)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in sorted(rows, key=lambda r: r["rank"]):
        w.writerow([_cell(r, c) for c in COLUMNS])
    atomic_write_text(out_dir / "results.csv", buf.getvalue())
    atomic_write_text(out_dir / "results.md", results_markdown(rows, synthetic))


@dataclass(frozen=True)
class GridResult:
    """Every configuration's row (ranked; its metrics under ``"history"``), as ``results.json`` holds them, and the
    folder with the tables and figures."""

    rows: list[dict]
    out_dir: Path
    synthetic: bool
    sweep: dict  # sweep.json: the ranking's seed noise, the selected ensemble, the checkpoints (:mod:`..grid.ensembles`)

    @property
    def winner(self) -> dict:
        return min(self.rows, key=lambda r: r["rank"])

    @property
    def figures(self) -> dict[str, Path]:
        names = ("train", "val", "heatmap", "hparams", "ensemble_gain", "reliability")
        return {k: self.out_dir / f"grid_search_{k}.png" for k in names}

    @property
    def selection_ckpt(self) -> Path | None:
        path = self.sweep.get("checkpoints", {}).get("selection")
        return None if path is None else Path(path)


def out_dir(cfg: Config) -> Path:
    return Path(cfg.paths.runs_dir) / "grid_search"


def load(cfg: Config) -> GridResult:
    """The result an earlier run left (raises when it is missing or damaged)."""
    d = out_dir(cfg)
    rows = json.loads((d / "results.json").read_text())
    if not rows or not all("rank" in r for r in rows):
        raise ValueError(f"{d / 'results.json'}: no ranked rows")
    sweep = json.loads((d / "sweep.json").read_text())
    if not isinstance(sweep, dict) or "selection" not in sweep:
        raise ValueError(f"{d / 'sweep.json'}: no sweep summary")
    return GridResult(rows, d, cfg.dataset.name == "synthetic", sweep)


@cli.exclusive(lambda cfg, *args, **kwargs: [out_dir(cfg)])
def execute(cfg: Config, rt: cli.Runtime, only: dict[str, Any] | None = None, force: bool = False) -> GridResult:
    """Train the grid of ``cfg`` (the points ``only`` selects); writes ``<runs_dir>/grid_search/``; ``force``
    trains every stack again (else finished ones are kept from their records)."""
    points = select(expand(cfg), only or {})  # a bad filter fails before any work
    out = out_dir(cfg)
    cfg = grid_data(cfg)
    run = cli.setup(cfg, rt, out)
    device, data = run.device, run.data
    print(f"{run.tag}: train {len(data.train)}, val {len(data.val)} | {len(points)} configurations, "
          f"{cfg.grid.epochs} epochs ({cfg.grid.schedule}), "
          f"{'independent' if cfg.grid.independent_seeds else 'shared'} seeds\n"
          f"backend: {run.backend.header()}", flush=True)
    t0 = time.perf_counter()
    if cfg.grid.engine == "ray":
        from ..grid.ray_engine import require_ray

        require_ray()  # before any data reaches the device
    data = data.to(device)
    rows, trained = train_grid(cfg, data, run.backend, points, out, force=force, data_root=rt.data_root)
    sweep = analyse(cfg, rows, trained, data.val.y, out)
    write_tables(rows, out, data.synthetic)
    atomic_write_json(out / "results.json", rows)
    atomic_write_json(out / "sweep.json", sweep)
    result = GridResult(rows, out, data.synthetic, sweep)
    figures(result)
    best = result.winner
    print(results_markdown(rows, data.synthetic))
    for line in sweep_lines(result):
        print(line)
    print(f"best: {best['config']} (val acc {best['final_val_acc']:.4f}"
          + (f", mean of {best['seeds']} seeds" if best["seeds"] > 1 else "") + f"); grid wall time "
          f"{time.perf_counter() - t0:.0f}s; outputs in {out}")
    return result


def figures(result: GridResult) -> None:
    from ..report.plots import grid_curves, grid_heatmaps
    from ..report import sweep_plots

    rows, f, synthetic = result.rows, result.figures, result.synthetic
    grid_curves(rows, "train", f["train"], synthetic)
    grid_curves(rows, "val", f["val"], synthetic)
    grid_heatmaps(rows, f["heatmap"], synthetic)
    sweep_plots.metric_vs_hparams(rows, f["hparams"])
    sweep_plots.ensemble_gain(rows, f["ensemble_gain"])
    sel = result.sweep.get("selection")
    if sel is not None:
        rel = sel["val"]["reliability"]
        sweep_plots.reliability_diagram(rel["before"], rel["after"], f["reliability"],
                                        "selected ensemble, validation split")


def sweep_lines(result: GridResult) -> list[str]:
    """What the sweep adds to the ranking, in words: its seed noise and its ensembles."""
    out = []
    noise, sel = result.sweep.get("noise"), result.sweep.get("selection")
    if noise:
        out += [noise[k]["verdict"] + "." for k in ("runner_up", "median") if k in noise]
        if noise.get("single_seed_flips") is not None:
            out.append(f"one seed alone would have picked another winner in {100 * noise['single_seed_flips']:.0f}% "
                       f"of its {noise['seeds']} seeds")
    best = result.winner
    if "ensemble_val" in best and best["seeds"] > 1:
        out.append(f"{best['config']}: single models {100 * best['single_val']['acc']:.2f}% on validation, the "
                   f"ensemble of its {best['seeds']} seeds {100 * best['ensemble_val_acc']:.2f}%")
    if sel is not None:
        out.append(f"selected ensemble ({sel['size']} picks of {sel['pool']} members, {len(sel['members'])} distinct):"
                   f" validation {100 * sel['val']['acc']:.2f}%, NLL {sel['val']['loss']:.4f}; best single member "
                   f"{sel['best_member']['name']} {100 * sel['best_member']['acc']:.2f}%, NLL "
                   f"{sel['best_member']['loss']:.4f}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.base_parser("cifar100-func grid_search", "Train the hyper-parameter grid as stacked models.")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="run a subset, e.g. --only model.blocks=[3,3,3] (repeatable; all must match)")
    p.add_argument("--force", action="store_true", help="train every stack again (ignore the per-stack records)")
    p.add_argument("--engine", choices=["local", "ray"], default=None, help="grid.engine: where the stacks train")
    p.add_argument("--address", default=None, help="grid.ray.address: a running Ray cluster (auto or host:port)")
    args = p.parse_args(argv)
    if args.engine:
        args.overrides.append(f"grid.engine={args.engine}")
    if args.address:
        args.overrides.append(f"grid.ray.address={args.address}")
    only = parse_only(args.only)
    execute(cli.load(args), cli.runtime(args), only, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
