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

import torch

from . import cli

from ..core import model
from ..runtime.checkpoint import save_checkpoint
from ..config import Config, parse_override
from ..data.dataset import Dataset
from ..errors import ConfigError
from ..runtime.io import atomic_write_json, atomic_write_text, to_json
from ..runtime.backend import Backend
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


def stacks(points: list[GridPoint], max_stack: int | None) -> list[list[GridPoint]]:
    """Group by architecture, then cut each group into stacks of at most ``max_stack`` models."""
    groups: dict[tuple, list[GridPoint]] = {}
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


def member_seed(cfg: Config, point: GridPoint) -> int:
    """Shared seeds (the reference): every model uses ``train.seed``. Independent: ``train.seed + index``."""
    return cfg.train.seed + point.index if cfg.grid.independent_seeds else cfg.train.seed


def run_grid(cfg: Config, data: Dataset, backend: Backend, points: list[GridPoint], out_dir: Path | None,
             progress: bool | None = None, log=print, force: bool = False, data_root: str | None = None) -> list[dict]:
    """Train every point, stack by stack and rung by rung (:mod:`.grid_run`), on ``grid.engine`` (this process, or
    Ray: :mod:`.ray_engine`); one summary row per point (its metrics in ``row["history"]``). With ``out_dir``,
    per-stack records there let a new run keep finished work."""
    groups = stacks(points, cfg.grid.max_stack)
    runs = [Stack(n, model.Arch(g[0].blocks, g[0].mid, data.num_classes),
                  [Member(p.name, p.hyper(cfg), member_seed(cfg, p)) for p in g],
                  list(range(len(g)))) for n, g in enumerate(groups, start=1)]

    def save_final(stack: Stack, trees) -> None:
        if out_dir is None or not cfg.grid.save_checkpoints:
            return
        for pos, i in enumerate(stack.running):
            params, state = member_trees(trees, pos, len(stack.running))
            p = groups[stack.index - 1][i]
            save_checkpoint(out_dir / "ckpt" / f"{p.name}.ckpt", params, state, config=cfg.to_dict(),
                            grid_point=p.name, epoch=cfg.grid.epochs, metrics=stack.metrics[i])

    records = None if out_dir is None else out_dir / "stacks"
    events = out_dir / "tb" if out_dir is not None and cfg.paths.tensorboard else None
    engine = None
    if cfg.grid.engine == "ray":
        from ..grid.ray_engine import RayEngine

        engine = RayEngine(cfg, data, data_root, log)
    GridRun(cfg, data, backend, runs, records, force, progress, log, save_final, events, engine).run()
    rows = []
    for stack, group in zip(runs, groups):
        params_count = model.count_params(model.init(stack.arch, torch.Generator().manual_seed(0))[0])
        for i, p in enumerate(group):
            hist = stack.metrics[i]
            diverged = stack.diverged_at[i] is not None
            rows.append({
                "config": p.name, "lr": p.lr, "weight_decay": p.weight_decay,
                "label_smoothing": p.hyper(cfg).label_smoothing, "ls_axis": p.label_smoothing is not None,
                "blocks": list(p.blocks), "mid": p.mid, "params": params_count,
                "best_val_acc": max([r["val_acc"] for r in hist if not r["diverged"]] or [0.0]),
                "final_val_acc": hist[-1]["val_acc"], "final_train_acc": hist[-1]["train_acc"],
                "epochs": hist[-1]["epoch"], "rung_val_acc": stack.rung_val_acc[i],
                "pruned": stack.pruned_at[i] is not None, "pruned_at_rung": stack.pruned_at[i],
                "diverged": diverged, "diverged_at_step": stack.diverged_at[i],
                "history": hist, "step_losses": stack.step_losses[i],
            })
            if diverged:
                log(f"  {p.name}: diverged at step {stack.diverged_at[i]} (frozen there; the others were unaffected)")
    if out_dir is not None:
        keys = ("config", "lr", "weight_decay", "label_smoothing", "blocks", "mid")
        lines = [to_json({**{k: r[k] for k in keys}, **rec}) for r in rows for rec in r["history"]]
        atomic_write_text(out_dir / "metrics.jsonl", "".join(line + "\n" for line in lines))
    _rank(rows)
    if events is not None:
        for r in rows:
            write_hparams(events / r["config"],
                          {"lr": r["lr"], "weight_decay": r["weight_decay"], "label_smoothing": r["label_smoothing"],
                           "blocks": "-".join(map(str, r["blocks"])), "mid": r["mid"]},
                          {"final_val_acc": r["final_val_acc"], "best_val_acc": r["best_val_acc"],
                           "epochs": r["epochs"], "rank": r["rank"]})
    return rows


def _rank(rows: list[dict]) -> None:
    """Diverged last; then the configurations that trained furthest (halving), by their last validation accuracy."""
    order = sorted(rows, key=lambda r: (r["diverged"], -len(r["rung_val_acc"]), -r["final_val_acc"]))
    for i, r in enumerate(order, start=1):
        r["rank"] = i


COLUMNS = ["rank", "config", "lr", "weight_decay", "label_smoothing", "blocks", "mid", "params", "epochs", "rung_val_acc", "pruned",
           "best_val_acc", "final_val_acc", "final_train_acc", "diverged"]


def _cell(r: dict, c: str) -> Any:
    if c == "blocks":
        return "-".join(map(str, r[c]))
    if c == "rung_val_acc":
        return " ".join(f"{v:.4f}" for v in r[c])
    return r[c]


def results_markdown(rows: list[dict], synthetic: bool) -> str:
    """The ranked table of every configuration: the epoch it reached, its validation accuracy at each rung, and
    whether it was pruned (halving) or diverged (``results.md``, and the report's grid section)."""
    lines = ["# Grid search results" + (" (SYNTHETIC DATA)" if synthetic else ""), "",
             "| rank | lr | wd | ls | blocks | mid | params | epochs | val acc at each rung | pruned | best val acc | "
             "final val acc | final train acc | diverged |",
             "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | --- |"]
    for r in sorted(rows, key=lambda r: r["rank"]):
        rung = " / ".join(f"{100 * v:.2f}%" for v in r["rung_val_acc"])
        pruned = f"after rung {r['pruned_at_rung']}" if r["pruned"] else "no"
        lines.append(f"| {r['rank']} | {r['lr']:g} | {r['weight_decay']:g} | {r.get('label_smoothing', 0):g} | "
                     f"{tuple(r['blocks'])} | {r['mid']} | "
                     f"{r['params']:,} | {r['epochs']:g} | {rung} | {pruned} | {100 * r['best_val_acc']:.2f}% | "
                     f"{100 * r['final_val_acc']:.2f}% | {100 * r['final_train_acc']:.2f}% | "
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

    @property
    def winner(self) -> dict:
        return min(self.rows, key=lambda r: r["rank"])

    @property
    def figures(self) -> dict[str, Path]:
        return {k: self.out_dir / f"grid_search_{k}.png" for k in ("train", "val", "heatmap")}


def out_dir(cfg: Config) -> Path:
    return Path(cfg.paths.runs_dir) / "grid_search"


def load(cfg: Config) -> GridResult:
    """The result an earlier run left (raises when it is missing or damaged)."""
    d = out_dir(cfg)
    rows = json.loads((d / "results.json").read_text())
    if not rows or not all("rank" in r for r in rows):
        raise ValueError(f"{d / 'results.json'}: no ranked rows")
    return GridResult(rows, d, cfg.dataset.name == "synthetic")


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
    rows = run_grid(cfg, data.to(device), run.backend, points, out, force=force, data_root=rt.data_root)
    write_tables(rows, out, data.synthetic)
    atomic_write_json(out / "results.json", rows)
    from ..report.plots import grid_curves, grid_heatmaps

    result = GridResult(rows, out, data.synthetic)
    grid_curves(rows, "train", result.figures["train"], data.synthetic)
    grid_curves(rows, "val", result.figures["val"], data.synthetic)
    grid_heatmaps(rows, result.figures["heatmap"], data.synthetic)
    best = result.winner
    print(results_markdown(rows, data.synthetic))
    print(f"best: {best['config']} (final val acc {best['final_val_acc']:.4f}); grid wall time "
          f"{time.perf_counter() - t0:.0f}s; outputs in {out}")
    return result


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
