"""Stacked vs sequential training throughput, in model-images per second, measured side by side.

Three ways to train K models of one architecture, each built as the commands build it (a config turned into a
:class:`~cifar100_func.runtime.backend.Backend`, a runner and the loop's own executor,
:mod:`cifar100_func.runtime.executor`, which decide the precision, the compilation, the batching rules and the
memory format of the batches and weights):

- ``sequential, standard path``: one model after another, as ``train`` runs it (its per-model rate does not depend
  on K, so it is measured once per mode and round);
- ``vmap``: one stack of K under ``torch.func.vmap`` (the grid's step: shared batch, per-model hyper-parameters in
  the optimiser states, divergence masking by ``step.guarded``), its stacked convolutions and batch norms in each
  formulation asked for (``per_model``: the rules of :mod:`cifar100_func.runtime.batching`; ``grouped``: vmap's
  built-in rules);
- ``sequential executor``: the same stack, its trees kept per member and the standard path's one-model step run
  over each member in turn (what ``grid.executor: auto`` picks on a CPU).

Each row gives the median rate and its ratio to the best sequential rate (of any mode). Rounds alternate so
machine drift hits every variant alike. Compilation is not timed. ``--quick``: a tiny synthetic run, to see that
the script runs (its numbers mean nothing).

    python benchmarks/bench_grid.py --data-root ../shared --ks 6,12 --modes eager,compiled --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar100_func.runtime import backend as backend_mod  # noqa: E402
from cifar100_func.runtime.backend import Backend, resolve_device  # noqa: E402
from cifar100_func.torch_private import set_recompile_limit  # noqa: E402
from cifar100_func.config import load_config  # noqa: E402
from cifar100_func.data.dataset import load_dataset  # noqa: E402
from cifar100_func.data.loader import train_batches  # noqa: E402
from cifar100_func.runtime.executor import train_executor  # noqa: E402
from cifar100_func.runtime.from_config import data_spec, pipeline  # noqa: E402
from cifar100_func.runtime.loop import Plan, init_trees  # noqa: E402
from cifar100_func.runtime import recipe  # noqa: E402
from cifar100_func.runtime.trainer import arch_from  # noqa: E402

REUSED = "allocator: freed memory reused"
SEQ = "sequential"  # the formulation slot of a stack run by the sequential executor
QUICK = ["dataset.name=synthetic", "dataset.num_classes=10", "dataset.val_size=100",
         "dataset.synthetic.train_size=420", "model.blocks=[1,1,1]", "model.bottleneck_mid=4", "train.batch_size=32"]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def variant_config(path: str, overrides: list[str], mode: str, formulation: str):
    return load_config(path, [*overrides, f"train.compile={str(mode == 'compiled').lower()}",
                              f"grid.batching={'auto' if formulation in ('', SEQ) else formulation}"])


def build(cfg, data, device, k: int | None, mode: str, steps: int, formulation: str):
    """(run(x, y) -> loss, runner, backend) for a stack of k models (k None: the standard path), with its trees;
    ``formulation`` ``sequential``: the stack under the sequential executor, else vmap with that formulation."""
    tc = cfg.train
    backend = Backend.create(cfg, device)
    compile = mode == "compiled"  # forced: a benchmark's few steps are below the commands' 200-step threshold
    executor = None if k is None else (SEQ if formulation == SEQ else "vmap")
    runner = backend.runner(k, steps, compile=compile, executor=executor)
    opt = recipe.optimizer(tc, recipe.hyper(cfg), steps)  # a schedule holds its last value after its end
    n = 1 if k is None else k
    # the grid's plan (shared seed and batches, as the reference grid), or fit's for one model
    plan = Plan(arch_from(cfg, data.num_classes), [tc.seed] * n, [opt] * n, 1, shared_data=True,
                guard=k is not None, stacked=k is not None)
    P, S, O = init_trees(plan, backend.precision, device)
    ex = train_executor(opt, backend.precision, runner, stacked=k is not None, guard=plan.guard, shared_data=True)
    carry = [ex.enter(P, S, O, torch.ones(() if k is None else k, dtype=torch.bool, device=device))]

    def run(x, y):
        carry[0], loss, _ = ex.step(carry[0], x, y)
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


def name(variant) -> str:
    _, k, form = variant
    if k is None:
        return "sequential, standard path"
    return f"stack of {k}, sequential executor" if form == SEQ else f"stack of {k}, vmap, {form} batching"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/config.yaml")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--ks", default="1,2,6,12")
    ap.add_argument("--modes", default="eager,compiled",
                    help="modes of the standard path and the vmap stacks (empty: no vmap stacks)")
    ap.add_argument("--executor-modes", default="compiled",
                    help="modes of the sequential executor's stacks (default: compiled, as the grid runs it)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batching", default=None,
                    help="grid.batching formulations of the vmap stacks to compare (see "
                         "cifar100_func.runtime.batching); default per_model,grouped on a CPU, grouped on CUDA")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="keep glibc's default allocator settings (cifar100_func.runtime.allocator, otherwise applied "
                         "by the backend as in every command) for both paths")
    ap.add_argument("--quick", action="store_true",
                    help="tiny synthetic data and model, K=2, eager, 2 steps, 1 round: does the script run")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    if args.quick:
        args.ks, args.modes, args.executor_modes, args.steps, args.rounds = "2", "eager", "eager", 2, 1
    if args.no_malloc_tuning:  # the backend's process setup would apply it: skip it there
        backend_mod.reuse_freed_memory = lambda: False
    device = resolve_device(args.device)
    overrides = [*(QUICK if args.quick else ["dataset.max_train=6400"]), *args.overrides]
    cfg = load_config(args.config, overrides)
    data = load_dataset(data_spec(cfg), args.data_root).to(device)
    ks = [int(k) for k in args.ks.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    executor_modes = [m for m in args.executor_modes.split(",") if m]
    forms = (args.batching or ("per_model,grouped" if device.type == "cpu" else "grouped")).split(",")
    set_recompile_limit(64)  # one compiled closure of the same step per variant
    pipe = pipeline(cfg, device)
    variants = ([(m, None, "") for m in dict.fromkeys(modes + executor_modes)]
                + [(m, k, f) for k in ks for m in modes for f in forms]
                + [(m, k, SEQ) for k in ks for m in executor_modes])
    n_steps = 3 * args.rounds + args.steps * args.rounds
    # every runner before any compilation: creating a compiled runner resets dynamo's caches
    runners = {v: build(variant_config(args.config, overrides, v[0], v[2]), data, device, v[1], v[0], n_steps, v[2])
               for v in variants}
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
            print(f"round {r + 1}: {v[0]:>8} {name(v):>40}: {ips:8.1f} model-images/s"
                  + (f"  [{runner.describe()}]" if r == 0 else ""), flush=True)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\ndevice {device} ({where}); torch {torch.__version__}; blocks {list(cfg.model.blocks)}, "
          f"mid {cfg.model.bottleneck_mid}; batch {cfg.train.batch_size}; precision {backends[0].precision.name}; "
          f"{args.steps} steps x {args.rounds} rounds (median); freed memory reused: {tuned}")
    rates = {v: statistics.median(results[v]) for v in variants}
    best = max(rate for v, rate in rates.items() if v[1] is None)
    print("| path | mode | K | model-images/s | vs best sequential |")
    print("| --- | --- | ---: | ---: | ---: |")
    for v in variants:
        print(f"| {name(v)} | {v[0]} | {v[1] or 1} | {rates[v]:.0f} | {rates[v] / best:.2f}x |")


if __name__ == "__main__":
    main()
