"""The grid on Ray (a local cluster of 2 CPUs): the same results as the local engine, a stack whose worker died
finishes on Ray's retry with the same results, and without Ray a one-line error that says how to install it."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from cifar100_func.commands import grid_search
from cifar100_func.runtime.from_config import data_spec
from cifar100_func.runtime.backend import Backend
from cifar100_func.config import load_config
from cifar100_func.data.dataset import load_dataset
from cifar100_func.grid.ray_engine import CRASH_ONCE

GRID = {"train": {"precision": "fp64"}, "dataset": {"synthetic": {"train_size": 100 + 32 * 4}},
        "hparams": {"lr": [0.001, 0.003, 0.01], "blocks": [[1, 1, 1], [1, 1, 2]]},
        "grid": {"epochs": 2, "schedule": "halving", "halving": {"min_epochs": 0.75, "eta": 2}}}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray")
    marker = tmp_path_factory.mktemp("ray") / "crashed"
    marker.touch()  # no crash unless a test removes it
    os.environ[CRASH_ONCE] = str(marker)  # the workers inherit the driver's environment
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield marker
    ray.shutdown()
    os.environ.pop(CRASH_ONCE, None)


def _rows(tiny_config, engine: str, out_dir=None):
    cfg = load_config(tiny_config(GRID), [f"grid.engine={engine}"])
    data = load_dataset(data_spec(cfg))
    return grid_search.run_grid(cfg, data, Backend.create(cfg, torch.device("cpu")), grid_search.expand(cfg),
                                out_dir, progress=False, log=lambda s: None)


def _same(a: list[dict], b: list[dict]) -> None:
    assert [r["config"] for r in a] == [r["config"] for r in b]
    for x, y in zip(a, b):
        assert (x["pruned"], x["pruned_at_rung"], x["epochs"], x["rank"]) == (
            y["pruned"], y["pruned_at_rung"], y["epochs"], y["rank"]), x["config"]
        np.testing.assert_allclose(x["step_losses"], y["step_losses"], rtol=1e-9, err_msg=x["config"])
        np.testing.assert_allclose(x["rung_val_acc"], y["rung_val_acc"], rtol=1e-12)


def test_ray_engine_equals_local_engine_and_survives_a_dead_worker(ray_cluster, tiny_config, tmp_path):
    local = _rows(tiny_config, "local")
    assert any(r["pruned"] for r in local) and any(not r["pruned"] for r in local)
    _same(_rows(tiny_config, "ray", tmp_path / "ray"), local)
    assert (tmp_path / "ray" / "stacks" / "stack2_rung2.json").is_file()

    ray_cluster.unlink()  # the next task kills its worker once; Ray runs the stack again
    _same(_rows(tiny_config, "ray", tmp_path / "retry"), local)
    assert ray_cluster.exists(), "no task crashed: the retry was not exercised"


def test_without_ray_the_error_says_how_to_install(run_cli, tiny_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    code, out, err = run_cli("grid_search", "--config", str(tiny_config()), "--engine", "ray")
    assert code == 2
    assert err.count("\n") == 1 and "Ray is not installed" in err and "pip install -e '.[ray]'" in err


def test_an_unreachable_cluster_is_one_line_within_the_timeout(tiny_config):
    """Issue 20: `--address 127.0.0.1:1` retried for minutes without a word; now one line, exit 2, at once (a
    closed port refuses) or after grid.ray.connect_timeout (a host that does not answer)."""
    import subprocess

    pytest.importorskip("ray")
    proc = subprocess.run([sys.executable, "-m", "cifar100_func", "grid_search", "--config", str(tiny_config()),
                           "--engine", "ray", "--address", "127.0.0.1:1", "--set", "grid.ray.connect_timeout=5"],
                          capture_output=True, text=True, timeout=180)  # a hang fails here instead of blocking CI
    err = proc.stderr
    assert proc.returncode == 2 and err.count("\n") == 1 and "127.0.0.1:1" in err and "reachable" in err, err
