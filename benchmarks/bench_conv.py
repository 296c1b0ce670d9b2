"""Stacked convolutions, layer by layer: K dense convolutions vs one grouped convolution, side by side.

For every convolution shape of the configured BottleneckNet, the time of forward + backward (input and
weight gradients) of K models' convolutions, batch 64, measured three ways in one run:

* ``sequential``: the K models one after another, one ``F.conv2d`` each (the standard path, channels-last);
* ``per_model``: ``F.conv2d`` under ``torch.func.vmap`` inside :func:`cifar100_func.runtime.batching.per_model_rules`;
* ``grouped``: the same under vmap's built-in rule (one grouped convolution).

    python benchmarks/bench_conv.py --k 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import vjp, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar100_func.runtime import batching

from cifar100_func import model  # noqa: E402
from cifar100_func.runtime.allocator import reuse_freed_memory  # noqa: E402


def layer_shapes(arch: model.Arch) -> list[tuple[int, int, int, int, int]]:
    """(cin, cout, kernel, input size, stride) of every distinct convolution of ``arch`` on 32x32 images."""
    shapes = [(3, model.STEM, 3, 32, 1)]
    size = 32
    for stage, (n, cin, mid, cout) in enumerate(arch.stages(), start=1):
        for i in range(n):
            stride = 2 if (i == 0 and stage > 1) else 1
            c = cin if i == 0 else cout
            shapes += [(c, mid, 1, size, 1), (mid, mid, 3, size, stride)]
            if stride != 1 or c != cout:
                shapes.append((c, cout, 1, size, stride))
            size //= stride
            shapes.append((mid, cout, 1, size, 1))
    return list(dict.fromkeys(shapes))


def timed(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--blocks", default="3,3,3")
    ap.add_argument("--mid", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="keep glibc's default allocator settings (cifar100_func.runtime.allocator)")
    args = ap.parse_args()
    tuned = not args.no_malloc_tuning and reuse_freed_memory()
    k, n = args.k, args.batch
    arch = model.Arch(tuple(int(b) for b in args.blocks.split(",")), args.mid)  # type: ignore[arg-type]
    cl = torch.channels_last
    print(f"K={k}, batch {n}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"forward + backward in ms (median of {args.rounds}); freed memory reused: {tuned}")
    print("| conv (cin->cout, k, size, stride) | sequential | per_model | grouped | grouped / per_model |")
    print("| --- | ---: | ---: | ---: | ---: |")
    totals = [0.0, 0.0, 0.0]
    for cin, cout, ks, size, stride in layer_shapes(arch):
        pad = ks // 2
        xs = torch.randn(k, n, size, size, cin).permute(0, 1, 4, 2, 3)  # every model channels-last
        ws = torch.randn(k, cout, cin, ks, ks) * 0.1
        ys = torch.randn(k, n, cout, (size + 2 * pad - ks) // stride + 1, (size + 2 * pad - ks) // stride + 1)
        xs_seq = [x.contiguous(memory_format=cl).requires_grad_() for x in xs]
        ws_seq = [w.contiguous(memory_format=cl).requires_grad_() for w in ws]

        def sequential():
            for x, w, y in zip(xs_seq, ws_seq, ys):
                torch.autograd.grad(F.conv2d(x, w, stride=stride, padding=pad), (x, w), y)

        def stacked():
            def one(x, w, y):
                _, pullback = vjp(lambda a, b: F.conv2d(a, b, stride=stride, padding=pad), x, w)
                return pullback(y)
            vmap(one)(xs, ws, ys)

        row = [timed(sequential, args.rounds)]
        for formulation in ("per_model", "grouped"):
            with batching.per_model_rules(formulation == "per_model"):
                row.append(timed(stacked, args.rounds))
        totals = [t + r for t, r in zip(totals, row)]
        print(f"| {cin}->{cout}, {ks}x{ks}, {size}, /{stride} | {row[0]:.1f} | {row[1]:.1f} | {row[2]:.1f} | "
              f"{row[2] / row[1]:.2f}x |")
    print(f"| all distinct shapes | {totals[0]:.1f} | {totals[1]:.1f} | {totals[2]:.1f} | "
          f"{totals[2] / totals[1]:.2f}x |")


if __name__ == "__main__":
    main()
