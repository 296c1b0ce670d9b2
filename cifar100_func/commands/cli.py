"""What every command shares: the common flags, device choice, and the wrapper that turns user mistakes into
one line on stderr and a non-zero exit (a traceback only with ``--debug``)."""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..config import Config, load_config
from ..errors import UserError

if TYPE_CHECKING:
    from ..runtime.backend import Backend
    from ..data.dataset import Dataset

DEFAULT_CONFIG = "configs/config.yaml"


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default: {DEFAULT_CONFIG})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in memory, e.g. --set train.optimizer.lr=0.005 (repeatable)")
    p.add_argument("--data-root", default=None,
                   help="folder that contains cifar-100-python/ (else $CIFAR100_ROOT, else dataset.root)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default: auto)")
    p.add_argument("--seed", type=int, default=None, help="overrides train.seed")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def load(args: argparse.Namespace) -> Config:
    """The config from ``--config`` with ``--set`` and ``--seed`` applied."""
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    return load_config(args.config, overrides)


def _raise_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt(f"signal {signum}")


def run_command(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; map ``UserError`` to its exit code and SIGINT/SIGTERM to a clean exit 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted: every file written so far is complete (atomic writes); `train --resume` continues a "
              "training run, and `study` continues where it stopped when run again", file=sys.stderr)
        return 130


@dataclass
class Prepared:
    """What a command has once its flags are read: config, backend (device and its choices), data (on the CPU),
    output folder."""

    cfg: Config
    backend: "Backend"
    data: "Dataset"
    out_dir: Path
    tag: str  # "CIFAR-100 from ..." or a loud SYNTHETIC label, for the first line a command prints

    @property
    def device(self) -> torch.device:
        return self.backend.device


def prepare(args: argparse.Namespace, folder: str, adjust: Callable[[Config], Config] | None = None) -> Prepared:
    """Config (with ``adjust`` applied), backend, data, and ``<runs_dir>/<folder>`` with the config snapshot."""
    from ..runtime.backend import Backend, resolve_device
    from ..config import save_snapshot
    from ..data.dataset import load_dataset
    from ..runtime.io import ensure_dir

    cfg = load(args)
    if adjust is not None:
        cfg = adjust(cfg)
    device = resolve_device(args.device)
    data = load_dataset(cfg.dataset, args.data_root)
    backend = Backend.create(cfg, device)
    out_dir = ensure_dir(Path(cfg.paths.runs_dir) / folder)
    save_snapshot(cfg, out_dir / "config.yaml")
    tag = "SYNTHETIC data (not CIFAR-100)" if data.synthetic else f"CIFAR-100 from {data.source}"
    return Prepared(cfg, backend, data, out_dir, tag)
