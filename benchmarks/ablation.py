"""Each accuracy option on and off, with paired seeds: which of them buy validation accuracy at a fixed budget.

Every variant is the base config (``--config`` with ``--set``) plus its own overrides, trained as ``train
--ensemble S`` trains (the S seeds ``train.seed + j`` as one stack, each its own batches), so seed j of every
variant starts from the same weights and sees the same batch order: a variant's difference to the baseline is
paired over seeds. The table gives each variant's final validation accuracy (mean +- standard error over seeds), its
paired difference to the baseline with the t-test's p, the validation loss, and the wall time. Test-time views are
scored on the baseline's final weights (flip and flip x translations, validation split). The test split is never
read: this table chooses a recipe. Each finished variant is written to ``ablation.json`` at once; a run started
again skips the variants already there with the same config and seed count and drops the others.

    python benchmarks/ablation.py --config configs/recipe.yaml --data-root ../shared --seeds 2 \
        --set train.epochs=3 --set model.blocks=[2,2,2] --out docs/results/ablation
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar100_func.commands import cli  # noqa: E402
from cifar100_func.config import load_config, what  # noqa: E402
from cifar100_func.fingerprint import fingerprint  # noqa: E402
from cifar100_func.runtime.from_config import pipeline  # noqa: E402
from cifar100_func.errors import ConfigError, OutputError  # noqa: E402
from cifar100_func.runtime.io import atomic_write_json, atomic_write_text  # noqa: E402
from cifar100_func.runtime.lock import folder_lock  # noqa: E402
from cifar100_func.runtime.predict import log_probabilities, scores  # noqa: E402
from cifar100_func.runtime.trainer import fit  # noqa: E402
from cifar100_func.stats.seeds import paired, summarise  # noqa: E402

# the candidates of the accuracy issue, each one change from the base config
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "ema": ["train.ema.decay=0.999", "train.ema.warmup=true"],
    "ema_recompute_bn": ["train.ema.decay=0.999", "train.ema.warmup=true", "train.ema.bn=recompute"],
    "alternating_flip": ["augment.flip=alternating"],
    "norm_bias_lr_x3": ["train.optimizer.norm_bias_lr_mult=3.0"],
    "bn_momentum_0.3": ["model.bn_momentum=0.3"],
    "identity_init": ["model.identity_init=true"],
    "label_smoothing_0.2": ["train.label_smoothing=0.2"],
}
VIEWS = ("flip", "flip_translate")


def run_variant(name: str, overrides: list[str], args: argparse.Namespace) -> dict:
    cfg = load_config(args.config, [*args.overrides, *overrides])
    run = cli.setup(cfg, cli.Runtime(args.device, args.data_root), None)
    data = run.data.to(run.device)
    print(f"{name}: {' '.join(overrides) or '(the base config)'}\nbackend: {run.backend.header()}", flush=True)
    t0 = time.perf_counter()
    res = fit(cfg, data, run.backend, members=args.seeds, progress=False, log=lambda s: print(f"  {s}", flush=True))
    seconds = time.perf_counter() - t0
    last = res.metrics[-1]
    members = last["members"] if args.seeds > 1 else [last]
    out = {"overrides": overrides, "config": fingerprint(what(cfg)), "seconds": seconds,
           "seeds": [cfg.train.seed + j for j in range(args.seeds)],
           "val_acc": [m["val_acc"] for m in members], "val_loss": [m["val_loss"] for m in members],
           "epochs": cfg.train.epochs}
    if name == "baseline":  # test-time views of the baseline's final weights, on validation
        preds = {v: log_probabilities(res.params, res.state, data.val, pipeline(cfg, run.device), run.backend,
                                      members=args.seeds,
                                      batch_size=cfg.train.eval_batch_size, tta=v) for v in VIEWS}
        y = data.val.y.cpu()
        out["tta"] = {v: [scores(p[v][j : j + 1], y)["acc"] for j in range(args.seeds)] for v, p in preds.items()}
        out["tta"]["none"] = [scores(preds[VIEWS[0]]["none"][j : j + 1], y)["acc"] for j in range(args.seeds)]
    return out


def _cell(values: list[float]) -> str:
    s = summarise(values)
    return f"{100 * s.mean:.2f} +- {100 * s.sem:.2f}"


def _vs(a: list[float], b: list[float]) -> str:
    r = paired(a, b)
    if r["test"] is None:
        return f"{100 * r['diff']:+.2f} (one seed)"
    return f"{100 * r['diff']:+.2f} +- {100 * r['se']:.2f} (p = {r['p']:.2g})"


def table(results: dict) -> str:
    base = results.get("baseline")
    lines = ["| variant | overrides | val acc % (mean +- SE) | vs baseline, paired (points) | val loss | wall s |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        vs = "" if base is None or name == "baseline" else _vs(r["val_acc"], base["val_acc"])
        lines.append(f"| {name} | {' '.join(r['overrides']) or '-'} | {_cell(r['val_acc'])} | {vs} | "
                     f"{summarise(r['val_loss']).mean:.4f} | {r['seconds']:.0f} |")
    if base is not None and "tta" in base:
        for v in VIEWS:
            lines.append(f"| baseline + TTA {v} | evaluation only | {_cell(base['tta'][v])} | "
                         f"{_vs(base['tta'][v], base['tta']['none'])} | | |")
    return "\n".join(lines)


def _earlier(path: Path, expected: dict[str, str], seeds: int) -> dict:
    """The variants an earlier run finished whose config and seed count are still what they would be now (every
    variant of VARIANTS, asked for in this run or not); the others are dropped, as they are stale."""
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise OutputError(f"{path}: not readable JSON ({exc.msg}); move it away to start afresh") from None
    kept = {n: r for n, r in old.items()
            if n in expected and expected[n] == r.get("config") and len(r.get("val_acc", [])) == seeds}
    for name in sorted(set(old) - set(kept)):
        print(f"{name}: an earlier result with another config or seed count, dropped")
    return kept


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/recipe.yaml")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from VARIANTS")
    ap.add_argument("--out", default="ablation")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: must be at least 1")
    # every variant's config is checked before anything is written
    expected = {n: fingerprint(what(load_config(args.config, [*args.overrides, *o]))) for n, o in VARIANTS.items()}
    out = Path(args.out)
    with folder_lock(out):
        path = out / "ablation.json"
        results = _earlier(path, expected, args.seeds)
        for name in names:
            if name in results:
                print(f"{name}: done earlier, kept")
                continue
            results[name] = run_variant(name, VARIANTS[name], args)
            atomic_write_json(path, results)
            atomic_write_text(out / "ablation.md", table(results) + "\n")
            print(table(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
