"""Successive halving inside stacks and per-stack records, against exhaustive runs and uninterrupted runs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cifar100_func.commands import grid_search
from cifar100_func.runtime.from_config import data_spec
from cifar100_func.runtime.backend import Backend
from cifar100_func.config import load_config
from cifar100_func.data.dataset import load_dataset
from cifar100_func.grid.run import rungs, survivors

from conftest import REPO

DEV = torch.device("cpu")
QUIET = dict(progress=False, log=lambda s: None)


def _grid(tiny_config, extra):
    cfg = load_config(tiny_config(extra))
    return cfg, load_dataset(data_spec(cfg))


def _run(cfg, data, points=None, out_dir=None, **kw):
    points = points or grid_search.expand(cfg)
    return grid_search.run_grid(cfg, data, Backend.create(cfg, DEV), points, out_dir, **QUIET, **kw)


def test_rungs_and_survivors():
    cfg = load_config(None, ["grid.epochs=5", "grid.schedule=halving", "grid.halving.min_epochs=0.5",
                             "grid.halving.eta=3"])
    assert rungs(cfg, 100) == [50, 150, 450, 500]
    assert rungs(dataclasses.replace(cfg, grid=dataclasses.replace(cfg.grid, schedule="exhaustive")), 100) == [500]
    scores = {(1, 0): 0.2, (1, 1): 0.5, (2, 0): 0.5, (2, 1): 0.1, (2, 2): 0.3}
    assert survivors(scores, 2) == {(1, 1), (2, 0)}  # 5 // 2 = 2, the tie kept in order
    assert survivors(scores, 9) == {(1, 1)}  # at least one


def test_halving_that_prunes_nothing_equals_exhaustive(tiny_config):
    """eta 1 keeps everyone; the rungs only cut training (mid-epoch too) and continue it: same steps, same end."""
    base = {"train": {"precision": "fp64"}, "dataset": {"synthetic": {"train_size": 100 + 32 * 4}},
            "hparams": {"lr": [0.001, 0.003, 0.01], "blocks": [[1, 1, 1], [1, 1, 2]]}, "grid": {"epochs": 2,
                                                                                               "max_stack": 3}}
    cfg, data = _grid(tiny_config, base)
    exhaustive = _run(cfg, data)
    halving_cfg = dataclasses.replace(cfg, grid=dataclasses.replace(
        cfg.grid, schedule="halving", halving=dataclasses.replace(cfg.grid.halving, min_epochs=0.75, eta=1)))
    assert rungs(halving_cfg, 4) == [3, 6, 8]
    halving = _run(halving_cfg, data)
    for a, b in zip(exhaustive, halving):
        assert a["config"] == b["config"] and not b["pruned"] and b["epochs"] == 2
        torch.testing.assert_close(torch.tensor(b["step_losses"]), torch.tensor(a["step_losses"]), rtol=1e-9,
                                   atol=1e-12)
        assert b["final_val_acc"] == a["final_val_acc"]
        assert b["history"][-1]["val_loss"] == pytest.approx(a["history"][-1]["val_loss"], rel=1e-9)
        assert len(b["rung_val_acc"]) == 3 and b["rung_val_acc"][-1] == a["final_val_acc"]


def test_survivors_of_a_pruned_stack_equal_a_stack_without_the_pruned(tiny_config):
    cfg, data = _grid(tiny_config, {
        "train": {"precision": "fp64"}, "dataset": {"synthetic": {"train_size": 100 + 32 * 4}},
        "hparams": {"lr": [0.0003, 0.001, 0.003, 0.01]},
        "grid": {"epochs": 2, "schedule": "halving", "halving": {"min_epochs": 0.5, "eta": 2}}})
    rows = _run(cfg, data)
    kept = [r for r in rows if not r["pruned"]]
    assert len(kept) == 1 and sum(r["pruned_at_rung"] == 1 for r in rows) == 2  # 4 -> 2 -> 1
    assert all(r["epochs"] == 0.5 for r in rows if r["pruned_at_rung"] == 1)
    assert kept[0]["rank"] == 1 and kept[0]["epochs"] == 2
    # the two that passed rung 1, trained alone as a stack of two (exhaustive): the same losses to the end of rung 2
    second = [r for r in rows if r["pruned_at_rung"] != 1]
    points = [p for p in grid_search.expand(cfg) if p.name in {r["config"] for r in second}]
    alone = _run(dataclasses.replace(cfg, grid=dataclasses.replace(cfg.grid, schedule="exhaustive")), data, points)
    for r in second:
        a = next(x for x in alone if x["config"] == r["config"])
        n = len(r["step_losses"])
        assert n in (4, 8)  # pruned after rung 2 (1 epoch) or trained to the end
        torch.testing.assert_close(torch.tensor(r["step_losses"]), torch.tensor(a["step_losses"][:n]), rtol=1e-9,
                                   atol=1e-12)


def _strip(rows):
    """Rows without their timings (each seed's, under ``members``, too)."""
    skip = ("seconds", "train_seconds", "images_per_sec", "engine")
    return [{k: ([{kk: vv for kk, vv in h.items() if kk not in skip} for h in v] if k == "history" else
                 _strip(v) if k == "members" else v)
             for k, v in r.items()} for r in rows]


def test_grid_resumes_stack_by_stack_after_sigterm(tiny_config, tmp_path):
    """A real SIGTERM after the first stack's record: the next run keeps that stack and ends as an uninterrupted
    run does."""
    cfg = str(tiny_config({"hparams": {"blocks": [[1, 1, 1], [1, 1, 2], [1, 2, 1]]}, "grid": {"epochs": 2},
                           "dataset": {"synthetic": {"train_size": 100 + 32 * 12}}}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "cifar100_func.commands.grid_search", "--config", cfg]
    full = subprocess.run(base + ["--set", f"paths.runs_dir={tmp_path}/full"], env=env, capture_output=True,
                          text=True, timeout=900)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen(base, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "runs" / "grid_search" / "stacks" / "stack1_rung1.json"
    deadline = time.time() + 900
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert not (tmp_path / "runs" / "grid_search" / "results.json").exists()
    again = subprocess.run(base, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert "stack 1: done earlier, kept" in again.stdout and "stack 3: done earlier" not in again.stdout
    got = json.loads((tmp_path / "runs" / "grid_search" / "results.json").read_text())
    want = json.loads((tmp_path / "full" / "grid_search" / "results.json").read_text())
    assert _strip(got) == _strip(want)
    forced = subprocess.run(base + ["--force"], env=env, capture_output=True, text=True, timeout=900)
    assert forced.returncode == 0 and "done earlier" not in forced.stdout
