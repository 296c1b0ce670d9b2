"""``grid.max_stack: auto``: the rule on numbers, no limit on a CPU, and sizes from a (faked) GPU's free memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cifar100_func.commands import grid_search
from cifar100_func.config import load_config
from cifar100_func.core import model
from cifar100_func.data.dataset import load_dataset
from cifar100_func.runtime import stack_size
from cifar100_func.runtime.backend import Backend
from cifar100_func.runtime.from_config import data_spec

MIB = 2**20


@pytest.mark.parametrize("free, per_model, reserve, expected", [
    (1000 * MIB, 100 * MIB, 0.0, 10),    # exactly ten
    (1000 * MIB, 100 * MIB, 0.2, 8),     # 800 MiB usable
    (1099 * MIB, 100 * MIB, 0.0, 10),    # rounds down: an 11th would not fit
    (50 * MIB, 100 * MIB, 0.2, 1),       # never below one model
    (0, 100 * MIB, 0.2, 1),
    (80 * 2**30, 37 * MIB, 0.2, 1771),   # an 80 GB GPU: int(0.8 * 80 GiB) // 37 MiB, by hand
])
def test_max_stack_rule(free, per_model, reserve, expected):
    assert stack_size.max_stack(free, per_model, reserve) == expected


def test_max_stack_rejects_nonsense():
    with pytest.raises(ValueError):
        stack_size.max_stack(1000, 0)
    with pytest.raises(ValueError):
        stack_size.max_stack(1000, 10, reserve=1.0)


class _Stop(Exception):
    pass


def _grid_stacks(cfg, backend, data, monkeypatch) -> list[list[str]]:
    """The members of every stack ``run_grid`` would train (GridRun replaced by a recorder that stops there)."""
    seen = []

    class Recorder:
        def __init__(self, cfg, data, backend, runs, *args, **kwargs):
            seen.extend([m.name for m in s.members] for s in runs)

        def run(self):
            raise _Stop

    monkeypatch.setattr(grid_search, "GridRun", Recorder)
    with pytest.raises(_Stop):
        grid_search.run_grid(cfg, data, backend, grid_search.expand(cfg), None, progress=False, log=lambda s: None)
    return seen


GRID = {"hparams": {"lr": [0.001, 0.002, 0.003, 0.004, 0.005], "weight_decay": [0.0],
                    "blocks": [[1, 1, 1], [1, 1, 2]], "bottleneck_mid": [4]}}


def test_auto_on_a_cpu_gives_the_stacks_of_null(tiny_config, monkeypatch):
    cfg_null = load_config(tiny_config(GRID))
    cfg_auto = load_config(tiny_config(GRID), ["grid.max_stack=auto"])
    data = load_dataset(data_spec(cfg_null))
    dev = torch.device("cpu")
    backend = Backend.create(cfg_auto, dev)
    arch = model.Arch((1, 1, 1), 4, data.num_classes)
    assert stack_size.bytes_per_model(arch, 32, backend) is None
    assert stack_size.resolve_max_stack(cfg_auto, backend, arch) is None
    null = _grid_stacks(cfg_null, Backend.create(cfg_null, dev), data, monkeypatch)
    auto = _grid_stacks(cfg_auto, backend, data, monkeypatch)
    assert auto == null and [len(s) for s in null] == [5, 5]


def test_auto_on_a_faked_gpu_cuts_stacks_by_free_memory(tiny_config, monkeypatch):
    """A GPU with 1 GiB free and (per architecture) 100 / 300 MiB per model: 8 and 2 models per stack after the
    20% reserve; the numbers come from the faked measurement, the cut from the grid's own grouping."""
    cfg = load_config(tiny_config(GRID), ["grid.max_stack=auto"])
    data = load_dataset(data_spec(cfg))
    gpu = dataclasses.replace(Backend.create(cfg, torch.device("cpu")), device=torch.device("cuda"))
    asked = []

    def fake_bytes(arch, batch_size, backend, **kw):
        asked.append((arch.blocks, batch_size, kw["eval_batch_size"]))
        return (100 if arch.blocks == (1, 1, 1) else 300) * MIB

    monkeypatch.setattr(stack_size, "bytes_per_model", fake_bytes)
    monkeypatch.setattr(stack_size, "free_bytes", lambda device: 2**30)
    assert stack_size.resolve_max_stack(cfg, gpu, model.Arch((1, 1, 1), 4, 10)) == 8
    asked.clear()
    got = _grid_stacks(cfg, gpu, data, monkeypatch)
    assert asked == [((1, 1, 1), 32, 64), ((1, 1, 2), 32, 64)]  # measured per architecture, with the config's batches
    assert [len(s) for s in got] == [5, 2, 2, 1]
    names = [p.name for p in grid_search.expand(cfg)]
    assert [n for s in got for n in s] == names  # every configuration once, in the grid's order
    # a number or null is taken as it is, without measuring
    fixed = load_config(tiny_config(GRID), ["grid.max_stack=3"])
    assert stack_size.resolve_max_stack(fixed, gpu, model.Arch((1, 1, 1), 4, 10)) == 3
    # the sequential executor trains the members in turn: no limit, nothing measured
    seq = load_config(tiny_config(GRID), ["grid.max_stack=auto", "grid.executor=sequential"])
    seq_gpu = dataclasses.replace(Backend.create(seq, torch.device("cpu")), device=torch.device("cuda"))
    asked.clear()
    assert stack_size.resolve_max_stack(seq, seq_gpu, model.Arch((1, 1, 1), 4, 10)) is None and not asked


def test_the_measurement_runs_a_stack_step_and_an_evaluation(tiny_config, monkeypatch):
    """No GPU here: the CUDA memory counters are faked (peak = a stack's trees, counted by hand) so that the
    measuring code itself (a vmapped training step and evaluation of a stack of 1 and of 2) runs on the CPU."""
    cfg = load_config(tiny_config())
    backend = Backend.create(cfg, torch.device("cpu"))
    arch = model.Arch((1, 1, 1), 4, 10)
    calls = []
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _n=name, **k: calls.append(_n))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 1000)
    real_init = stack_size.init_trees
    sizes = []

    def counting_init(plan, precision, device):
        out = real_init(plan, precision, device)
        sizes.append(sum(t.numel() * t.element_size() for t in torch.utils._pytree.tree_leaves(out)))
        return out

    monkeypatch.setattr(stack_size, "init_trees", counting_init)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 1000 + sizes[-1])
    one, two = (stack_size._peak(arch, k, 16, 32, backend, stack_size.adam(1e-3)) for k in (1, 2))
    assert two > one > 0 and two - one == one  # the trees of one more model
    assert calls.count("reset_peak_memory_stats") == 2
