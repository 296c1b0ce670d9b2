"""Stacked vs sequential training throughput, in model-images per second, measured side by side.

For each K: one stack of K models under ``torch.func.vmap`` (the grid's step: vmap of the step over the models,
shared batch, per-model lr/wd from the hyper-parameter table, divergence masking by ``step.guarded``) against the
standard path that trains the same models one after another (its per-model rate does not depend on K, so it is
measured once per mode and round). Every variant is built as the commands build it: a config (``train.compile``
from the mode, ``grid.batching`` from the formulation) turned into a :class:`~cifar100_func.runtime.backend.Backend` and an
runner, which decide the precision, the compilation, the batching rules and the memory format of the batches and
weights. The stacked convolutions and batch norms run in each formulation asked for (``per_model``: the rules of
:mod:`cifar100_func.runtime.batching`; ``grouped``: vmap's built-in rules). Rounds alternate so machine drift hits every
variant alike. Compilation is not timed.

    python benchmarks/bench_grid.py --data-root ../shared --ks 1,2,6,12 --modes eager,compiled
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.func import vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar100_func.runtime import backend as backend_mod  # noqa: E402
from cifar100_func.runtime.backend import Backend, resolve_device  # noqa: E402
from cifar100_func.torch_private import set_recompile_limit  # noqa: E402
from cifar100_func.config import load_config  # noqa: E402
from cifar100_func.data.dataset import load_dataset  # noqa: E402
from cifar100_func.data.loader import train_batches  # noqa: E402
from cifar100_func.runtime.from_config import data_spec, pipeline  # noqa: E402
from cifar100_func.runtime.loop import Plan, init_trees  # noqa: E402
from cifar100_func.runtime import recipe  # noqa: E402
from cifar100_func.core.step import guarded, make_train_step  # noqa: E402
from cifar100_func.runtime.trainer import arch_from  # noqa: E402

REUSED = "allocator: freed memory reused"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def variant_config(path: str, overrides: list[str], mode: str, formulation: str):
    return load_config(path, [*overrides, f"train.compile={str(mode == 'compiled').lower()}",
                              f"grid.batching={formulation}"])


def build(cfg, data, device, k: int | None, mode: str, steps: int):
    """(run(x, y) -> loss, runner) for a stack of k models (k None: the standard path), with its trees."""
    tc = cfg.train
    backend = Backend.create(cfg, device)
    compile = mode == "compiled"  # forced: a benchmark's few steps are below the commands' 200-step threshold
    runner = backend.runner(k, steps, compile=compile)
    opt = recipe.optimizer(tc, recipe.hyper(cfg), steps)  # a schedule holds its last value after its end
    step = make_train_step(opt, precision=backend.precision, device_type=device.type)
    n = 1 if k is None else k
    # the grid's plan (shared seed and batches, as the reference grid), or fit's for one model
    plan = Plan(arch_from(cfg, data.num_classes), [tc.seed] * n, [opt] * n, 1, shared_data=True,
                guard=k is not None, stacked=k is not None)
    P, S, O = init_trees(plan, backend.precision, device)
    P, O = runner.params(P), runner.params(O)
    if k is None:
        fn = runner.wrap(step)
        carry = [P, S, O]

        def run(x, y):
            carry[0], carry[1], carry[2], loss, _ = fn(*carry, runner.batch(x), y)
            return loss
    else:
        fn = runner.wrap(guarded(vmap(step, in_dims=(0, 0, 0, None, None))))
        carry = [P, S, O, torch.ones(k, dtype=torch.bool, device=device)]

        def run(x, y):
            P, S, O, active = carry
            carry[0], carry[1], carry[2], loss, _, carry[3] = fn(P, S, O, runner.batch(x), y, active)
            return loss
    return run, runner, backend


def timed(run, batches, steps: int, models: int, device) -> float:
    it = iter(batches)
    for _ in range(3):  # warm-up (compilation, and a recompilation for the strides of the outputs)
        x, y = next(it)
        run(x, y)
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        x, y = next(it)
        loss = run(x, y)
        n += len(y)
    loss.sum().item()
    _sync(device)
    return models * n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/config.yaml")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--ks", default="1,2,6,12")
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batching", default=None,
                    help="grid.batching formulations of the stacked convolutions to compare (see "
                         "cifar100_func.runtime.batching); default per_model,grouped on a CPU, grouped on CUDA")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="keep glibc's default allocator settings (cifar100_func.runtime.allocator, otherwise applied by "
                         "the backend as in every command) for both paths")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    if args.no_malloc_tuning:  # the backend's process setup would apply it: skip it there
        backend_mod.reuse_freed_memory = lambda: False
    device = resolve_device(args.device)
    overrides = ["dataset.max_train=6400", *args.overrides]
    cfg = load_config(args.config, overrides)
    data = load_dataset(data_spec(cfg), args.data_root).to(device)
    ks = [int(k) for k in args.ks.split(",")]
    modes = args.modes.split(",")
    forms = (args.batching or ("per_model,grouped" if device.type == "cpu" else "grouped")).split(",")
    set_recompile_limit(64)  # one compiled closure of the same step per variant
    pipe = pipeline(cfg, device)
    variants = [(m, None, "") for m in modes] + [(m, k, f) for m in modes for k in ks for f in forms]
    n_steps = 3 * args.rounds + args.steps * args.rounds
    # every runner before any compilation: creating a compiled runner resets dynamo's caches
    runners = {v: build(variant_config(args.config, overrides, v[0], v[2] or "auto"), data, device, v[1], v[0],
                        n_steps) for v in variants}
    backends = [b for _, _, b in runners.values()]
    tuned = all(REUSED in b.notes for b in backends) if device.type == "cpu" else "n/a (CUDA)"
    if args.no_malloc_tuning and tuned is True:
        raise SystemExit("--no-malloc-tuning: the backend applied the allocator setting anyway")
    print(f"backend: {backends[0].header()}", flush=True)
    results: dict = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            run, runner, _ = runners[v]
            batches = train_batches(data.train, pipe, cfg.train.batch_size, 0, r)
            ips = timed(run, batches, args.steps, v[1] or 1, device)
            results[v].append(ips)
            name = "sequential" if v[1] is None else f"stacked K={v[1]} {v[2]}"
            print(f"round {r + 1}: {v[0]:>8} {name:>26}: {ips:8.1f} model-images/s"
                  + (f"  [{runner.describe()}]" if r == 0 else ""), flush=True)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\ndevice {device} ({where}); torch {torch.__version__}; blocks {list(cfg.model.blocks)}, "
          f"mid {cfg.model.bottleneck_mid}; batch {cfg.train.batch_size}; precision {backends[0].precision.name}; "
          f"{args.steps} steps x {args.rounds} rounds (median); freed memory reused: {tuned}")
    print("| mode | K | sequential (standard path) | "
          + " | ".join(f"stacked, {f} | {f} / sequential" for f in forms) + " |")
    print("| --- | ---: | ---: | " + " | ".join("---: | ---:" for _ in forms) + " |")
    for m in modes:
        seq = statistics.median(results[(m, None, "")])
        cells = [f"{statistics.median(results[(m, k, f)]):.0f} | {statistics.median(results[(m, k, f)]) / seq:.2f}x"
                 for k in ks for f in forms]
        for i, k in enumerate(ks):
            print(f"| {m} | {k} | {seq:.0f} | " + " | ".join(cells[i * len(forms):(i + 1) * len(forms)]) + " |")


if __name__ == "__main__":
    main()
