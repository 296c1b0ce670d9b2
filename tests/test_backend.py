"""The device backend: precision auto, compile fallback with the eager settings, one place for device decisions."""

from __future__ import annotations

import pytest
import torch

from cifar100_func.runtime import backend as backend_mod
from cifar100_func.core.precision import PRECISIONS
from cifar100_func.runtime.from_config import data_spec
from cifar100_func.runtime.backend import Backend, compile_policy
from cifar100_func.config import load_config
from cifar100_func.data.dataset import load_dataset

from test_grid import fit_stack

DEV = torch.device("cpu")


def test_precision_auto_follows_native_bf16(monkeypatch):
    cfg = load_config(None, ["train.precision=auto"])
    monkeypatch.setattr(backend_mod, "native_bf16", lambda device: True)
    b = Backend.create(cfg, DEV)
    assert b.precision == PRECISIONS["bf16"] and "auto" in b.header() and "bf16" in b.header()
    assert (b.precision.param, b.precision.compute, b.precision.output) == (torch.float32, torch.bfloat16,
                                                                             torch.float32)
    monkeypatch.setattr(backend_mod, "native_bf16", lambda device: False)
    assert Backend.create(cfg, DEV).precision == PRECISIONS["fp32"]
    assert Backend.create(load_config(None, ["train.precision=fp64"]), DEV).precision.param == torch.float64


def test_compile_failure_continues_eagerly_with_eager_settings(tiny_config, monkeypatch):
    """torch.compile that fails at the first call: one warning line with the reason, then the eager stack with
    the per-model rules and channels-last batches (the compiled choice was vmap's rules on NCHW), and the same
    training as an eager run; the metrics say what ran."""

    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler\nsecond line")

        return call

    cfg = load_config(tiny_config({"train": {"precision": "fp64", "channels_last": True},
                                   "grid": {"executor": "vmap"},  # the vmap executor's eager settings
                                   "dataset": {"synthetic": {"train_size": 100 + 32 * 3}}}))
    data = load_dataset(data_spec(cfg))
    from cifar100_func.runtime.trainer import arch_from

    members = [(0.01, 0.0, 0), (0.02, 5e-4, 0)]
    eager = fit_stack(cfg, data, arch_from(cfg, 10), members, 1, shared_data=True, compile=False)
    monkeypatch.setattr(torch, "compile", broken_compile)
    lines = []
    runner = Backend.create(cfg, DEV).runner(2, 3, compile=True, log=lines.append)
    assert runner.compiled and not runner.per_model and not runner.channels_last
    fell = fit_stack(cfg, data, arch_from(cfg, 10), members, 1, shared_data=True, compile=True)
    assert fell.extra["compile_fallback"] == "RuntimeError: no C++ compiler second line"
    assert "eager after a compile failure" in fell.runner and "per_model" in fell.runner
    assert "channels_last True" in fell.runner
    assert all("eager after a compile failure" in m[-1]["runner"] for m in fell.metrics)
    torch.testing.assert_close(fell.step_losses, eager.step_losses, rtol=1e-12, atol=0)
    # the one warning line, through the loop's log
    runner = Backend.create(cfg, DEV).runner(2, 3, compile=True, log=lines.append)
    runner.wrap(lambda x: x + 1)(torch.ones(1))
    assert len(lines) == 1 and lines[0].startswith("warning: torch.compile failed (RuntimeError: no C++ compiler")
    assert "\n" not in lines[0] and "continuing eagerly" in lines[0]


@pytest.mark.parametrize("step, k, n_steps, train_compile, grid_compile, grid, force, expected", [
    ("train", None, 250, True, None, False, None, True),  # the standard path: train.compile, >= 200 steps
    ("train", None, 199, True, None, False, None, False),  # too short to pay for compiling
    ("train", None, 5000, False, None, False, None, False),
    ("train", 3, 250, True, None, False, None, True),  # a stack outside the grid (LR finder, ensemble) alike
    ("train", 3, 250, True, False, False, None, True),  # grid.compile is for grid stacks only
    ("train", 3, 250, True, False, True, None, False),  # a grid stack: grid.compile decides
    ("train", 3, 10, False, True, True, None, True),
    ("train", 3, 250, True, None, True, None, True),  # grid.compile null: train.compile and the step count
    ("train", 3, 10, True, None, True, None, False),
    ("eval", None, 5000, True, None, False, None, False),  # one model's evaluation: eager
    ("eval", None, 5000, True, None, False, True, False),  # ... even in a runner forced to compile
    ("eval", 3, 250, True, None, False, None, True),  # a stack's evaluation follows its training step
    ("eval", 3, 0, True, None, False, None, False),  # the evaluate command: no training steps
    ("train", None, 3, False, None, False, True, True),  # forced by a caller (tests, benchmarks)
])
def test_one_compile_policy(step, k, n_steps, train_compile, grid_compile, grid, force, expected):
    choice = compile_policy(step, k, n_steps, train_compile, grid_compile, grid, force)
    assert choice.compiled is expected and choice.why


def test_the_engine_and_the_header_say_what_was_chosen_and_why():
    cfg = load_config(None, ["train.compile=true", "grid.compile=false"])
    backend = Backend.create(cfg, DEV)
    assert "runs of >= 200 steps" in backend.header() and "grid stacks eager (grid.compile)" in backend.header()
    short = backend.runner(None, 50)
    assert not short.compiled and "50 steps < 200" in short.describe()
    grid = backend.runner(3, 5000, grid=True)
    assert not grid.compiled and "grid.compile false" in grid.describe()
    # evaluating a checkpoint (no training steps) is eager, one model or an ensemble
    assert not backend.runner(None, 0).compiled and not backend.runner(4, 0).compiled
