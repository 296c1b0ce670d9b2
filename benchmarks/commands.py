"""What the benchmarks that time the project's own commands share: the command line and the timed run.

Such a benchmark runs ``python -m cifar100_func ...`` as a user would (compilation and start-up included in the wall
time) and compares two variants of one config side by side.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def run(cmd: list[str]) -> float:
    """Run a command of the package (its output through), return its wall time in seconds."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cifar100_func", *cmd], check=True)
    return time.perf_counter() - t0


def parser(doc: str, out: str) -> argparse.ArgumentParser:
    """The options every such benchmark takes: the config, the data root, overrides for both variants, a folder."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides for both runs")
    p.add_argument("--out", default=out, help="folder for both runs' files")
    return p


def common(args: argparse.Namespace) -> list[str]:
    """``--config`` and ``--data-root`` as the package's commands take them."""
    return ["--config", args.config, *(["--data-root", args.data_root] if args.data_root else [])]
