"""End-to-end training throughput: the reference pipeline vs this project's standard path, side by side.

Reference: ``nn.Module`` BottleneckNet, per-image torchvision transforms on PIL images, a shuffling
``DataLoader`` with worker processes, ``torch.optim.Adam``. Ours: device-resident uint8 data, batched
augmentation, the pure ``grad_and_value`` step and the functional Adam (exactly what ``fit`` runs), in the
variants named on the command line. Rounds alternate between the variants so that drift of the machine
hits all of them alike; the table gives the median images/s and the ratio to the reference.

    python benchmarks/bench_train.py --data-root ../shared --steps 30 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import reference  # noqa: E402
from cifar100_func.allocator import reuse_freed_memory  # noqa: E402
from cifar100_func.checkpoint import tree_to  # noqa: E402
from cifar100_func.config import load_config  # noqa: E402
from cifar100_func.data import load_dataset  # noqa: E402
from cifar100_func.loader import Pipeline, train_batches  # noqa: E402
from cifar100_func import model  # noqa: E402
from cifar100_func.optim import hyperparams, make_optimizer  # noqa: E402
from cifar100_func.seeding import generator  # noqa: E402
from cifar100_func.step import make_train_step  # noqa: E402
from cifar100_func.trainer import arch_from, to_memory_format  # noqa: E402


def bench_reference(data, steps: int, batch: int, workers: int) -> float:
    torch.manual_seed(0)
    net = reference.BottleneckNetRef()
    loader = reference.train_loader(data.train.x.numpy(), data.train.y.numpy(), batch, workers)
    reference.train_steps(net, loader, 3)  # warm-up (and worker start)
    t0 = time.perf_counter()
    seen = reference.train_steps(net, loader, steps)
    return seen / (time.perf_counter() - t0)


def bench_ours(cfg, data, device, steps: int, precision: str, channels_last: bool, compiled: bool) -> float:
    tc = cfg.train
    optimizer = make_optimizer(tc.optimizer)
    params, state = model.init(arch_from(cfg, data.num_classes), generator(0, "init"))
    params = to_memory_format(tree_to(params, device), channels_last)
    state = tree_to(state, device)
    opt_state = optimizer.init(params)
    step = make_train_step(optimizer, precision=precision, device_type=device.type)
    if compiled:
        step = torch.compile(step)
    pipe = Pipeline.create(cfg.preprocess, cfg.augment, device, channels_last)

    def run(n: int, epoch: int) -> int:
        nonlocal params, state, opt_state
        seen = 0
        for i, (x, y) in enumerate(train_batches(data.train, pipe, tc.batch_size, 0, epoch)):
            if i == n:
                break
            hp = hyperparams(tc.optimizer.lr, tc.optimizer.weight_decay, device)
            params, state, opt_state, loss, _ = step(params, state, opt_state, hp, x, y)
            seen += len(y)
        loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return seen

    run(3, 0)  # warm-up (and compilation)
    t0 = time.perf_counter()
    seen = run(steps, 1)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/config.yaml")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default="fp32,fp32-cl,bf16-cl",
                    help="comma list of ours: fp32 | fp32-cl | bf16 | bf16-cl, suffix -compile to compile")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="keep glibc's default allocator settings (cifar100_func.allocator) for every pipeline")
    args = ap.parse_args()
    tuned = not args.no_malloc_tuning and reuse_freed_memory()  # as every command does; the reference shares it
    cfg = load_config(args.config)
    data = load_dataset(cfg.dataset, args.data_root)
    device = torch.device(args.device)
    ddata = data.to(device)
    names = ["reference"] + args.variants.split(",")
    results: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            if name == "reference":
                ips = bench_reference(data, args.steps, cfg.train.batch_size, args.workers)
            else:
                ips = bench_ours(cfg, ddata, device, args.steps, "bf16" if name.startswith("bf16") else "fp32",
                                 "-cl" in name, name.endswith("-compile"))
            results[name].append(ips)
            print(f"round {r + 1}: {name:>16}: {ips:7.1f} images/s", flush=True)
    ref = statistics.median(results["reference"])
    print(f"\n{'data' if not data.synthetic else 'SYNTHETIC data'}: {data.source}; device {device}; "
          f"batch {cfg.train.batch_size}; torch {torch.__version__}; {torch.get_num_threads()} threads; "
          f"{args.steps} steps x {args.rounds} rounds (median); freed memory reused: {tuned}")
    print("| pipeline | images/s | vs reference |\n| --- | ---: | ---: |")
    for name in names:
        med = statistics.median(results[name])
        label = f"reference (nn.Module + torchvision + DataLoader, {args.workers} workers)" if name == "reference" \
            else f"standard path, {name}"
        print(f"| {label} | {med:.0f} | {med / ref:.2f}x |")


if __name__ == "__main__":
    main()
