"""This revision's training loops against an earlier revision's, side by side in one process.

The earlier revision (a checkout in the flat layout before the sub-packages, ``--before DIR``) is imported as a
second package, and each round runs both revisions' own loops, each reading the same data itself, one after the
other: the standard path (``trainer.fit``, one model, the config's precision, memory format and compilation; the
rate is the last epoch's, so compilation in the first one is not timed) and a stack of K models as the grid trains
it (eager; the rate excludes the first step). Rounds alternate so that drift of the machine hits both revisions
alike; the table gives medians.

    git worktree add /tmp/before <commit>
    python benchmarks/bench_revisions.py --before /tmp/before --data-root ../shared
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import statistics
import sys
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar100_func.config import load_config  # noqa: E402
from cifar100_func.data.dataset import load_dataset  # noqa: E402
from cifar100_func.runtime.from_config import data_spec  # noqa: E402


def import_as(name: str, root: Path) -> ModuleType:
    """The package ``root/cifar100_func`` imported under ``name`` (its relative imports stay inside it)."""
    spec = importlib.util.spec_from_file_location(name, root / "cifar100_func" / "__init__.py",
                                                  submodule_search_locations=[str(root / "cifar100_func")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def quiet(_: str) -> None:
    pass


def _rate_from_log(rates: list[float]):
    def log(line: str) -> None:
        if "model-images/s" in line:
            rates.append(float(line.rsplit("then ", 1)[1].split()[0]))
    return log


def standard_before(pkg: str, cfg_path: str, overrides: list[str], root: str | None) -> float:
    """The flat layout before the sub-packages (01c3cc1 and its like)."""
    mod = lambda name: importlib.import_module(f"{pkg}.{name}")  # noqa: E731
    cfg = mod("config").load_config(cfg_path, overrides)
    data = mod("data").load_dataset(cfg.dataset, root)
    res = mod("trainer").fit(cfg, data, mod("backend").Backend.create(cfg, torch.device("cpu")), progress=False,
                             log=quiet)
    return res.metrics[-1]["images_per_sec"]


def stack_before(pkg: str, cfg_path: str, overrides: list[str], root: str | None, k: int) -> float:
    mod = lambda name: importlib.import_module(f"{pkg}.{name}")  # noqa: E731
    cfg = mod("config").load_config(cfg_path, overrides)
    data = mod("data").load_dataset(cfg.dataset, root)
    grid_search = mod("grid_search")
    first = grid_search.expand(cfg)[0]
    points = [dataclasses.replace(first, lr=0.001 * (i + 1), weight_decay=5e-4, index=i,
                                  blocks=tuple(cfg.model.blocks), mid=cfg.model.bottleneck_mid) for i in range(k)]
    rates: list[float] = []
    grid_search.run_grid(cfg, data, mod("backend").Backend.create(cfg, torch.device("cpu")), points, None,
                         progress=False, log=_rate_from_log(rates))
    return rates[0]


def standard_now(cfg_path: str, overrides: list[str], root: str | None) -> float:
    from cifar100_func.runtime import trainer
    from cifar100_func.runtime.backend import Backend

    cfg = load_config(cfg_path, overrides)
    data = load_dataset(data_spec(cfg), root)
    res = trainer.fit(cfg, data, Backend.create(cfg, torch.device("cpu")), progress=False, log=quiet)
    return res.metrics[-1]["images_per_sec"]


def stack_now(cfg_path: str, overrides: list[str], root: str | None, k: int) -> float:
    from cifar100_func.commands import grid_search
    from cifar100_func.runtime.backend import Backend

    cfg = load_config(cfg_path, overrides)
    data = load_dataset(data_spec(cfg), root)
    first = grid_search.expand(cfg)[0]
    points = [dataclasses.replace(first, lr=0.001 * (i + 1), weight_decay=5e-4, index=i,
                                  blocks=tuple(cfg.model.blocks), mid=cfg.model.bottleneck_mid) for i in range(k)]
    rates: list[float] = []
    grid_search.run_grid(cfg, data, Backend.create(cfg, torch.device("cpu")), points, None, progress=False,
                         log=_rate_from_log(rates))
    return rates[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="a checkout of the earlier revision")
    ap.add_argument("--config", default="configs/config.yaml")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--standard-steps", type=int, default=220, help="steps per epoch of the standard path (2 epochs)")
    ap.add_argument("--stack-steps", type=int, default=30, help="steps of the stack")
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides for both")
    ap.add_argument("--skip", default="", help="comma list of paths to leave out: standard, stack")
    args = ap.parse_args()
    pkg = "cifar100_func_before"
    import_as(pkg, Path(args.before).resolve())
    importlib.import_module(f"{pkg}.allocator").reuse_freed_memory()  # what its commands did; ours does it too
    base = args.overrides + ["dataset.max_val=500", "grid.epochs=1"]
    std = base + [f"dataset.max_train={64 * args.standard_steps}", "train.epochs=2"]
    stk = base + [f"dataset.max_train={64 * args.stack_steps}", "train.compile=false"]
    old_cfg = str(Path(args.before) / args.config)  # each revision reads its own config file
    runs = {
        "standard": [("before", lambda: standard_before(pkg, old_cfg, std, args.data_root)),
                     ("now", lambda: standard_now(args.config, std, args.data_root))],
        "stack": [("before", lambda: stack_before(pkg, old_cfg, stk, args.data_root, args.k)),
                  ("now", lambda: stack_now(args.config, stk, args.data_root, args.k))],
    }
    skip = set(filter(None, args.skip.split(",")))
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for path, variants in runs.items():
            if path in skip:
                continue
            for name, fn in variants:
                rate = fn()
                results.setdefault((path, name), []).append(rate)
                print(f"round {r + 1}: {path:>8} {name:>6}: {rate:7.1f} (model-)images/s", flush=True)
    import cifar100_func

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, before = {args.before}, now = "
          f"{Path(cifar100_func.__file__).parent}, overrides "
          f"{args.overrides or 'none'}; medians of {args.rounds} rounds")
    print("| path | before | now | now / before |\n| --- | ---: | ---: | ---: |")
    for path in runs:
        if path in skip:
            continue
        b, n = (statistics.median(results[(path, v)]) for v in ("before", "now"))
        label = "standard path (images/s)" if path == "standard" else f"stack of {args.k}, eager (model-images/s)"
        print(f"| {label} | {b:.0f} | {n:.0f} | {n / b:.2f}x |")


if __name__ == "__main__":
    main()
