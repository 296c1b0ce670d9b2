"""Shared fixtures: tiny synthetic configs, the real data root when present, and an in-process CLI runner."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for benchmarks.reference, the independent nn.Module oracle

# dataset.download is "auto" by default: no test may reach the network, so a missing data set meets a port that
# refuses at once (tests of the downloader serve their own archive)
os.environ["CIFAR100_URL"] = "http://127.0.0.1:9/cifar-100-python.tar.gz"

if torch.cuda.is_available():  # tests that compare two runs bit for bit need deterministic CUDA kernels
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def _real_root() -> Path | None:
    for cand in (os.environ.get("CIFAR100_ROOT"), REPO.parent / "shared"):
        if cand and all((Path(cand) / "cifar-100-python" / f).is_file() for f in ("train", "test", "meta")):
            return Path(cand)
    return None


REAL_ROOT = _real_root()


@pytest.fixture
def real_root() -> Path:
    if REAL_ROOT is None:
        pytest.skip("real CIFAR-100 not found (set CIFAR100_ROOT or put it at ../shared/cifar-100-python)")
    return REAL_ROOT


TINY = {
    "dataset": {"name": "synthetic", "num_classes": 10, "val_size": 100,
                "synthetic": {"train_size": 420, "test_size": 100}},
    "model": {"blocks": [1, 1, 1], "bottleneck_mid": 4},
    "train": {"epochs": 2, "batch_size": 32, "eval_batch_size": 64, "channels_last": False, "compile": False,
              "optimizer": {"lr": 0.003}},
    "hparams": {"lr": [0.001, 0.003], "weight_decay": [0.0], "blocks": [[1, 1, 1]], "bottleneck_mid": [4],
                "seeds": 1},
    "grid": {"epochs": 1},
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture
def tiny_config(tmp_path: Path):
    """Write a tiny synthetic config (paths inside tmp_path) and return its path; extra sections merge in."""

    def make(extra: dict | None = None, name: str = "tiny.yaml") -> Path:
        data = _merge(TINY, {"paths": {"runs_dir": str(tmp_path / "runs"),
                                       "artifacts_dir": str(tmp_path / "artifacts")}})
        data = _merge(data, extra or {})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    return make


@pytest.fixture
def run_cli(capsys):
    """Run ``cifar100_func.<command>.main`` in-process; returns (exit code, stdout, stderr)."""
    import importlib

    from cifar100_func.commands.cli import run_command

    def run(command: str, *argv: str) -> tuple[int, str, str]:
        module = importlib.import_module(f"cifar100_func.commands.{command}")
        code = run_command(module.main, list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
