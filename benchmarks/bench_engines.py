"""The grid on the local engine against the Ray engine, as a user runs them, side by side on one machine.

Runs ``grid_search`` twice with the same config and data: ``grid.engine: local`` (the stacks one after another
in this process, with all of torch's threads) and ``grid.engine: ray`` (each stack of a rung one Ray task on a
local cluster, ``grid.ray.cpus_per_stack`` CPUs and torch threads each, as many at once as the CPUs allow).
Reports both wall times (Ray's includes starting its cluster, as a user waits for it), their ratio, and both
rankings' winners and validation accuracies (threads change float reduction order, so bf16 numbers may differ
in the last digits; the fp64 equality of the two engines is a test, ``tests/test_ray.py``).

    python benchmarks/bench_engines.py --config configs/quick.yaml --data-root ../shared
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.commands import common as common_args, parser, run  # noqa: E402


def main() -> int:
    p = parser(__doc__, "runs/bench_engines")
    p.add_argument("--cpus-per-stack", type=int, default=1)
    args = p.parse_args()
    common = common_args(args)
    rows = []
    for engine in ("local", "ray"):
        sets = [*args.set, f"paths.runs_dir={Path(args.out) / engine}", f"grid.engine={engine}",
                f"grid.ray.cpus_per_stack={args.cpus_per_stack}"]
        seconds = run(["grid_search", *common, "--force", *[a for s in sets for a in ("--set", s)]])
        results = json.loads((Path(args.out) / engine / "grid_search" / "results.json").read_text())
        rows.append((engine, seconds, sorted(results, key=lambda r: r["rank"])))
    local_s = rows[0][1]
    print("\n| engine | wall (s) | vs local | winner | winner's val acc | val acc of every configuration |")
    print("|---|---|---|---|---|---|")
    for engine, s, res in rows:
        by_name = sorted(res, key=lambda r: r["config"])
        accs = ", ".join(f"{r['config']} {100 * r['final_val_acc']:.2f}%" for r in by_name)
        print(f"| {engine} | {s:.0f} | {s / local_s:.2f}x | {res[0]['config']} | {100 * res[0]['final_val_acc']:.2f}% "
              f"| {accs} |")
    print(f"({' '.join(sys.argv[1:])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
