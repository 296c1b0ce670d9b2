"""End-to-end training throughput: the reference pipeline vs this project's standard path, side by side.

Reference: ``nn.Module`` BottleneckNet, per-image torchvision transforms on PIL images, a shuffling
``DataLoader`` with worker processes, ``torch.optim.Adam``. Ours: device-resident uint8 data, batched
augmentation, the pure ``grad_and_value`` step and the functional Adam, run exactly as ``trainer.fit`` runs it
(the loop of :mod:`cifar100_func.runtime.loop` for one model: the backend's precision, memory format and compilation, the
hyper-parameter table scaled by the schedule), in the variants named on the command line. Each variant is a
config (``train.precision``, ``train.channels_last``, ``train.compile`` set from its name) turned into a
:class:`~cifar100_func.runtime.backend.Backend` and a runner, as the commands do; compilation happens in the warm-up, not
in the timed steps. Rounds alternate between the variants so that drift of the machine hits all of them alike; the
table gives the median images/s and the ratio to the reference.

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
from cifar100_func.runtime import backend as backend_mod  # noqa: E402
from cifar100_func.runtime.backend import Backend, resolve_device  # noqa: E402
from cifar100_func.config import load_config  # noqa: E402
from cifar100_func.data.dataset import load_dataset  # noqa: E402
from cifar100_func.data.loader import train_batches  # noqa: E402
from cifar100_func.runtime.from_config import data_spec, pipeline  # noqa: E402
from cifar100_func.runtime.loop import Plan, init_trees  # noqa: E402
from cifar100_func.runtime import recipe  # noqa: E402
from cifar100_func.core.step import make_train_step  # noqa: E402
from cifar100_func.runtime.trainer import arch_from  # noqa: E402

PRECISIONS = ("fp32", "bf16")
REUSED = "allocator: freed memory reused"


def bench_reference(data, steps: int, batch: int, workers: int) -> float:
    torch.manual_seed(0)
    net = reference.BottleneckNetRef()
    loader = reference.train_loader(data.train.x.numpy(), data.train.y.numpy(), batch, workers)
    reference.train_steps(net, loader, 3)  # warm-up (and worker start)
    t0 = time.perf_counter()
    seen = reference.train_steps(net, loader, steps)
    return seen / (time.perf_counter() - t0)


def variant_overrides(name: str) -> list[str]:
    """``fp32 | fp32-cl | bf16 | bf16-cl`` with an optional ``-compile`` -> config overrides."""
    parts = name.split("-")
    flags = set(parts[1:])
    if parts[0] not in PRECISIONS or not flags <= {"cl", "compile"} or len(flags) != len(parts) - 1:
        raise SystemExit(f"--variants: unknown variant {name!r} (fp32 | fp32-cl | bf16 | bf16-cl, suffix -compile)")
    return [f"train.precision={parts[0]}", f"train.channels_last={str('cl' in flags).lower()}",
            f"train.compile={str('compile' in flags).lower()}"]


class Ours:
    """One variant of the standard path: its backend, runner, step and trees, built once (compiled on first call)."""

    def __init__(self, cfg, data, device: torch.device, steps: int) -> None:
        tc = cfg.train
        self.cfg, self.data = cfg, data
        self.backend = Backend.create(cfg, device)
        # fit's plan for one model; the runner compiles when the variant says so, whatever the number of steps
        # (the schedule's table: a schedule holds its last value after its end, so any number of steps runs)
        opt = recipe.optimizer(tc, recipe.hyper(cfg), steps + 3)
        plan = Plan(arch_from(cfg, data.num_classes), [tc.seed], [opt], 1, stacked=False)
        self.runner = self.backend.runner(None, steps + 3, compile=self.backend.compile)
        step = make_train_step(opt, precision=self.backend.precision, device_type=device.type)
        self.step = self.runner.wrap(step)
        P, S, O = init_trees(plan, self.backend.precision, device)
        self.carry = [self.runner.params(P), S, self.runner.params(O)]
        self.pipe = pipeline(cfg, device)

    def run(self, n: int, epoch: int) -> int:
        """``n`` training steps on the batches of ``epoch``, as the loop runs them; returns the images seen."""
        P, S, O = self.carry
        seen = 0
        runner, device = self.runner, self.backend.device
        for i, (x, y) in enumerate(train_batches(self.data.train, self.pipe, self.cfg.train.batch_size,
                                                 self.cfg.train.seed, epoch)):
            if i == n:
                break
            P, S, O, loss, _ = self.step(P, S, O, runner.batch(x), y)
            seen += len(y)
        loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        self.carry = [P, S, O]
        return seen

    def timed(self, steps: int, epoch: int) -> float:
        t0 = time.perf_counter()
        seen = self.run(steps, epoch)
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
                    help="keep glibc's default allocator settings (cifar100_func.runtime.allocator, otherwise applied by "
                         "the backend as in every command) for every pipeline")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override, repeatable")
    args = ap.parse_args()
    if args.no_malloc_tuning:  # the backend's process setup would apply it: skip it there
        backend_mod.reuse_freed_memory = lambda: False
    device = resolve_device(args.device)
    variants = args.variants.split(",")
    overrides = {name: variant_overrides(name) for name in variants}
    cfg = load_config(args.config, args.overrides)
    data = load_dataset(data_spec(cfg), args.data_root)
    ddata = data.to(device)
    # every variant's backend and runner before any compilation (a compiled runner resets dynamo's caches), and
    # before the reference runs, so that the process setting (allocator) is the same for every pipeline
    ours = {name: Ours(load_config(args.config, [*args.overrides, *overrides[name]]), ddata, device, args.steps)
            for name in variants}
    tuned = all(REUSED in o.backend.notes for o in ours.values())
    if args.no_malloc_tuning and tuned:
        raise SystemExit("--no-malloc-tuning: the backend applied the allocator setting anyway")
    for name, o in ours.items():
        print(f"{name}: {o.backend.header()}; {o.runner.describe()}", flush=True)
        o.run(3, 0)  # warm-up (and compilation)
    names = ["reference"] + variants
    results: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            if name == "reference":
                ips = bench_reference(data, args.steps, cfg.train.batch_size, args.workers)
            else:
                ips = ours[name].timed(args.steps, r + 1)
            results[name].append(ips)
            print(f"round {r + 1}: {name:>16}: {ips:7.1f} images/s", flush=True)
    ref = statistics.median(results["reference"])
    print(f"\n{'data' if not data.synthetic else 'SYNTHETIC data'}: {data.source}; device {device}; "
          f"batch {cfg.train.batch_size}; torch {torch.__version__}; {torch.get_num_threads()} threads; "
          f"{args.steps} steps x {args.rounds} rounds (median); freed memory reused: {tuned}")
    print("| pipeline | images/s | vs reference |\n| --- | ---: | ---: |")
    for name in names:
        med = statistics.median(results[name])
        if name == "reference":
            label = f"reference (nn.Module + torchvision + DataLoader, {args.workers} workers)"
        else:
            fell_back = " (compile failed: eager)" if ours[name].runner.fallback else ""
            label = f"standard path, {name}{fell_back}"
        print(f"| {label} | {med:.0f} | {med / ref:.2f}x |")


if __name__ == "__main__":
    main()
