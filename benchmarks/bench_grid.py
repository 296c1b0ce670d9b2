"""Stacked vs sequential training throughput, in model-images per second, measured side by side.

For each K: one stack of K models under ``torch.func.vmap`` (the grid path: shared batch, per-model lr/wd,
divergence masking) against the standard path that trains the same models one after another (its per-model
rate does not depend on K, so it is measured once per mode and round). Both paths run the same step function,
eager or compiled, on the same channels-last batches; the stacked convolutions and batch norms run in each
formulation asked for (``per_model``: the rules of :mod:`cifar100_func.batching`; ``grouped``: vmap's built-in
rules). Rounds alternate so machine drift hits every variant alike. Compilation is not timed.

    python benchmarks/bench_grid.py --data-root ../shared --ks 1,2,6,12 --modes eager,compiled
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._pytree import tree_map

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar100_func import model  # noqa: E402
from cifar100_func.allocator import reuse_freed_memory  # noqa: E402
from cifar100_func.batching import per_model_rules  # noqa: E402
from cifar100_func.config import load_config  # noqa: E402
from cifar100_func.data import load_dataset  # noqa: E402
from cifar100_func.loader import Pipeline, train_batches  # noqa: E402
from cifar100_func.optim import hyperparams, make_optimizer  # noqa: E402
from cifar100_func.seeding import generator  # noqa: E402
from cifar100_func.stacked import make_stacked_step, stack_trees  # noqa: E402
from cifar100_func.step import make_train_step  # noqa: E402
from cifar100_func.trainer import arch_from, compiled, to_memory_format  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(cfg, data, device, k: int | None, mode: str, channels_last: bool, formulation: str = "auto"):
    """A ready-to-call step and its initial carry for a stack of k models (k None: the standard path)."""
    tc = cfg.train
    opt = make_optimizer(tc.optimizer)
    params, state = model.init(arch_from(cfg, data.num_classes), generator(0, "init"))
    step = make_train_step(opt, precision=tc.precision, device_type=device.type)
    if k is None:
        params = to_memory_format(tree_map(lambda t: t.to(device), params), channels_last)
        carry = [params, tree_map(lambda t: t.to(device), state), None]
        carry[2] = opt.init(carry[0])
        hp = hyperparams(tc.optimizer.lr, tc.optimizer.weight_decay, device)
        fn = compiled(step) if mode == "compiled" else step

        def run(x, y):
            carry[0], carry[1], carry[2], loss, _ = fn(carry[0], carry[1], carry[2], hp, x, y)
            return loss
    else:
        P = stack_trees([params] * k)
        S = stack_trees([state] * k)
        P, S = (tree_map(lambda t: t.to(device), tr) for tr in (P, S))
        O = tree_map(lambda t: t.to(device), stack_trees([opt.init(params)] * k))
        carry = [P, S, O, torch.ones(k, dtype=torch.bool, device=device)]
        H = {"lr": torch.full((k,), tc.optimizer.lr, device=device),
             "weight_decay": torch.full((k,), tc.optimizer.weight_decay, device=device)}
        sstep = make_stacked_step(step, shared_data=True)
        fn = compiled(sstep) if mode == "compiled" else sstep

        def run(x, y):
            with per_model_rules(device, formulation, mode == "compiled"):
                carry[0], carry[1], carry[2], loss, _, carry[3] = fn(carry[0], carry[1], carry[2], H, x, y,
                                                                     carry[3])
            return loss
    return run


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
    ap.add_argument("--batching", default="per_model,grouped",
                    help="formulations of the stacked convolutions to compare (see cifar100_func.batching)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="keep glibc's default allocator settings (cifar100_func.allocator) for both paths")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    tuned = not args.no_malloc_tuning and reuse_freed_memory()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cfg = load_config(args.config, ["dataset.max_train=6400", *args.overrides])
    data = load_dataset(cfg.dataset, args.data_root).to(device)
    ks = [int(k) for k in args.ks.split(",")]
    modes = args.modes.split(",")
    forms = args.batching.split(",")
    torch._dynamo.config.recompile_limit = 64  # one compiled closure of the same step per variant
    pipe = Pipeline.create(cfg.preprocess, cfg.augment, device, cfg.train.channels_last)
    variants = [(m, None, "") for m in modes] + [(m, k, f) for m in modes for k in ks for f in forms]
    runners = {v: build(cfg, data, device, v[1], v[0], cfg.train.channels_last and v[1] is None, v[2] or "auto")
               for v in variants}
    results: dict = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            batches = train_batches(data.train, pipe, cfg.train.batch_size, 0, r)
            ips = timed(runners[v], batches, args.steps, v[1] or 1, device)
            results[v].append(ips)
            name = "sequential" if v[1] is None else f"stacked K={v[1]} {v[2]}"
            print(f"round {r + 1}: {v[0]:>8} {name:>26}: {ips:8.1f} model-images/s", flush=True)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\ndevice {device} ({where}); torch {torch.__version__}; blocks {list(cfg.model.blocks)}, "
          f"mid {cfg.model.bottleneck_mid}; batch {cfg.train.batch_size}; precision {cfg.train.precision}; "
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
