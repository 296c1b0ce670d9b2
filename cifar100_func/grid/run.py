"""How the grid trains: stacks of configurations through the one loop, rung by rung, with per-stack records.

Configurations that share an architecture train as one stack (a :class:`.loop.Plan`); an engine runs the stacks
of a rung: :class:`LocalEngine` one after another in this process, :class:`.ray_engine.RayEngine` in parallel as Ray
tasks (a :class:`RungJob` holds all a stack's rung needs; :func:`train_rung` trains it anywhere). Training is cut at *rungs* (global steps): ``grid.schedule: exhaustive`` has one rung, the end;
``halving`` has rungs at ``min_epochs * eta**r`` epochs, and at each rung every running configuration, across all
stacks, is ranked by its validation accuracy on the whole validation split and the best 1/eta go on; the others
leave their stack (params, BN state, optimiser state, hyper-parameters and seeds are sliced to the survivors, so
the stack's compute shrinks with it). Ranking waits until every stack has reached the rung, so stacks may run in
any order or place.

A stack that finishes leaves its members' weights and validation log-probabilities (:class:`Final`,
``stacks/stack<n>_rung<last>_final.pt``, written before its last record) for what the sweep concludes after
training (:mod:`.ensembles`). After each stack reaches a rung, its record (``stacks/stack<n>_rung<r>.json``: metrics, losses, validation
accuracy; and, unless it is the last rung, its trees ``.pt``) is written atomically. A grid started again keeps
every record whose key (config, stack, rung) matches ("stack 1, rung 1/3: done earlier, kept") and trains only the
rest, with the same results as an uninterrupted run; ``force`` ignores the records.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils._pytree import tree_leaves, tree_structure, tree_unflatten

from ..core import model
from ..core import trees as tree_ops
from ..runtime.backend import Backend
from ..config import Config
from ..fingerprint import fingerprint
from ..inputs import grid_common
from ..data.dataset import Dataset
from ..core.hyper import Hyper
from ..runtime.io import atomic_write, atomic_write_json
from ..data.loader import steps_per_epoch
from ..runtime.from_config import pipeline
from ..runtime.events import Events
from ..runtime.interop import to_state_dict
from ..runtime.predict import log_probabilities
from ..runtime.loop import Hooks, Plan, Start, init_trees, train
from ..runtime.trainer import schedule_fields


@dataclass
class Member:
    """One model of the grid as a stack trains it: a configuration at one of its seeds."""

    name: str
    hyper: Hyper
    seed: int
    group: str = ""  # the configuration's name: its seeds are ranked and pruned together ("": ``name``)

    @property
    def configuration(self) -> str:
        return self.group or self.name


@dataclass
class Final:
    """What a stack's finished members leave for the analysis after training (:mod:`.ensembles`): each one's
    weights (reference-layout state_dicts) and its validation log-probabilities, plain and with ``grid.tta``'s views."""

    names: list[str]
    state_dicts: list[dict]
    val_log_probs: dict[str, torch.Tensor]  # view mode -> (K, N, C), float32 (float64 in fp64)


@dataclass
class Stack:
    """A stack's members and how far it got: ``running`` indexes the members still in its trees."""

    index: int  # 1-based
    arch: model.Arch
    members: list[Member]
    running: list[int]
    step: int = 0
    trees: Any = None  # (params, state, opt_state, active) of the running members, or None (fresh / on disk)
    metrics: list[list[dict]] = field(default_factory=list)  # per member
    step_losses: list[list[float]] = field(default_factory=list)  # per member
    rung_val_acc: list[list[float]] = field(default_factory=list)  # per member, one value per rung reached
    diverged_at: list[int | None] = field(default_factory=list)
    pruned_at: list[int | None] = field(default_factory=list)  # rung (1-based) after which a member left
    final: Final | None = None  # the finished members' weights and validation log-probabilities

    def __post_init__(self) -> None:
        n = len(self.members)
        self.metrics = self.metrics or [[] for _ in range(n)]
        self.step_losses = self.step_losses or [[] for _ in range(n)]
        self.rung_val_acc = self.rung_val_acc or [[] for _ in range(n)]
        self.diverged_at = self.diverged_at or [None] * n
        self.pruned_at = self.pruned_at or [None] * n


def rungs(cfg: Config, steps: int) -> list[int]:
    """The global steps at which the grid ranks and prunes (the last is the end of training)."""
    total = steps * cfg.grid.epochs
    out: list[int] = []
    if cfg.grid.schedule == "halving":
        h = cfg.grid.halving
        r = h.min_epochs * steps
        while round(r) < total and (not out or round(r) > out[-1]):
            out.append(max(1, round(r)))
            if h.eta == 1:
                r += h.min_epochs * steps
            else:
                r *= h.eta
    return out + [total]


def survivors(scores: dict[tuple[int, int], float], eta: int) -> set[tuple[int, int]]:
    """The best ``len(scores) // eta`` (at least one) of (stack, member) keys by score; ties go to the earlier."""
    keep = max(1, len(scores) // eta)
    order = sorted(scores, key=lambda key: (-scores[key], key))
    return set(order[:keep])


def _key(cfg: Config, data_id: str, stack: Stack, rung: int, ends: list[int]) -> str:
    """A stack's record key: the fingerprint of what training it to rung ``rung`` computes from: what every stack
    of the grid shares (:func:`..inputs.grid_common`), the data's content, the stack's members (architecture,
    hyper-parameters, seeds) and the rungs up to this one."""
    return fingerprint({"grid": grid_common(cfg, data_id), "arch": stack.arch, "members": stack.members,
                        "rung": rung, "ends": ends[: rung + 1]})


def _slice(trees: Any, keep: list[int], stacked_after: bool) -> Any:
    """The trees of the members at positions ``keep`` (a stack of one becomes one model's trees)."""
    out = tree_ops.take(trees, keep)
    return out if stacked_after else tree_ops.member(out, 0)


@dataclass
class RungJob:
    """What training one stack up to one rung needs, and nothing tied to the driver's process: an engine may run
    it here or ship it to another process or machine (:mod:`.ray_engine`)."""

    cfg: Config
    index: int  # the stack's (1-based)
    arch: model.Arch
    members: list[Member]  # the running ones
    running: list[int]  # their indices in the stack
    step: int  # where the stack is
    end: int  # the rung's global step
    rung: int  # 0-based
    n_rungs: int
    key: str  # the record's key
    trees: Any = None  # (params, state, opt_state, active) when step > 0
    events: list[Path] | None = None  # TensorBoard folders, one per running member

    @property
    def where(self) -> str:
        return f"stack {self.index}" + (f", rung {self.rung + 1}/{self.n_rungs}" if self.n_rungs > 1 else "")


@dataclass
class RungOutcome:
    record: dict  # what the stack's record file holds (metrics, losses, validation accuracy at the rung)
    trees: Any  # (params, state, opt_state, active) after the rung


def train_rung(job: RungJob, data: Dataset, backend: Backend, progress: bool | None = None,
               log: Callable[[str], None] = print) -> RungOutcome:
    """Train one stack from ``job.step`` to ``job.end`` through the one loop (data on the backend's device)."""
    cfg, tc = job.cfg, job.cfg.train
    steps = steps_per_epoch(len(data.train), tc.batch_size)
    seeds = [m.seed for m in job.members]
    plan = Plan(job.arch, seeds, epochs=cfg.grid.epochs,
                **schedule_fields(cfg, [m.hyper for m in job.members], steps, cfg.grid.epochs),
                shared_data=len(set(seeds)) == 1, guard=True, grid=True, max_steps=job.end)
    start = None
    if job.step > 0:
        p, s, o, active = tree_ops.to(job.trees, backend.device)
        start = Start(p, s, o, job.step, [[] for _ in job.members], active)
    desc = f"{job.where}: blocks {list(job.arch.blocks)} mid {job.arch.mid}"
    log(f"{desc}: {len(job.members)} models ({', '.join(m.name for m in job.members)}), steps {job.step} -> "
        f"{job.end}")
    t0 = time.perf_counter()
    writer = None if job.events is None else Events(job.events, plan, steps, job.step)
    hooks = writer.hooks(Hooks()) if writer is not None else None
    try:
        res = train(plan, data, backend, pipeline(cfg, backend.device),
                    batch_size=tc.batch_size, eval_batch_size=tc.eval_batch_size, start=start, hooks=hooks, desc=desc,
                    progress=progress, log=log)
    finally:
        if writer is not None:
            writer.close()
    log(f"{desc}: {time.perf_counter() - t0:.0f}s ({res.runner}; first step, with any compilation: "
        f"{res.first_step_seconds:.0f}s), then {res.model_images_per_sec:.0f} model-images/s")
    val = [m[-1]["val_acc"] for m in res.metrics]  # the loop validates where a run stops: at the rung
    rec = {"key": job.key, "rung": job.rung, "end": job.end, "running": job.running, "metrics": res.metrics,
           "step_losses": res.step_losses.T.tolist(), "val_acc": val, "diverged_at": res.diverged_at,
           "rate": res.model_images_per_sec}
    return RungOutcome(rec, (res.params, res.state, res.opt_state, res.active))


def member_trees(trees: Any, pos: int, n: int) -> tuple[Any, Any]:
    """(params, BN state) of the ``pos``-th of ``n`` running members from a stack's trees."""
    params, state = trees[0], trees[1]
    return (tree_ops.member(params, pos), tree_ops.member(state, pos)) if n > 1 else (params, state)


class LocalEngine:
    """Stacks one after another in this process, on the backend's device."""

    def __init__(self, data: Dataset, backend: Backend, progress: bool | None, log: Callable[[str], None]):
        self.data, self.backend, self.progress, self.log = data, backend, progress, log

    def run(self, jobs: list[RungJob]) -> Iterator[tuple[RungJob, RungOutcome]]:
        for job in jobs:
            yield job, train_rung(job, self.data, self.backend, self.progress, self.log)


class GridRun:
    """Trains the stacks of a grid rung by rung; see the module docstring. ``engine`` runs a rung's stacks (one
    after another here, or in parallel elsewhere); this object keeps the records, ranks and prunes."""

    def __init__(self, cfg: Config, data: Dataset, backend: Backend, stacks: list[Stack], records: Path | None,
                 force: bool = False, progress: bool | None = None, log: Callable[[str], None] = print,
                 on_finish: Callable[[Stack, Any], None] | None = None, events: Path | None = None,
                 engine: Any = None):
        """``on_finish(stack, trees)`` runs when a stack has trained to the end (its metrics complete), before its
        record is written (so a kept record means that it ran); the grid saves checkpoints there."""
        self.cfg, self.data, self.backend, self.stacks = cfg, data, backend, stacks
        self.records, self.force, self.log = records, force, log
        self.on_finish = on_finish
        self.events = events  # TensorBoard: one folder per configuration, continued from rung to rung
        self.steps = steps_per_epoch(len(data.train), cfg.train.batch_size)
        self.ends = rungs(cfg, self.steps)
        self.data_id = fingerprint({"train": data.train, "val": data.val})  # the content, wherever it is
        self.engine = engine or LocalEngine(data, backend, progress, log)

    def run(self) -> list[Stack]:
        for r, end in enumerate(self.ends):
            jobs = [job for stack in self.stacks if stack.running and (job := self._job(stack, r, end))]
            by_index = {stack.index: stack for stack in self.stacks}
            for job, out in self.engine.run(jobs):
                self._finish(by_index[job.index], job, out)
            if r < len(self.ends) - 1:
                self._prune(r)
        return self.stacks

    # ---------------------------------------------------------------------------------------------- a rung
    def _job(self, stack: Stack, r: int, end: int) -> RungJob | None:
        """What training ``stack`` to ``end`` needs, or None when an earlier run's record is kept."""
        key = _key(self.cfg, self.data_id, stack, r, self.ends)
        job = RungJob(self.cfg, stack.index, stack.arch, [stack.members[i] for i in stack.running],
                      list(stack.running), stack.step, end, r, len(self.ends), key)
        rec = self._read(stack, r, key)
        if rec is not None and r == len(self.ends) - 1:
            stack.final = self._read_final(stack, rec["running"])
            rec = rec if stack.final is not None else None
        if rec is not None:
            self.log(f"{job.where}: done earlier, kept")
            self._apply(stack, rec)
            stack.trees = None  # on disk, read when the next rung needs them
            return None
        if stack.trees is None and stack.step > 0:
            stack.trees = self._read_trees(stack, r - 1)
        job.trees = stack.trees
        if self.events is not None:
            job.events = [self.events / m.name for m in job.members]
        return job

    def _finish(self, stack: Stack, job: RungJob, out: RungOutcome) -> None:
        """Keep a stack's rung: its trees, the checkpoints of a finished stack, its record (atomically)."""
        r = job.rung
        stack.trees = out.trees
        self._apply(stack, out.record)
        if r == len(self.ends) - 1:
            stack.final = self._final(stack, out.trees)
            if self.on_finish is not None:
                self.on_finish(stack, out.trees)
        if self.records is not None:
            if r < len(self.ends) - 1:
                leaves = [t.detach().cpu() for t in tree_leaves(out.trees)]
                atomic_write(self._path(stack, r, ".pt"), lambda f: torch.save(leaves, f))
            atomic_write_json(self._path(stack, r, ".json"), out.record)

    def _apply(self, stack: Stack, rec: dict) -> None:
        for pos, i in enumerate(rec["running"]):
            stack.metrics[i] += rec["metrics"][pos]
            stack.step_losses[i] += rec["step_losses"][pos]
            stack.rung_val_acc[i].append(rec["val_acc"][pos])
            if rec["diverged_at"][pos] is not None and stack.diverged_at[i] is None:
                stack.diverged_at[i] = rec["diverged_at"][pos]
        stack.step = rec["end"]

    def _final(self, stack: Stack, trees: Any) -> Final:
        """The finished members' weights and validation log-probabilities, written before the stack's last record."""
        n = len(stack.running)
        params, state = trees[0], trees[1]
        preds = log_probabilities(params, state, self.data.val, pipeline(self.cfg, self.backend.device),
                                  self.backend, members=n, batch_size=self.cfg.train.eval_batch_size,
                                  tta=self.cfg.grid.tta)
        sds = [to_state_dict(*(tree_ops.to_cpu(t) for t in member_trees(trees, pos, n))) for pos in range(n)]
        final = Final([stack.members[i].name for i in stack.running], sds, preds)
        if self.records is not None:
            payload = {"names": final.names, "state_dicts": final.state_dicts, "val_log_probs": final.val_log_probs}
            atomic_write(self._path(stack, len(self.ends) - 1, "_final.pt"), lambda f: torch.save(payload, f))
        return final

    def _read_final(self, stack: Stack, running: list[int]) -> Final | None:
        """A finished stack's :class:`Final` as an earlier run wrote it, or None when it is missing or damaged (or of
        the format that kept float32 probabilities, whose underflowed zeros cannot give back the log-probabilities)."""
        try:
            obj = torch.load(self._path(stack, len(self.ends) - 1, "_final.pt"), map_location="cpu",
                             weights_only=True)
            final = Final(obj["names"], obj["state_dicts"], obj["val_log_probs"])
        except Exception:  # noqa: BLE001 - any unreadable file means: train the last rung again
            return None
        ok = final.names == [stack.members[i].name for i in running] and self.cfg.grid.tta in final.val_log_probs
        return final if ok else None

    def _prune(self, r: int) -> None:
        """Rank the configurations by their seeds' mean validation accuracy at this rung (a diverged seed counts
        as -1) and keep the best 1/eta; every seed of a configuration stays or leaves with it."""
        groups: dict[str, list[tuple[int, int]]] = {}
        for stack in self.stacks:
            for i in stack.running:
                groups.setdefault(stack.members[i].configuration, []).append((stack.index, i))
        by_index = {stack.index: stack for stack in self.stacks}

        def score(key: tuple[int, int]) -> float:
            stack = by_index[key[0]]
            acc = stack.rung_val_acc[key[1]][-1]
            return acc if stack.diverged_at[key[1]] is None and math.isfinite(acc) else -1.0

        scores = {keys[0]: sum(map(score, keys)) / len(keys) for keys in groups.values()}
        kept = survivors(scores, self.cfg.grid.halving.eta)
        keep = {key for keys in groups.values() if keys[0] in kept for key in keys}
        self.log(f"rung {r + 1}: {len(kept)} of {len(scores)} configurations go on")
        for stack in self.stacks:
            stay = [pos for pos, i in enumerate(stack.running) if (stack.index, i) in keep]
            for pos, i in enumerate(stack.running):
                if (stack.index, i) not in keep:
                    stack.pruned_at[i] = r + 1
            if len(stay) < len(stack.running) and stack.trees is not None:
                stack.trees = _slice(stack.trees, stay, len(stay) > 1) if stay else None
            stack.running = [stack.running[pos] for pos in stay]

    # ---------------------------------------------------------------------------------------------- records
    def _path(self, stack: Stack, r: int, suffix: str) -> Path:
        assert self.records is not None
        return self.records / f"stack{stack.index}_rung{r + 1}{suffix}"

    def _read(self, stack: Stack, r: int, key: str) -> dict | None:
        if self.records is None or self.force:
            return None
        path = self._path(stack, r, ".json")
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        ok = rec.get("key") == key and rec.get("running") == stack.running
        return rec if ok else None

    def _read_trees(self, stack: Stack, r: int) -> Any:
        """The trees a stack had after rung ``r`` (recorded before pruning), sliced to its running members."""
        rec = json.loads(self._path(stack, r, ".json").read_text())
        were = rec["running"]
        members = [stack.members[i] for i in were]
        template_plan = Plan(stack.arch, [m.seed for m in members], epochs=1,  # the structure of the trees only
                             **schedule_fields(self.cfg, [m.hyper for m in members], 1, 1))
        p, s, o = init_trees(template_plan, self.backend.precision, torch.device("cpu"))
        active = torch.ones(len(were) if len(were) > 1 else (), dtype=torch.bool)
        spec = tree_structure((p, s, o, active))
        leaves = torch.load(self._path(stack, r, ".pt"), map_location="cpu", weights_only=True)
        trees = tree_unflatten(leaves, spec)
        stay = [pos for pos, i in enumerate(were) if i in stack.running]
        if len(stay) < len(were):
            trees = _slice(trees, stay, len(stay) > 1)
        return trees
