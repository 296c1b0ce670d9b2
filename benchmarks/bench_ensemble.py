"""A stacked seed ensemble against one model, as a user runs them: accuracy and wall time per model, side by side.

Runs the project's own commands one after the other in one go, with the same config and data: ``train`` (one
model, the standard path) and ``train --ensemble N`` (N seeds as one stack under ``torch.func.vmap``), each followed
by ``evaluate`` on its best-by-validation checkpoint. Wall times are the commands' own (compilation included, as a
user waits for it); the ratio "per model" is ``(ensemble wall / N) / single wall``: 1.0 means the stack trains each
member as fast as training the members one after another would.

    python benchmarks/bench_ensemble.py --config configs/recipe.yaml --data-root ../shared --members 4 \
        --set train.epochs=3 --set model.blocks=[2,2,2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str]) -> float:
    """Run a command of the package (its output through), return its wall time in seconds."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cifar100_func", *cmd], check=True)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides for both runs")
    p.add_argument("--out", default="runs/bench_ensemble", help="folder for both runs' files")
    args = p.parse_args()
    out = Path(args.out)
    common = ["--config", args.config, *(["--data-root", args.data_root] if args.data_root else [])]
    rows = []
    for n in (1, args.members):
        art = out / f"n{n}"
        sets = [a for s in (*args.set, f"paths.runs_dir={out}", f"paths.artifacts_dir={art}") for a in ("--set", s)]
        train_s = run(["train", *common, *sets, "--run-name", f"n{n}", "--overwrite", "--ensemble", str(n)])
        run(["evaluate", *common, *sets, "--checkpoint", str(art / "best.ckpt")])
        res = json.loads((art / "eval_test.json").read_text())
        members = [m["test_accuracy"] for m in res.get("members", [])] or [res["test_accuracy"]]
        rows.append((n, train_s, res, members))
    single = rows[0][1]
    print("\n| models | train wall (s) | per model (s) | per model vs one | test acc | test loss | top-5 | "
          "members' test acc |\n|---|---|---|---|---|---|---|---|")
    for n, s, res, members in rows:
        print(f"| {n} | {s:.0f} | {s / n:.0f} | {s / n / single:.2f}x | {res['test_accuracy']:.4f} | "
              f"{res['test_loss']:.4f} | {res['test_top5_accuracy']:.4f} | "
              f"{', '.join(f'{a:.4f}' for a in members)} |")
    print(f"({' '.join(sys.argv[1:])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
