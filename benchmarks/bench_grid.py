"""Stacked vs sequential training throughput, in model-images per second, measured side by side.

For each K: one stack of K models under ``torch.func.vmap`` (the grid path: shared batch, per-model lr/wd,
divergence masking) against the standard path that trains the same models one after another (its per-model
rate does not depend on K, so it is measured once per mode and round). Both paths run the same step function,
eager or compiled; rounds alternate so machine drift hits every variant alike. Compilation is not timed.

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


def build(cfg, data, device, k: int | None, mode: str, channels_last: bool):
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
            carry[0], carry[1], carry[2], loss, _, carry[3] = fn(carry[0], carry[1], carry[2], H, x, y, carry[3])
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
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cfg = load_config(args.config, ["dataset.max_train=6400", *args.overrides])
    data = load_dataset(cfg.dataset, args.data_root).to(device)
    ks = [int(k) for k in args.ks.split(",")]
    modes = args.modes.split(",")
    pipe_cl = Pipeline.create(cfg.preprocess, cfg.augment, device, cfg.train.channels_last)
    pipe = Pipeline.create(cfg.preprocess, cfg.augment, device, False)
    variants = [(m, None) for m in modes] + [(m, k) for m in modes for k in ks]
    runners = {v: build(cfg, data, device, v[1], v[0], cfg.train.channels_last and v[1] is None) for v in variants}
    results: dict = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            p = pipe_cl if v[1] is None else pipe
            batches = train_batches(data.train, p, cfg.train.batch_size, 0, r)
            ips = timed(runners[v], batches, args.steps, v[1] or 1, device)
            results[v].append(ips)
            print(f"round {r + 1}: {v[0]:>8} {'sequential' if v[1] is None else f'stacked K={v[1]}':>14}: "
                  f"{ips:8.1f} model-images/s", flush=True)
    print(f"\ndevice {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}); "
          f"torch {torch.__version__}; blocks {list(cfg.model.blocks)}, mid {cfg.model.bottleneck_mid}; "
          f"batch {cfg.train.batch_size}; precision {cfg.train.precision}; {args.steps} steps x {args.rounds} rounds (median)")
    print("| mode | K | sequential (standard path) | stacked (vmap) | stacked / sequential |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for m in modes:
        seq = statistics.median(results[(m, None)])
        for k in ks:
            st = statistics.median(results[(m, k)])
            print(f"| {m} | {k} | {seq:.0f} | {st:.0f} | {st / seq:.2f}x |")


if __name__ == "__main__":
    main()
