"""The device backend: precision auto, compile fallback with the eager settings, one place for device decisions."""

from __future__ import annotations

import torch

from cifar100_func.runtime import backend as backend_mod
from cifar100_func.runtime.backend import Backend
from cifar100_func.config import load_config
from cifar100_func.data.dataset import load_dataset

from test_grid import fit_stack

DEV = torch.device("cpu")


def test_precision_auto_follows_native_bf16(monkeypatch):
    cfg = load_config(None, ["train.precision=auto"])
    monkeypatch.setattr(backend_mod, "native_bf16", lambda device: True)
    b = Backend.create(cfg, DEV)
    assert b.precision == "bf16" and "auto" in b.header() and "bf16" in b.header()
    monkeypatch.setattr(backend_mod, "native_bf16", lambda device: False)
    assert Backend.create(cfg, DEV).precision == "fp32"
    assert Backend.create(load_config(None, ["train.precision=fp64"]), DEV).precision == "fp64"


def test_compile_failure_continues_eagerly_with_eager_settings(tiny_config, monkeypatch):
    """torch.compile that fails at the first call: one warning line with the reason, then the eager stack with
    the per-model rules and channels-last batches (the compiled choice was vmap's rules on NCHW), and the same
    training as an eager run; the metrics say what ran."""

    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler\nsecond line")

        return call

    cfg = load_config(tiny_config({"train": {"precision": "fp64", "channels_last": True},
                                   "dataset": {"synthetic": {"train_size": 100 + 32 * 3}}}))
    data = load_dataset(cfg.dataset)
    from cifar100_func.runtime.trainer import arch_from

    members = [(0.01, 0.0, 0), (0.02, 5e-4, 0)]
    eager = fit_stack(cfg, data, arch_from(cfg, 10), members, 1, shared_data=True, compile=False)
    monkeypatch.setattr(torch, "compile", broken_compile)
    lines = []
    engine = Backend.create(cfg, DEV).engine(2, 3, compile=True, log=lines.append)
    assert engine.compiled and not engine.per_model and not engine.channels_last
    fell = fit_stack(cfg, data, arch_from(cfg, 10), members, 1, shared_data=True, compile=True)
    assert fell.extra["compile_fallback"] == "RuntimeError: no C++ compiler second line"
    assert "eager after a compile failure" in fell.engine and "per_model" in fell.engine
    assert "channels_last True" in fell.engine
    assert all("eager after a compile failure" in m[-1]["engine"] for m in fell.metrics)
    torch.testing.assert_close(fell.step_losses, eager.step_losses, rtol=1e-12, atol=0)
    # the one warning line, through the loop's log
    engine = Backend.create(cfg, DEV).engine(2, 3, compile=True, log=lines.append)
    engine.wrap(lambda x: x + 1)(torch.ones(1))
    assert len(lines) == 1 and lines[0].startswith("warning: torch.compile failed (RuntimeError: no C++ compiler")
    assert "\n" not in lines[0] and "continuing eagerly" in lines[0]
