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

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.commands import common as common_args, parser, run  # noqa: E402


def main() -> int:
    p = parser(__doc__, "runs/bench_ensemble")
    p.add_argument("--members", type=int, default=4)
    args = p.parse_args()
    out = Path(args.out)
    common = common_args(args)
    rows = []
    for n in (1, args.members):
        art = out / f"n{n}"
        sets = [a for s in (*args.set, f"paths.runs_dir={out}", f"paths.artifacts_dir={art}") for a in ("--set", s)]
        train_s = run(["train", *common, *sets, "--run-name", f"n{n}", "--overwrite", "--ensemble", str(n)])
        run(["evaluate", *common, *sets, "--checkpoint", str(art / "best.ckpt")])
        res = json.loads((art / "best.eval_test.json").read_text())
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
