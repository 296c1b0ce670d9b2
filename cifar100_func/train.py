"""``python -m cifar100_func.train``: the final training run on the standard path (one model, no stacking).

Writes ``<runs_dir>/<run name>/{metrics.jsonl, config.yaml, loss.png, accuracy.png, last.ckpt}`` and keeps
the best-by-validation checkpoint at ``<artifacts_dir>/best.ckpt``; ``--resume`` continues from ``last.ckpt``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from . import cli
from .config import save_snapshot
from .data import load_dataset
from .errors import OutputError
from .io import ensure_dir
from .trainer import RunFiles, fit


def parser():
    p = cli.base_parser("cifar100_func.train", __doc__.splitlines()[0].strip("`"))
    p.add_argument("--run-name", default="train", help="folder under paths.runs_dir (default: train)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last.ckpt")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same name and best.ckpt")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cfg = cli.load(args)
    device = cli.resolve_device(args.device)
    run_dir = Path(cfg.paths.runs_dir) / args.run_name
    files = RunFiles(run_dir, Path(cfg.paths.artifacts_dir) / "best.ckpt", run_dir / "last.ckpt")
    if args.resume and not files.last_ckpt.is_file():
        raise OutputError(f"--resume: no {files.last_ckpt} to continue from (start without --resume)")
    if not args.resume and not args.overwrite:
        for existing in (run_dir / "metrics.jsonl", files.best_ckpt):
            if existing.exists():
                raise OutputError(
                    f"{existing} already exists: pass --resume to continue that run, --overwrite to replace it, "
                    "or choose other paths (--run-name, --set paths.artifacts_dir=...)")
    data = load_dataset(cfg.dataset, args.data_root)
    ensure_dir(run_dir)
    ensure_dir(files.best_ckpt.parent)
    save_snapshot(cfg, run_dir / "config.yaml")
    tag = "SYNTHETIC data (not CIFAR-100)" if data.synthetic else f"CIFAR-100 from {data.source}"
    print(f"{tag}: train {len(data.train)}, val {len(data.val)} | device {device} | "
          f"blocks {list(cfg.model.blocks)}, mid {cfg.model.bottleneck_mid}, {cfg.train.optimizer.name} "
          f"lr {cfg.train.optimizer.lr}, wd {cfg.train.optimizer.weight_decay}, {cfg.train.epochs} epochs, "
          f"precision {cfg.train.precision}", flush=True)
    result = fit(cfg, data.to(device), device, files, resume=args.resume, run_name=args.run_name)
    print(f"best val acc {result.best_val_acc:.4f} at epoch {result.best_epoch}; checkpoint {files.best_ckpt}; "
          f"curves and metrics in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
