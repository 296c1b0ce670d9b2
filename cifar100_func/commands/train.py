"""``cifar100-func train``: the final training run on the standard path (one model, no stacking).

Writes ``<runs_dir>/<run name>/{metrics.jsonl, config.yaml, loss.png, accuracy.png, last.ckpt}`` and keeps
the best-by-validation checkpoint at ``<artifacts_dir>/best.ckpt``; ``--resume`` continues from ``last.ckpt``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import cli
from ..config import Config, save_snapshot
from ..errors import ConfigError, OutputConflict
from ..runtime.io import ensure_dir, read_jsonl
from ..runtime.trainer import RunFiles, fit


def parser():
    p = cli.base_parser("cifar100-func train", __doc__.splitlines()[0].strip("`"))
    p.add_argument("--run-name", default="train", help="folder under paths.runs_dir (default: train)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last.ckpt")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same name and best.ckpt")
    p.add_argument("--ensemble", type=int, default=1, metavar="N",
                   help="train N seeds as one stack (vmap) and keep them as an ensemble (default 1: one model)")
    return p


@dataclass(frozen=True)
class TrainResult:
    """A finished training run: its folder (metrics, curves, ``last.ckpt``), the best-by-validation checkpoint,
    the metrics of every epoch and where the best was."""

    run_dir: Path
    best_ckpt: Path
    metrics: list[dict]
    best_val_acc: float
    best_epoch: int

    @property
    def figures(self) -> dict[str, Path]:
        return {k: self.run_dir / f"{k}.png" for k in ("loss", "accuracy")}


def load(run_dir: Path, best_ckpt: Path) -> TrainResult:
    """The result an earlier run left (raises when its metrics or checkpoint are missing or damaged)."""
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    if not metrics or not best_ckpt.is_file():
        raise FileNotFoundError(f"{run_dir}: no finished run with a checkpoint at {best_ckpt}")
    best = max(metrics, key=lambda m: m["val_acc"])
    return TrainResult(run_dir, best_ckpt, metrics, best["val_acc"], best["epoch"])


def output_paths(cfg: Config, run_name: str = "train", best_ckpt: Path | None = None) -> tuple[Path, Path]:
    """(run folder, best checkpoint) of a run: ``<runs_dir>/<run_name>`` and ``best_ckpt`` (default
    ``<artifacts_dir>/best.ckpt``)."""
    return Path(cfg.paths.runs_dir) / run_name, Path(best_ckpt or Path(cfg.paths.artifacts_dir) / "best.ckpt")


def _remove_earlier_run(run_dir: Path) -> None:
    """``--overwrite``: the earlier run's files go before the new run writes anything, so an interrupted overwrite
    never leaves a new config beside old metrics. They are first moved aside together (renames within one folder),
    then deleted. The best checkpoint stays until the new run has a better one to put in its place (atomically), so
    a new run that diverges or is interrupted in its first epoch loses nothing."""
    import os
    import shutil

    from ..runtime.lock import LOCK_NAME

    if run_dir.is_dir():
        aside = run_dir.parent / f".{run_dir.name}.overwritten-{os.getpid()}"
        aside.mkdir(exist_ok=True)
        for entry in run_dir.iterdir():
            if entry.name != LOCK_NAME:
                entry.rename(aside / entry.name)
        shutil.rmtree(aside)


def _folders(cfg: Config, rt: cli.Runtime, *, run_name: str = "train", best_ckpt: Path | None = None,
             **_) -> list[Path]:
    run_dir, best = output_paths(cfg, run_name, best_ckpt)
    return [run_dir, best.parent]


@cli.exclusive(_folders)
def execute(cfg: Config, rt: cli.Runtime, *, run_name: str = "train", best_ckpt: Path | None = None,
            resume: bool = False, overwrite: bool = False, members: int = 1) -> TrainResult:
    """Train ``cfg`` into ``<runs_dir>/<run_name>`` with the best checkpoint at ``best_ckpt`` (default
    ``<artifacts_dir>/best.ckpt``); refuses to replace an earlier run unless ``resume`` or ``overwrite``;
    ``members`` > 1 trains a seed ensemble as one stack."""
    if members < 1:
        raise ConfigError(f"--ensemble {members}: must be at least 1")
    run_dir, best = output_paths(cfg, run_name, best_ckpt)
    files = RunFiles(run_dir, best, run_dir / "last.ckpt", run_dir / "tb" if cfg.paths.tensorboard else None)
    assert files.last_ckpt is not None
    if resume and not files.last_ckpt.is_file():
        raise OutputConflict(f"--resume: no {files.last_ckpt} to continue from (start without --resume)")
    if not resume and not overwrite:
        for existing in (run_dir / "metrics.jsonl", best):
            if existing.exists():
                raise OutputConflict(
                    f"{existing} already exists: pass --resume to continue that run, --overwrite to replace it, "
                    "or choose other paths (--run-name, --set paths.artifacts_dir=...)")
    run = cli.setup(cfg, rt, None)  # the data is there and the config is sound before anything is touched
    if overwrite and not resume:
        _remove_earlier_run(run_dir)
    ensure_dir(run_dir)
    save_snapshot(cfg, run_dir / "config.yaml")
    ensure_dir(best.parent)
    data = run.data
    print(f"{run.tag}: train {len(data.train)}, val {len(data.val)} | blocks {list(cfg.model.blocks)}, mid "
          f"{cfg.model.bottleneck_mid}, {cfg.train.optimizer.name} lr {cfg.train.optimizer.lr}, wd "
          f"{cfg.train.optimizer.weight_decay}, {cfg.train.epochs} epochs"
          + (f", an ensemble of {members} seeds stacked" if members > 1 else "")
          + f"\nbackend: {run.backend.header()}", flush=True)
    result = fit(cfg, data.to(run.device), run.backend, files, resume=resume, run_name=run_name, members=members)
    print(f"best val acc {result.best_val_acc:.4f} at epoch {result.best_epoch}; checkpoint {best}; "
          f"curves and metrics in {run_dir}")
    return TrainResult(run_dir, best, result.metrics, result.best_val_acc, result.best_epoch)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    execute(cli.load(args), cli.runtime(args), run_name=args.run_name, resume=args.resume, overwrite=args.overwrite,
            members=args.ensemble)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
