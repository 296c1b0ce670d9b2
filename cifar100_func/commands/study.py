"""``cifar100-func study``: the whole study of SPEC.md in one command, then ``report/REPORT.md``.

Stages, in order: sanity -> overfit -> lr_finder -> grid_search -> final (standard path) -> evaluate. Each stage
is the project's own command, run in-process on the same config. A finished stage leaves
``<runs_dir>/study/<stage>.json`` with a hash of the config it depends on; running the study again skips
finished stages whose inputs did not change (``--force STAGE`` redoes one and every stage after it that uses
its output), so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from . import cli, evaluate, grid_search, lr_finder, overfit, sanity, train
from ..runtime.backend import resolve_device
from ..config import Config, changed_keys
from ..errors import CheckpointError
from ..runtime.io import atomic_write_json, ensure_dir

STAGES = ["sanity", "overfit", "lr_finder", "grid_search", "final", "evaluate"]
COMMON = ["dataset", "preprocess", "train.seed", "train.batch_size", "train.eval_batch_size", "train.precision"]
DEPENDS: dict[str, list[str]] = {
    "sanity": COMMON + ["augment", "model", "sanity"],
    "overfit": COMMON + ["overfit", "train.optimizer", "train.label_smoothing"],
    "lr_finder": COMMON + ["augment", "model", "train.optimizer", "train.label_smoothing", "lr_finder"],
    "grid_search": COMMON + ["augment", "train.optimizer", "train.scheduler", "train.label_smoothing", "hparams",
                             "grid"],
    "final": COMMON + ["augment", "model", "train", "study.final_from", "study.final_epochs", "study.final_seeds"],
    "evaluate": COMMON,
}
USES = {"final": ["grid_search"], "evaluate": ["final"]}  # outputs a stage reads from an earlier one


def _pick(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def stage_hash(cfg: Config, stage: str, upstream: dict[str, str], data_source: str) -> str:
    """Hash of the config keys ``stage`` depends on, the hashes of the stages it reads, and the data."""
    d = cfg.to_dict()
    payload = {k: _pick(d, k) for k in DEPENDS[stage]}
    payload["_data"] = data_source
    payload["_upstream"] = {s: upstream.get(s, "") for s in USES.get(stage, [])}
    if stage == "final" and cfg.study.final_from == "config":
        payload["_upstream"] = {}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Study:
    """Runs the stages with caching; remembers wall times and hashes for the report."""

    def __init__(self, cfg: Config, argv_common: list[str], force: set[str], log: Callable[[str], None] = print):
        self.cfg = cfg
        self.argv = argv_common
        self.runs = Path(cfg.paths.runs_dir)
        self.state_dir = ensure_dir(self.runs / "study")
        self.force = force
        self.log = log
        self.hashes: dict[str, str] = {}
        self.records: dict[str, dict] = {}
        self.data_source = ""

    def marker(self, stage: str) -> Path:
        return self.state_dir / f"{stage}.json"

    def done(self, stage: str, h: str) -> dict | None:
        m = self.marker(stage)
        if stage in self.force or not m.is_file():
            return None
        rec = json.loads(m.read_text())
        return rec if rec.get("hash") == h and rec.get("finished") else None

    def run(self, stage: str, fn: Callable[[], None]) -> None:
        h = stage_hash(self.cfg, stage, self.hashes, self.data_source)
        self.hashes[stage] = h
        cached = self.done(stage, h)
        if cached is not None:
            self.log(f"== {stage}: up to date (hash {h}, {cached['seconds']:.0f}s when it ran), skipped")
            self.records[stage] = {**cached, "cached": True}
            return
        for later in STAGES[STAGES.index(stage) + 1 :]:
            if stage in USES.get(later, []):
                self.force.add(later)  # its input is about to change
        self.log(f"== {stage}: running (hash {h})")
        t0 = time.perf_counter()
        fn()
        rec = {"stage": stage, "hash": h, "seconds": time.perf_counter() - t0, "finished": True,
               "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_json(self.marker(stage), rec)
        self.records[stage] = {**rec, "cached": False}
        self.log(f"== {stage}: done in {rec['seconds']:.0f}s")


def _call(main: Callable[[list[str]], int], argv: list[str]) -> None:
    code = main(argv)
    if code:
        raise SystemExit(code)


def final_config(cfg: Config, runs: Path) -> Config:
    """The final run's config: ``cfg`` with the grid's best configuration (when ``study.final_from: grid``) and
    ``study.final_epochs`` swapped in."""
    tc = cfg.train
    epochs = cfg.study.final_epochs or tc.epochs
    if cfg.study.final_from != "grid":
        return replace(cfg, train=replace(tc, epochs=epochs))
    rows = json.loads((runs / "grid_search" / "results.json").read_text())
    best = min(rows, key=lambda r: r["rank"])
    return replace(cfg, model=replace(cfg.model, blocks=tuple(best["blocks"]), bottleneck_mid=best["mid"]),
                   train=replace(tc, epochs=epochs, label_smoothing=best.get("label_smoothing", tc.label_smoothing),
                                 optimizer=replace(tc.optimizer, lr=best["lr"], weight_decay=best["weight_decay"])))


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.base_parser("cifar100-func study", "Run the whole study (sanity, overfit, LR finder, grid, final, test).")
    p.add_argument("--force", action="append", default=[], choices=STAGES, help="redo a stage (repeatable)")
    args = p.parse_args(argv)
    cfg = cli.load(args)
    resolve_device(args.device)
    common = ["--config", args.config, "--device", args.device] + [a for o in args.overrides for a in ("--set", o)]
    if args.seed is not None:
        common += ["--seed", str(args.seed)]
    if args.data_root:
        common += ["--data-root", args.data_root]
    from ..data.dataset import load_dataset

    data = load_dataset(cfg.dataset, args.data_root)  # fails early, clearly, when the data is missing
    study = Study(cfg, common, set(args.force))
    study.data_source = data.source
    del data
    print(f"study profile '{cfg.study.profile}': {cfg.study.description}", flush=True)
    runs = Path(cfg.paths.runs_dir)
    best = Path(cfg.paths.artifacts_dir) / "best.ckpt"
    study.run("sanity", lambda: _call(sanity.main, common))
    study.run("overfit", lambda: _call(overfit.main, common))
    study.run("lr_finder", lambda: _call(lr_finder.main, common))
    grid_force = ["--force"] if "grid_search" in study.force else []  # else finished stacks are kept
    study.run("grid_search", lambda: _call(grid_search.main, common + grid_force))

    def final() -> None:
        final_cfg = final_config(cfg, runs)
        interrupted = (runs / "final" / "last.ckpt").is_file() and not study.marker("final").is_file()
        where = dict(device=args.device, data_root=args.data_root, run_name="final", members=cfg.study.final_seeds)
        if interrupted and "final" not in study.force:
            try:
                train.run(final_cfg, resume=True, **where)
                return
            except CheckpointError as exc:  # the interrupted run had another config: start again
                print(f"cannot resume the interrupted final run ({exc}); starting it again")
        train.run(final_cfg, overwrite=True, **where)

    study.run("final", final)
    study.run("evaluate", lambda: evaluate.run(final_config(cfg, runs), best, device=args.device,
                                               data_root=args.data_root))
    from ..report.report import write_report

    path = write_report(cfg, study.records, runs, Path(cfg.paths.artifacts_dir), Path(cfg.paths.report_dir),
                        changed_keys(cfg, final_config(cfg, runs)))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
