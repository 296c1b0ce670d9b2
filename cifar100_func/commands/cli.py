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
from ..errors import UserError, plain_text

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
        print(f"error: {plain_text(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted: every file written so far is complete (atomic writes); `train --resume` continues a "
              "training run, and `study` continues where it stopped when run again", file=sys.stderr)
        return 130


@dataclass(frozen=True)
class Runtime:
    """Where a command runs, beside what it computes (its config): the ``--device`` choice and ``--data-root``.
    The study hands its own to every stage it executes."""

    device: str = "auto"
    data_root: str | None = None


def runtime(args: argparse.Namespace) -> Runtime:
    return Runtime(args.device, args.data_root)


@dataclass
class Prepared:
    """What a command has once set up: config, backend (device and its choices), data (on the CPU), output
    folder (None: the command writes next to its input)."""

    cfg: Config
    backend: "Backend"
    data: "Dataset"
    out_dir: Path | None
    tag: str  # "CIFAR-100 from ..." or a loud SYNTHETIC label, for the first line a command prints

    @property
    def device(self) -> torch.device:
        return self.backend.device


def setup(cfg: Config, rt: Runtime, out_dir: Path | None) -> Prepared:
    """The one set-up of every command: device, data, backend, and ``out_dir`` (created, with the config
    snapshot)."""
    from ..config import save_snapshot
    from ..data.dataset import load_dataset
    from ..runtime.backend import Backend, resolve_device
    from ..runtime.from_config import data_spec
    from ..runtime.io import ensure_dir

    device = resolve_device(rt.device)
    data = load_dataset(data_spec(cfg), rt.data_root)
    backend = Backend.create(cfg, device)
    if out_dir is not None:
        ensure_dir(out_dir)
        save_snapshot(cfg, out_dir / "config.yaml")
    tag = "SYNTHETIC data (not CIFAR-100)" if data.synthetic else f"CIFAR-100 from {data.source}"
    return Prepared(cfg, backend, data, out_dir, tag)


def exclusive(folders: Callable[..., Sequence[Path]]) -> Callable:
    """Decorator of a command's ``execute``: it holds the lock (:mod:`..runtime.lock`) of every output folder
    ``folders(*args, **kwargs)`` names while it runs, so a second process into the same folder stops at once."""
    import contextlib
    import functools

    from ..runtime.lock import folder_lock

    def wrap(execute: Callable) -> Callable:
        @functools.wraps(execute)
        def run(*args, **kwargs):
            with contextlib.ExitStack() as held:
                for folder in folders(*args, **kwargs):
                    held.enter_context(folder_lock(folder))
                return execute(*args, **kwargs)

        return run

    return wrap


def check_writable(folders: Sequence[Path]) -> None:
    """Create every output folder and write a file in each, before any work: a folder that cannot take the
    outputs is one ``OutputConflict`` line now (exit 2), not a traceback after hours of training."""
    import os
    import tempfile

    from ..errors import OutputConflict
    from ..runtime.io import ensure_dir

    for folder in folders:
        ensure_dir(Path(folder))
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OutputConflict(f"output folder {str(folder)!r} is not writable: {exc.strerror or exc}") from None
