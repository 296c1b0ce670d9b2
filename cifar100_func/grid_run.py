"""How the grid trains: stacks of configurations through the one loop, rung by rung, with per-stack records.

Configurations that share an architecture train as one stack (a :class:`.loop.Plan`); stacks run one after
another. Training is cut at *rungs* (global steps): ``grid.schedule: exhaustive`` has one rung, the end;
``halving`` has rungs at ``min_epochs * eta**r`` epochs, and at each rung every running configuration, across all
stacks, is ranked by its validation accuracy on the whole validation split and the best 1/eta go on; the others
leave their stack (params, BN state, optimiser state, hyper-parameters and seeds are sliced to the survivors, so
the stack's compute shrinks with it). Ranking waits until every stack has reached the rung, so stacks may run in
any order or place.

After each stack reaches a rung, its record (``stacks/stack<n>_rung<r>.json``: metrics, losses, validation
accuracy; and, unless it is the last rung, its trees ``.pt``) is written atomically. A grid started again keeps
every record whose key (config, stack, rung) matches ("stack 1, rung 1/3: done earlier, kept") and trains only the
rest, with the same results as an uninterrupted run; ``force`` ignores the records.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_leaves, tree_map, tree_structure, tree_unflatten

from . import model
from .backend import Backend
from .config import Config
from .data import Dataset
from .hparams import Hyper
from .io import atomic_write, atomic_write_json
from .loader import Pipeline, steps_per_epoch
from .events import Events
from .loop import Hooks, Plan, Start, init_trees, train, unstack
from .trainer import schedule_fields


@dataclass
class Member:
    """One configuration of the grid as a stack trains it."""

    name: str
    hyper: Hyper
    seed: int


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


def _key(cfg: Config, stack: Stack, rung: int, ends: list[int]) -> str:
    d = cfg.to_dict()
    for volatile in ("paths", "study", "lr_finder", "overfit", "sanity"):
        d.pop(volatile, None)
    d["dataset"].pop("root", None)
    d["dataset"].pop("download", None)
    d["grid"].pop("compile", None)
    d["train"].pop("compile", None)
    d["train"].pop("compile_mode", None)
    payload = {"config": d, "stack": [m.name for m in stack.members], "rung": rung, "ends": ends[: rung + 1]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _slice(trees: Any, keep: list[int], stacked_after: bool) -> Any:
    """The trees of the members at positions ``keep`` (a stack of one becomes one model's trees)."""
    idx = torch.tensor(keep)
    out = tree_map(lambda t: t.index_select(0, idx.to(t.device)), trees)
    return out if stacked_after else unstack(out, 0)


class GridRun:
    """Trains the stacks of a grid rung by rung; see the module docstring."""

    def __init__(self, cfg: Config, data: Dataset, backend: Backend, stacks: list[Stack], records: Path | None,
                 force: bool = False, progress: bool | None = None, log: Callable[[str], None] = print,
                 on_finish: Callable[[Stack, Any], None] | None = None, events: Path | None = None):
        """``on_finish(stack, loop result)`` runs when a stack has trained to the end, before its record is
        written (so a kept record means that it ran); the grid saves checkpoints there."""
        self.cfg, self.data, self.backend, self.stacks = cfg, data, backend, stacks
        self.records, self.force, self.progress, self.log = records, force, progress, log
        self.on_finish = on_finish
        self.events = events  # TensorBoard: one folder per configuration, continued from rung to rung
        tc = cfg.train
        self.steps = steps_per_epoch(len(data.train), tc.batch_size)
        self.ends = rungs(cfg, self.steps)
        self.schedule = schedule_fields(cfg, self.steps, cfg.grid.epochs)
        self.pipe = Pipeline.create(cfg.preprocess, cfg.augment, backend.device)

    def run(self) -> list[Stack]:
        for r, end in enumerate(self.ends):
            for stack in self.stacks:
                if stack.running:
                    self._reach(stack, r, end)
            if r < len(self.ends) - 1:
                self._prune(r)
        return self.stacks

    # ---------------------------------------------------------------------------------------------- a rung
    def _reach(self, stack: Stack, r: int, end: int) -> None:
        """Train ``stack`` from its step to ``end`` (or keep the record of an earlier run that did)."""
        key = _key(self.cfg, stack, r, self.ends)
        where = f"stack {stack.index}" + (f", rung {r + 1}/{len(self.ends)}" if len(self.ends) > 1 else "")
        rec = self._read(stack, r, key)
        if rec is not None:
            self.log(f"{where}: done earlier, kept")
            self._apply(stack, rec)
            stack.trees = None  # on disk, read when the next rung needs them
            return
        if stack.trees is None and stack.step > 0:
            stack.trees = self._read_trees(stack, r - 1)
        running = [stack.members[i] for i in stack.running]
        tc = self.cfg.train
        plan = Plan(stack.arch, [m.seed for m in running], [m.hyper for m in running], tc.optimizer,
                    self.cfg.grid.epochs, **self.schedule, shared_data=not self.cfg.grid.independent_seeds, guard=True,
                    compile=self.cfg.grid.compile, max_steps=end)
        start = None
        if stack.step > 0:
            p, s, o, active = stack.trees
            start = Start(p, s, o, stack.step, [[] for _ in running], active)
        desc = f"{where}: blocks {list(stack.arch.blocks)} mid {stack.arch.mid}"
        self.log(f"{desc}: {len(running)} models ({', '.join(m.name for m in running)}), steps {stack.step} -> {end}")
        t0 = time.perf_counter()
        writer = (None if self.events is None else
                  Events([self.events / m.name for m in running], plan, self.steps, stack.step))
        hooks = writer.hooks(Hooks()) if writer is not None else None
        try:
            res = train(plan, self.data, self.backend, self.pipe, batch_size=tc.batch_size,
                        eval_batch_size=tc.eval_batch_size, start=start, hooks=hooks, desc=desc,
                        progress=self.progress, log=self.log)
        finally:
            if writer is not None:
                writer.close()
        self.log(f"{desc}: {time.perf_counter() - t0:.0f}s ({res.engine}; first step, with any compilation: "
                 f"{res.first_step_seconds:.0f}s), then {res.model_images_per_sec:.0f} model-images/s")
        val = [m[-1]["val_acc"] for m in res.metrics]  # the loop validates where a run stops: at the rung
        rec = {"key": key, "rung": r, "end": end, "running": stack.running, "metrics": res.metrics,
               "step_losses": res.step_losses.T.tolist(), "val_acc": val,
               "diverged_at": res.diverged_at, "rate": res.model_images_per_sec}
        stack.trees = (res.params, res.state, res.opt_state, res.active)
        if r == len(self.ends) - 1 and self.on_finish is not None:
            self.on_finish(stack, res)
        if self.records is not None:
            if r < len(self.ends) - 1:
                leaves = [t.detach().cpu() for t in tree_leaves(stack.trees)]
                atomic_write(self._path(stack, r, ".pt"), lambda f: torch.save(leaves, f))
            atomic_write_json(self._path(stack, r, ".json"), rec)
        self._apply(stack, rec)

    def _apply(self, stack: Stack, rec: dict) -> None:
        for pos, i in enumerate(rec["running"]):
            stack.metrics[i] += rec["metrics"][pos]
            stack.step_losses[i] += rec["step_losses"][pos]
            stack.rung_val_acc[i].append(rec["val_acc"][pos])
            if rec["diverged_at"][pos] is not None and stack.diverged_at[i] is None:
                stack.diverged_at[i] = rec["diverged_at"][pos]
        stack.step = rec["end"]

    def _prune(self, r: int) -> None:
        scores = {}
        for stack in self.stacks:
            for i in stack.running:
                acc = stack.rung_val_acc[i][-1]
                scores[(stack.index, i)] = acc if stack.diverged_at[i] is None and math.isfinite(acc) else -1.0
        keep = survivors(scores, self.cfg.grid.halving.eta)
        self.log(f"rung {r + 1}: {len(keep)} of {len(scores)} configurations go on")
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
        template_plan = Plan(stack.arch, [m.seed for m in members], [m.hyper for m in members],
                             self.cfg.train.optimizer, 1, self.schedule["lr_factor"])
        p, s, o = init_trees(template_plan, self.backend.precision, torch.device("cpu"))
        active = torch.ones(len(were) if len(were) > 1 else (), dtype=torch.bool)
        spec = tree_structure((p, s, o, active))
        leaves = torch.load(self._path(stack, r, ".pt"), map_location="cpu", weights_only=True)
        trees = tree_unflatten(leaves, spec)
        stay = [pos for pos, i in enumerate(were) if i in stack.running]
        if len(stay) < len(were):
            trees = _slice(trees, stay, len(stay) > 1)
        return tree_map(lambda t: t.to(self.backend.device), trees)
