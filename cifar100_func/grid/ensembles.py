"""What a sweep's trained members add up to, on the validation split only.

Every configuration is also an ensemble: the mean of its seeds' softmax. And one ensemble is selected from every
finished member of every configuration by greedy forward selection with replacement (Caruana et al. 2004,
:mod:`..stats.selection`). Each comes with its calibration and a temperature fitted on validation. The ranking's
noise is the seeds': the winner against the runner-up and the median in a paired test over seeds. Nothing here
reads the test split: the selected ensemble is written as a checkpoint (:func:`save_ensemble`) that ``evaluate``
scores on test once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..runtime.checkpoint import FORMAT
from ..runtime.io import atomic_write
from ..runtime.predict import mean_log_probs, scores
from ..stats.calibration import calibration, calibration_and_reliability, fit_temperature
from ..stats.seeds import ranking_noise, single_seed_flips
from ..stats.selection import select
from .run import Stack


@dataclass(frozen=True)
class Pool:
    """Every finished member of a sweep: its name, configuration, weights and validation log-probabilities."""

    names: list[str]
    configs: list[str]
    state_dicts: list[dict]
    val_log_probs: torch.Tensor  # (M, N, C), under the sweep's view mode


def pool(stacks: Sequence[Stack], view: str) -> Pool:
    """The members of every stack that trained to the end, with their log-probabilities under ``view``."""
    names, configs, sds, preds = [], [], [], []
    for stack in stacks:
        if stack.final is None:
            continue
        by_name = {m.name: m for m in stack.members}
        for pos, name in enumerate(stack.final.names):
            p = stack.final.val_log_probs[view][pos]
            if not bool(torch.isfinite(p).all()):
                continue  # a member whose outputs are not finite cannot join an ensemble
            names.append(name)
            configs.append(by_name[name].configuration)
            sds.append(stack.final.state_dicts[pos])
            preds.append(p)
    return Pool(names, configs, sds, torch.stack(preds) if preds else torch.zeros(0))


def _ensemble_summary(log_probs: torch.Tensor, y: torch.Tensor, weights: Sequence[float] | None = None, *,
                      diagram: bool = True) -> dict:
    """Scores of the (weighted) mean of the members' probabilities (``log_probs`` (K, N, C)), its calibration before
    and after a temperature fitted on these same validation images, and (with ``diagram``) the reliability
    diagram's bins."""
    mean = mean_log_probs(log_probs, weights)
    t = fit_temperature(mean, y)
    if not diagram:
        return {**scores(log_probs, y, weights), "calibration": calibration(mean, y, t)}
    return {**scores(log_probs, y, weights), **calibration_and_reliability(mean, y, t)}


def configuration_ensembles(rows: list[dict], members: Pool, y: torch.Tensor) -> None:
    """Add to each row that finished: its seeds' single-model mean under the sweep's view
    (``single_val``), its seed ensemble (``ensemble_val``: loss, acc, top5_acc, calibration) and their difference
    (``ensemble_gain``, accuracy points over the single-model mean)."""
    for row in rows:
        idx = [j for j, c in enumerate(members.configs) if c == row["config"]]
        if not idx:
            continue
        preds = members.val_log_probs[idx]
        single = [scores(preds[j : j + 1], y) for j in range(len(idx))]
        row["single_val"] = {k: float(np.mean([s[k] for s in single])) for k in ("loss", "acc", "top5_acc")}
        row["single_val"]["calibration"] = calibration(preds[0], y)  # one seed's, as a model's
        ens = _ensemble_summary(preds, y, diagram=False)
        row["ensemble_val"] = ens
        row["ensemble_val_acc"], row["ensemble_val_loss"] = ens["acc"], ens["loss"]
        row["ensemble_gain"] = ens["acc"] - row["single_val"]["acc"]


def selection(members: Pool, y: torch.Tensor, rounds: int) -> dict:
    """The ensemble greedy selection picks from every member (validation NLL), its validation scores and
    calibration, against the best single member."""
    sel = select(members.val_log_probs, y, rounds)
    chosen = [j for j, c in enumerate(sel.counts) if c > 0]
    best = min(range(len(members.names)), key=lambda j: (scores(members.val_log_probs[j : j + 1], y)["loss"], j))
    return {"rounds": rounds, "size": sel.size, "round_nll": list(sel.round_nll), "round_acc": list(sel.round_acc),
            "members": [{"name": members.names[j], "config": members.configs[j], "count": sel.counts[j],
                         "weight": sel.weights[j]} for j in chosen],
            "val": _ensemble_summary(members.val_log_probs[chosen], y, [sel.weights[j] for j in chosen]),
            "best_member": {"name": members.names[best], **scores(members.val_log_probs[best : best + 1], y)},
            "pool": len(members.names)}


def noise(rows: list[dict]) -> dict | None:
    """Is the ranking more than seed noise? Over the configurations that trained to the end and did not diverge,
    ranked by their seeds' mean validation accuracy: the winner against the runner-up and the median (paired over
    seeds), and how often one seed alone would have picked another winner."""
    done = sorted((r for r in rows if not r["pruned"] and not r["diverged"]), key=lambda r: r["rank"])
    if not done:
        return None
    per_seed = np.array([[m["final_val_acc"] for m in r["members"]] for r in done]).T  # (S, configurations)
    out = ranking_noise(per_seed, [r["config"] for r in done])
    out["seeds"] = int(per_seed.shape[0])
    out["single_seed_flips"] = single_seed_flips(per_seed) if per_seed.shape[0] > 1 else None
    out["order"] = [done[i]["config"] for i in out["order"]]
    out["winner"] = done[out["winner"]]["config"]
    for key in ("runner_up", "median"):
        if key in out:
            out[key]["config"] = done[out[key].pop("index")]["config"]
    return out


def save_ensemble(path: Path, members: Pool, picks: Sequence[tuple[str, float]], **fields) -> None:
    """An ensemble checkpoint ``evaluate`` reads: the picked members' state_dicts (any architectures) and weights."""
    index = {name: j for j, name in enumerate(members.names)}
    sds = [members.state_dicts[index[name]] for name, _ in picks]
    payload = {"format": FORMAT, "state_dict": sds[0], "ensemble": sds,
               "ensemble_weights": [float(w) for _, w in picks], "ensemble_members": [n for n, _ in picks], **fields}
    atomic_write(Path(path), lambda f: torch.save(payload, f))


def analyse(cfg, rows: list[dict], stacks: Sequence[Stack], y: torch.Tensor, out_dir: Path | None) -> dict:
    """Everything above for a finished sweep (``rows`` ranked): adds each configuration's ensemble to its row and
    returns the sweep's summary; with ``out_dir`` writes ``selection.ckpt`` (the selected ensemble) and
    ``best_config.ckpt`` (the winner's seeds) there."""
    y = y.cpu()
    members = pool(stacks, cfg.grid.tta)
    out: dict = {"view": cfg.grid.tta, "noise": noise(rows), "selection": None, "checkpoints": {}}
    if not members.names:
        return out
    configuration_ensembles(rows, members, y)
    out["selection"] = selection(members, y, cfg.grid.selection_rounds)
    if out_dir is not None:
        winner = min(rows, key=lambda r: r["rank"])
        picks = {"selection": [(m["name"], m["weight"]) for m in out["selection"]["members"]],
                 "best_config": [(n, 1.0) for n, c in zip(members.names, members.configs) if c == winner["config"]]}
        for kind, chosen in picks.items():
            if chosen:
                path = out_dir / f"{kind}.ckpt"
                save_ensemble(path, members, chosen, config=cfg.to_dict(), kind=kind,
                              val=out["selection"]["val"] if kind == "selection" else winner.get("ensemble_val"))
                out["checkpoints"][kind] = str(path)
    return out
