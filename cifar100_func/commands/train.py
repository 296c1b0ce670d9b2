"""``cifar100-func train``: the final training run on the standard path (one model, no stacking).

Writes ``<runs_dir>/<run name>/{metrics.jsonl, config.yaml, loss.png, accuracy.png, last.ckpt}`` and keeps
the best-by-validation checkpoint at ``<artifacts_dir>/best.ckpt``; ``--resume`` continues from ``last.ckpt``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from . import cli
from ..runtime.backend import Backend, resolve_device
from ..config import Config, save_snapshot
from ..data.dataset import load_dataset
from ..errors import ConfigError, OutputError
from ..runtime.io import ensure_dir
from ..runtime.trainer import FitResult, RunFiles, fit


def parser():
    p = cli.base_parser("cifar100-func train", __doc__.splitlines()[0].strip("`"))
    p.add_argument("--run-name", default="train", help="folder under paths.runs_dir (default: train)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last.ckpt")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same name and best.ckpt")
    p.add_argument("--ensemble", type=int, default=1, metavar="N",
                   help="train N seeds as one stack (vmap) and keep them as an ensemble (default 1: one model)")
    return p


def run(cfg: Config, *, device: str = "auto", data_root: str | None = None, run_name: str = "train",
        resume: bool = False, overwrite: bool = False, members: int = 1) -> FitResult:
    """The ``train`` command on a :class:`Config` (the study's final stage calls it with the grid's winner);
    ``members`` > 1 trains a seed ensemble as one stack."""
    if members < 1:
        raise ConfigError(f"--ensemble {members}: must be at least 1")
    run_dir = Path(cfg.paths.runs_dir) / run_name
    files = RunFiles(run_dir, Path(cfg.paths.artifacts_dir) / "best.ckpt", run_dir / "last.ckpt",
                     run_dir / "tb" if cfg.paths.tensorboard else None)
    assert files.last_ckpt is not None and files.best_ckpt is not None
    if resume and not files.last_ckpt.is_file():
        raise OutputError(f"--resume: no {files.last_ckpt} to continue from (start without --resume)")
    if not resume and not overwrite:
        for existing in (run_dir / "metrics.jsonl", files.best_ckpt):
            if existing.exists():
                raise OutputError(
                    f"{existing} already exists: pass --resume to continue that run, --overwrite to replace it, "
                    "or choose other paths (--run-name, --set paths.artifacts_dir=...)")
    dev = resolve_device(device)
    data = load_dataset(cfg.dataset, data_root)
    backend = Backend.create(cfg, dev)
    ensure_dir(run_dir)
    ensure_dir(files.best_ckpt.parent)
    save_snapshot(cfg, run_dir / "config.yaml")
    tag = "SYNTHETIC data (not CIFAR-100)" if data.synthetic else f"CIFAR-100 from {data.source}"
    print(f"{tag}: train {len(data.train)}, val {len(data.val)} | blocks {list(cfg.model.blocks)}, mid "
          f"{cfg.model.bottleneck_mid}, {cfg.train.optimizer.name} lr {cfg.train.optimizer.lr}, wd "
          f"{cfg.train.optimizer.weight_decay}, {cfg.train.epochs} epochs"
          + (f", an ensemble of {members} seeds stacked" if members > 1 else "")
          + f"\nbackend: {backend.header()}", flush=True)
    result = fit(cfg, data.to(dev), backend, files, resume=resume, run_name=run_name, members=members)
    print(f"best val acc {result.best_val_acc:.4f} at epoch {result.best_epoch}; checkpoint {files.best_ckpt}; "
          f"curves and metrics in {run_dir}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run(cli.load(args), device=args.device, data_root=args.data_root, run_name=args.run_name, resume=args.resume,
        overwrite=args.overwrite, members=args.ensemble)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
