"""``python -m cifar100_func.grid_search``: the study's hyper-parameter grid, vectorised, in one process.

Configurations that share an architecture (``blocks``, ``mid``) are trained at the same time as stacked
models under ``torch.func.vmap`` (one plan each for the loop of :mod:`.loop`); groups run one after another, at most
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from . import cli, model
from .checkpoint import save_checkpoint
from .config import Config, parse_override
from .data import Dataset
from .errors import ConfigError
from .io import atomic_write_json, atomic_write_text
from .backend import Backend
from .hparams import Hyper
from .loader import Pipeline, steps_per_epoch
from .loop import Plan, train
from .trainer import lr_factors

ONLY_KEYS = {
    "lr": "lr", "train.optimizer.lr": "lr",
    "weight_decay": "weight_decay", "wd": "weight_decay", "train.optimizer.weight_decay": "weight_decay",
    "blocks": "blocks", "model.blocks": "blocks",
    "mid": "mid", "bottleneck_mid": "mid", "model.bottleneck_mid": "mid",
}


@dataclass(frozen=True)
class GridPoint:
    """One configuration of the grid, with its position in the full grid (which fixes its seed)."""

    index: int
    lr: float
    weight_decay: float
    blocks: tuple[int, int, int]
    mid: int

    @property
    def name(self) -> str:
        return f"lr{self.lr:g}_wd{self.weight_decay:g}_b{'-'.join(map(str, self.blocks))}_m{self.mid}"

    @property
    def arch_key(self) -> tuple:
        return (self.blocks, self.mid)


def expand(cfg: Config) -> list[GridPoint]:
    """Every combination of ``hparams``, in a fixed order (architecture-major, as the report's table)."""
    h = cfg.hparams
    combos = itertools.product(h.blocks, h.bottleneck_mid, h.lr, h.weight_decay)
    return [GridPoint(i, lr, wd, tuple(b), mid) for i, (b, mid, lr, wd) in enumerate(combos)]  # type: ignore[arg-type]


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


def member_seed(cfg: Config, point: GridPoint) -> int:
    """Shared seeds (the reference): every model uses ``train.seed``. Independent: ``train.seed + index``."""
    return cfg.train.seed + point.index if cfg.grid.independent_seeds else cfg.train.seed


def run_grid(cfg: Config, data: Dataset, backend: Backend, points: list[GridPoint], out_dir: Path | None,
             progress: bool | None = None, log=print) -> list[dict]:
    """Train every point, stack by stack; returns one summary row per point (metrics in ``row["history"]``)."""
    rows: list[dict] = []
    metrics_lines: list[str] = []
    tc = cfg.train
    factors = lr_factors(cfg, steps_per_epoch(len(data.train), tc.batch_size), cfg.grid.epochs)
    pipe = Pipeline.create(cfg.preprocess, cfg.augment, backend.device)
    for n, stack in enumerate(stacks(points, cfg.grid.max_stack), start=1):
        arch = model.Arch(stack[0].blocks, stack[0].mid, data.num_classes)
        plan = Plan(arch, [member_seed(cfg, p) for p in stack],
                    [Hyper(p.lr, p.weight_decay, tc.label_smoothing) for p in stack], tc.optimizer, cfg.grid.epochs,
                    factors, shared_data=not cfg.grid.independent_seeds, guard=True, compile=cfg.grid.compile)
        desc = f"stack {n}: blocks {list(arch.blocks)} mid {arch.mid}"
        log(f"{desc}: {len(stack)} models ({', '.join(p.name for p in stack)})")
        t0 = time.perf_counter()
        res = train(plan, data, backend, pipe, batch_size=tc.batch_size, eval_batch_size=tc.eval_batch_size,
                    desc=desc, progress=progress, log=log)
        log(f"{desc}: {time.perf_counter() - t0:.0f}s ({res.engine}; first step, with any compilation: "
            f"{res.first_step_seconds:.0f}s), then {res.model_images_per_sec:.0f} model-images/s")
        params_count = model.count_params(model.init(arch, torch.Generator().manual_seed(0))[0])
        for j, p in enumerate(stack):
            hist = res.metrics[j]
            for rec in hist:
                metrics_lines.append(json.dumps({"config": p.name, "lr": p.lr, "weight_decay": p.weight_decay,
                                                 "blocks": list(p.blocks), "mid": p.mid, **rec}))
            rows.append({
                "config": p.name, "lr": p.lr, "weight_decay": p.weight_decay, "blocks": list(p.blocks), "mid": p.mid,
                "params": params_count,
                "best_val_acc": max(r["val_acc"] for r in hist) if res.diverged_at[j] is None
                else max([r["val_acc"] for r in hist if not r["diverged"]] or [0.0]),
                "final_val_acc": hist[-1]["val_acc"], "final_train_acc": hist[-1]["train_acc"],
                "diverged": res.diverged_at[j] is not None, "diverged_at_step": res.diverged_at[j],
                "history": hist, "step_losses": res.step_losses[:, j].tolist(),
            })
            if res.diverged_at[j] is not None:
                log(f"  {p.name}: diverged at step {res.diverged_at[j]} (frozen there; the others were unaffected)")
            if out_dir is not None and cfg.grid.save_checkpoints:
                params, state = res.model(j)
                save_checkpoint(out_dir / "ckpt" / f"{p.name}.ckpt", params, state,
                                config=cfg.to_dict(), grid_point=p.name, epoch=cfg.grid.epochs, metrics=hist)
        if out_dir is not None:
            atomic_write_text(out_dir / "metrics.jsonl", "".join(line + "\n" for line in metrics_lines))
    _rank(rows)
    return rows


def _rank(rows: list[dict]) -> None:
    order = sorted(rows, key=lambda r: (r["diverged"], -r["final_val_acc"]))
    for i, r in enumerate(order, start=1):
        r["rank"] = i


COLUMNS = ["rank", "config", "lr", "weight_decay", "blocks", "mid", "params", "best_val_acc", "final_val_acc",
           "final_train_acc", "diverged"]


def write_tables(rows: list[dict], out_dir: Path, synthetic: bool) -> None:
    rows = sorted(rows, key=lambda r: r["rank"])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r[c] if c != "blocks" else "-".join(map(str, r[c])) for c in COLUMNS])
    atomic_write_text(out_dir / "results.csv", buf.getvalue())
    lines = ["# Grid search results" + (" (SYNTHETIC DATA)" if synthetic else ""), "",
             "| rank | lr | wd | blocks | mid | params | best val acc | final val acc | final train acc | diverged |",
             "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['rank']} | {r['lr']:g} | {r['weight_decay']:g} | {tuple(r['blocks'])} | {r['mid']} | "
                     f"{r['params']:,} | {100 * r['best_val_acc']:.2f}% | {100 * r['final_val_acc']:.2f}% | "
                     f"{100 * r['final_train_acc']:.2f}% | {'yes' if r['diverged'] else 'no'} |")
    atomic_write_text(out_dir / "results.md", "\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.base_parser("cifar100_func.grid_search", "Train the hyper-parameter grid as stacked models.")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="run a subset, e.g. --only model.blocks=[3,3,3] (repeatable; all must match)")
    args = p.parse_args(argv)
    points = select(expand(cli.load(args)), parse_only(args.only))  # a bad filter fails before any work
    run = cli.prepare(args, "grid_search")
    cfg, device, data, out_dir = run.cfg, run.device, run.data, run.out_dir
    print(f"{run.tag}: train {len(data.train)}, val {len(data.val)} | {len(points)} configurations, "
          f"{cfg.grid.epochs} epochs, {'independent' if cfg.grid.independent_seeds else 'shared'} seeds\n"
          f"backend: {run.backend.header()}", flush=True)
    t0 = time.perf_counter()
    rows = run_grid(cfg, data.to(device), run.backend, points, out_dir)
    write_tables(rows, out_dir, data.synthetic)
    atomic_write_json(out_dir / "results.json", rows)
    from .plots import grid_curves, grid_heatmaps

    grid_curves(rows, "train", out_dir / "grid_search_train.png", data.synthetic)
    grid_curves(rows, "val", out_dir / "grid_search_val.png", data.synthetic)
    grid_heatmaps(rows, out_dir / "grid_search_heatmap.png", data.synthetic)
    best = min(rows, key=lambda r: r["rank"])
    print((out_dir / "results.md").read_text())
    print(f"best: {best['config']} (final val acc {best['final_val_acc']:.4f}); grid wall time "
          f"{time.perf_counter() - t0:.0f}s; outputs in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
