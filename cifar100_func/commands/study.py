"""``cifar100-func study``: the whole study of SPEC.md in one command, then ``report/REPORT.md``.

Stages, in order: sanity -> overfit -> lr_finder -> grid_search -> final (standard path) -> evaluate. Each stage
is its command's ``execute`` on the same config; results pass on as values (the grid's winner goes into the final
config, the final checkpoint to the evaluation, every result to the report). A finished stage leaves
``<runs_dir>/study/<stage>.json``: the fingerprint of what it computed from (:mod:`..inputs`) and the fingerprints of
the files its result is read back from. Running the study again reuses a stage whose input is unchanged and whose
files are intact; anything else (a changed input, a missing or damaged file or marker, ``--force STAGE``) runs it
again, so an interrupted study continues where it stopped. The final run is the study's own:
``<runs_dir>/study/final`` and ``<artifacts_dir>/study/best.ckpt``; it never replaces another run's files. With
``study.final_from: ensemble`` there is no final run: the ensemble the grid selected from all its trained members
(on validation) is the answer, and the test split is read once, by the evaluation.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from . import cli, evaluate, grid_search, lr_finder, overfit, sanity, train
from .. import inputs
from ..config import Config
from ..errors import CheckpointError, UserError
from ..fingerprint import fingerprint
from ..runtime.io import atomic_write_json

STAGES = list(inputs.STAGES)
DAMAGED = (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError)  # a cached output that cannot be read


def final_config(cfg: Config, winner: dict | None) -> Config:
    """The final run's config: ``cfg`` with the grid's ``winner`` (its row; None: ``study.final_from: config``) and
    ``study.final_epochs`` swapped in."""
    tc = cfg.train
    epochs = cfg.study.final_epochs or tc.epochs
    if winner is None:
        return replace(cfg, train=replace(tc, epochs=epochs))
    return replace(cfg, model=replace(cfg.model, blocks=tuple(winner["blocks"]), bottleneck_mid=winner["mid"]),
                   train=replace(tc, epochs=epochs, label_smoothing=winner.get("label_smoothing", tc.label_smoothing),
                                 optimizer=replace(tc.optimizer, lr=winner["lr"], weight_decay=winner["weight_decay"])))


@dataclass(frozen=True)
class Layout:
    """Where the study writes: its markers and its own final run (never a ``train`` run's files)."""

    runs: Path
    artifacts: Path
    report: Path
    final_run = "study/final"  # the final run's name (its folder under runs_dir)

    @classmethod
    def of(cls, cfg: Config) -> "Layout":
        p = cfg.paths
        return cls(Path(p.runs_dir), Path(p.artifacts_dir), Path(p.report_dir))

    @property
    def state(self) -> Path:
        return self.runs / "study"

    @property
    def best_ckpt(self) -> Path:
        return self.artifacts / "study" / "best.ckpt"


def file_fingerprints(files: Sequence[Path]) -> dict[str, str | None]:
    """The content fingerprint of each file (None when missing): what a marker remembers of a stage's outputs."""
    import hashlib

    out: dict[str, str | None] = {}
    for f in files:
        try:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
            out[str(f)] = h.hexdigest()[:16]
        except OSError:
            out[str(f)] = None
    return out


class Cache:
    """Runs stages or reuses their results; remembers wall times and fingerprints for the report."""

    def __init__(self, state: Path, force: set[str], log: Callable[[str], None] = print):
        self.state, self.force, self.log = state, force, log
        self.records: dict[str, dict] = {}

    def marker(self, stage: str) -> Path:
        return self.state / f"{stage}.json"

    def _cached(self, stage: str, fp: str, files: Sequence[Path], load: Callable[[], Any]) -> tuple[Any, dict] | None:
        if stage in self.force:
            return None
        try:
            rec = json.loads(self.marker(stage).read_text())
            if not (isinstance(rec, dict) and rec.get("fingerprint") == fp and rec.get("finished")):
                return None
            if rec.get("files") != file_fingerprints(files):
                self.log(f"== {stage}: its outputs changed or went missing since it ran; running it again")
                return None
            return load(), rec
        except FileNotFoundError:
            return None
        except DAMAGED as exc:
            self.log(f"== {stage}: its cached output cannot be read ({type(exc).__name__}: {exc}); running it again")
            return None

    def stage(self, stage: str, value: Any, run: Callable[[], Any], load: Callable[[], Any],
              files: Callable[[], Sequence[Path]]) -> Any:
        """The result of ``stage`` computed from ``value``: reused when a finished run had the same fingerprint and
        its ``files`` are as it left them, else ``run()`` (and its marker written)."""
        fp = fingerprint(value)
        hit = self._cached(stage, fp, files(), load)
        if hit is not None:
            result, rec = hit
            self.log(f"== {stage}: up to date (fingerprint {fp}, {rec['seconds']:.0f}s when it ran), skipped")
            self.records[stage] = {**rec, "cached": True}
            return result
        self.log(f"== {stage}: running (fingerprint {fp})")
        t0 = time.perf_counter()
        result = run()
        rec = {"stage": stage, "fingerprint": fp, "seconds": time.perf_counter() - t0, "finished": True,
               "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), "files": file_fingerprints(files())}
        atomic_write_json(self.marker(stage), rec)
        self.records[stage] = {**rec, "cached": False}
        self.log(f"== {stage}: done in {rec['seconds']:.0f}s")
        return result


def _final(fcfg: Config, rt: cli.Runtime, where: Layout, cache: Cache) -> train.TrainResult:
    """The final run, in the study's own folders: continued when an earlier study was interrupted during it."""
    run = dict(run_name=where.final_run, best_ckpt=where.best_ckpt, members=fcfg.study.final_seeds)
    last = where.runs / where.final_run / "last.ckpt"
    if last.is_file() and not cache.marker("final").exists() and "final" not in cache.force:
        try:
            return train.execute(fcfg, rt, resume=True, **run)
        except CheckpointError as exc:  # the interrupted run had another config: start again
            print(f"cannot resume the interrupted final run ({exc}); starting it again")
    return train.execute(fcfg, rt, overwrite=True, **run)


@dataclass(frozen=True)
class StudyResult:
    report: Path
    final_config: Config
    test: evaluate.EvalResult


@cli.exclusive(lambda cfg, *args, **kwargs: [Layout.of(cfg).state, Layout.of(cfg).report])
def execute(cfg: Config, rt: cli.Runtime, force: set[str] | None = None) -> StudyResult:
    """Run (or reuse) every stage of the study on ``cfg`` and write the report."""
    from ..report.report import StudyResults, write_report

    where = Layout.of(cfg)
    cli.check_writable([where.runs, where.state, where.best_ckpt.parent, where.report])
    data_id = inputs.data_identity(cfg, rt.data_root)  # finds the data, or stops here, before any stage
    cache = Cache(where.state, set(force or ()))
    print(f"study profile '{cfg.study.profile}': {cfg.study.description}", flush=True)
    out = lambda module: module.out_dir(cfg)  # noqa: E731
    checks = cache.stage("sanity", inputs.sanity(cfg, data_id), lambda: sanity.execute(cfg, rt),
                         lambda: sanity.load(cfg), lambda: [out(sanity) / "sanity.json"])
    over = cache.stage("overfit", inputs.overfit(cfg, data_id), lambda: overfit.execute(cfg, rt),
                       lambda: overfit.load(cfg), lambda: [out(overfit) / "overfit.json"])
    finder = cache.stage("lr_finder", inputs.lr_finder(cfg, data_id), lambda: lr_finder.execute(cfg, rt),
                         lambda: lr_finder.load(cfg), lambda: [out(lr_finder) / "lr_finder.json"])
    grid = cache.stage("grid_search", inputs.grid(cfg, data_id),
                       lambda: grid_search.execute(cfg, rt, force="grid_search" in cache.force),
                       lambda: grid_search.load(cfg),
                       lambda: [out(grid_search) / f for f in ("results.json", "sweep.json", "selection.ckpt")])
    fcfg = final_config(cfg, grid.winner if cfg.study.final_from == "grid" else None)
    final, answer = None, where.best_ckpt
    if cfg.study.final_from == "ensemble":  # the sweep's selected ensemble is the answer: no final run
        if grid.selection_ckpt is None:
            raise UserError("study.final_from ensemble: the grid finished no member to select from (every "
                            "configuration was pruned or diverged); use study.final_from grid")
        answer = grid.selection_ckpt
    else:
        final = cache.stage("final", inputs.final(fcfg, data_id), lambda: _final(fcfg, rt, where, cache),
                            lambda: train.load(where.runs / where.final_run, where.best_ckpt),
                            lambda: [where.runs / where.final_run / "metrics.jsonl", where.best_ckpt])
    checkpoint = file_fingerprints([answer])[str(answer)] or ""
    test = cache.stage("evaluate", inputs.evaluate(fcfg, data_id, checkpoint),
                       lambda: evaluate.execute(fcfg, rt, answer), lambda: evaluate.load(answer),
                       lambda: [evaluate.outputs(answer)["metrics"]])
    results = StudyResults(checks, over, finder, grid, final, test, cache.records)
    path = write_report(cfg, fcfg, results, where.report)
    print(f"report: {path}")
    return StudyResult(path, fcfg, test)


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.base_parser("cifar100-func study", "Run the whole study (sanity, overfit, LR finder, grid, final, test).")
    p.add_argument("--force", action="append", default=[], choices=STAGES, help="redo a stage (repeatable)")
    args = p.parse_args(argv)
    cfg = cli.load(args)
    from ..runtime.backend import resolve_device

    resolve_device(args.device)  # a device that is not there: one line, before anything else
    execute(cfg, cli.runtime(args), set(args.force))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
