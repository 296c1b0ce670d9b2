"""Accuracy against wall time for training runs: which recipe gets where first on this machine.

Each ``--run LABEL=DIR`` is a training run's folder (its ``metrics.jsonl``) and, optionally, ``:EVAL`` an
``evaluate`` output (``*.eval_test.json``) whose test accuracy (plain, and with test-time views when it has them) is
marked at the run's end. The time axis is the epoch count times the run's *median* epoch time, so that pauses and
compilation (one-off minutes that a resumed or disturbed run logs in its epoch times) do not decide the comparison;
``--time measured`` plots the logged cumulative seconds instead, and ``--epoch-seconds S`` puts every run on one
machine's clock (epochs x S: for runs of recipes whose steps cost the same, logged on different machines).

    python benchmarks/time_to_accuracy.py --run "old recipe=docs/results/recipe:docs/results/recipe/eval_test.json" \
        --run "new recipe=runs/recipe/new20:..." --out docs/results/time_to_accuracy.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar100_func.commands import cli  # noqa: E402
from cifar100_func.errors import ConfigError  # noqa: E402
from cifar100_func.report.plots import plt, save_figure  # noqa: E402
from cifar100_func.runtime.io import read_jsonl  # noqa: E402


def read_run(spec: str) -> tuple[str, list[dict], dict | None]:
    """``LABEL=DIR[:EVAL]`` -> (label, the run's epoch records, the evaluation's json or None)."""
    if "=" not in spec:
        raise ConfigError(f"--run {spec!r}: expected LABEL=RUN_DIR[:EVAL_JSON]")
    label, rest = spec.split("=", 1)
    run, _, ev = rest.partition(":")
    path = Path(run) / "metrics.jsonl" if Path(run).is_dir() else Path(run)
    if not path.is_file():
        raise ConfigError(f"--run {label}: no metrics file at {path}")
    records = read_jsonl(path)
    if ev and not Path(ev).is_file():
        raise ConfigError(f"--run {label}: no evaluation file at {ev}")
    return label, records, json.loads(Path(ev).read_text()) if ev else None


def minutes(records: list[dict], how: str, epoch_seconds: float | None = None) -> np.ndarray:
    """Each epoch's end in minutes: the logged cumulative seconds, or the epoch count x the median epoch (or x
    ``epoch_seconds``)."""
    s = np.array([r["seconds"] for r in records], dtype=float)
    if how == "measured":
        return np.cumsum(s) / 60
    return np.arange(1, len(s) + 1) * (epoch_seconds or np.median(s)) / 60


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", required=True, help="LABEL=RUN_DIR[:EVAL_JSON]")
    ap.add_argument("--time", choices=("median", "measured"), default="median")
    ap.add_argument("--epoch-seconds", type=float, default=None, help="one epoch time for every run (median time)")
    ap.add_argument("--out", type=Path, required=True, help="the figure (.png)")
    args = ap.parse_args(argv)
    if args.epoch_seconds is not None and not args.epoch_seconds > 0:
        raise ConfigError(f"--epoch-seconds {args.epoch_seconds}: must be positive")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, spec in enumerate(args.run):
        label, records, ev = read_run(spec)
        t, colour = minutes(records, args.time, args.epoch_seconds), f"C{i}"
        acc = [100 * r.get("val_acc", np.nan) for r in records]
        ax.plot(t, acc, "-o", ms=3, color=colour, label=f"{label}: validation")
        line = f"{label}: {len(records)} epochs, {t[-1]:.1f} min, last validation {acc[-1]:.2f}%"
        if ev:
            view = ev.get("tta", "none")
            test = 100 * (ev["plain"] if view != "none" else ev)["test_accuracy"]
            ax.plot([t[-1]], [test], "s", color=colour, ms=7, label=f"{label}: test {test:.2f}%")
            line += f", test {test:.2f}%"
            if view != "none":
                tta = 100 * ev["test_accuracy"]
                ax.plot([t[-1]], [tta], "*", color=colour, ms=11, label=f"{label}: test with {view} views {tta:.2f}%")
                line += f", with {view} views {tta:.2f}%"
        print(line)
    clock = f"epochs x {args.epoch_seconds:.0f} s" if args.epoch_seconds else "epochs x each run's median epoch time"
    ax.set_xlabel("training time, minutes" + (f" ({clock})" if args.time == "median" else ""))
    ax.set_ylabel("accuracy, %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Accuracy against training time on this machine")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
