"""Two grid runs of the same configurations side by side (exhaustive vs successive halving): model-images trained,
both rankings, and where each run's winner stands in the other's ranking.

    python benchmarks/compare_grids.py runs/cmp_exhaustive/grid_search runs/cmp_halving/grid_search
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def model_images(rows: list[dict], batch_size: int) -> int:
    """Images all configurations trained on (every step of every configuration)."""
    return sum(len(r["step_losses"]) for r in rows) * batch_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first", type=Path, help="a grid_search output folder (results.json, config.yaml)")
    ap.add_argument("second", type=Path)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    import yaml

    runs = []
    for folder in (args.first, args.second):
        rows = sorted(json.loads((folder / "results.json").read_text()), key=lambda r: r["rank"])
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        runs.append((folder, rows, cfg))
    (fa, a, ca), (fb, b, cb) = runs
    rank_a = {r["config"]: r["rank"] for r in a}
    rank_b = {r["config"]: r["rank"] for r in b}
    print("| run | schedule | model-images trained | winner | winner's val acc | winner's rank in the other run |")
    print("| --- | --- | ---: | --- | ---: | ---: |")
    for folder, rows, cfg, other in ((fa, a, ca, rank_b), (fb, b, cb, rank_a)):
        w = rows[0]
        print(f"| {folder} | {cfg['grid']['schedule']} | {model_images(rows, cfg['train']['batch_size']):,} | "
              f"{w['config']} | {100 * w['final_val_acc']:.2f}% | {other[w['config']]} |")
    print(f"\n| rank | {fa} | val acc | {fb} | val acc (epochs) |\n| ---: | --- | ---: | --- | ---: |")
    for i in range(min(args.top, len(a), len(b))):
        print(f"| {i + 1} | {a[i]['config']} | {100 * a[i]['final_val_acc']:.2f}% | {b[i]['config']} | "
              f"{100 * b[i]['final_val_acc']:.2f}% ({b[i]['epochs']:g}) |")


if __name__ == "__main__":
    main()
