"""How many models a stack may hold: ``grid.max_stack: auto`` sized from the device's free memory.

A stack's memory grows with its K models (weights, optimiser state, activations kept for the backward pass, the
evaluation batch's activations); what does not grow (the data set on the device, kernels' workspaces) is paid once.
On CUDA, :func:`bytes_per_model` measures the peak memory of one training step and one evaluation batch of a stack
of 1 and of 2 and takes the difference; :func:`max_stack` divides the free memory, less a reserve for what the
measurement does not see (allocator fragmentation, CUDA graph pools, a compiled step's buffers), by it. On a CPU
there is no limit: memory is the host's, and the CPU executor trains a stack's members in turn (as does the
sequential executor anywhere: a stack then holds its members' trees, not their activations).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.func import vmap

from ..config import Config
from ..core import model
from ..core.optim import Optimizer, adam
from ..core.step import guarded, make_eval_step, make_train_step
from . import recipe
from .backend import Backend
from .loop import Plan, init_trees

RESERVE = 0.2  # of the free memory, kept back for what one measured step does not show


def max_stack(free_bytes: int, bytes_per_model: int, reserve: float = RESERVE) -> int:
    """The models a stack may hold when ``free_bytes`` are free and each model costs ``bytes_per_model``, keeping
    the fraction ``reserve`` of the free memory back; at least 1 (one model is what the sequential path runs)."""
    if bytes_per_model <= 0:
        raise ValueError(f"bytes_per_model must be positive, got {bytes_per_model}")
    if not 0.0 <= reserve < 1.0:
        raise ValueError(f"reserve must be in [0, 1), got {reserve}")
    return max(1, int(max(free_bytes, 0) * (1.0 - reserve)) // bytes_per_model)


def free_bytes(device: torch.device) -> int:
    """Memory this process can still allocate on a CUDA device: the driver's free memory plus what PyTorch's
    caching allocator holds but does not use."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def _peak(arch: model.Arch, k: int, batch_size: int, eval_batch_size: int, backend: Backend,
          optimizer: Optimizer) -> int:
    """Peak bytes allocated by a stack of ``k`` (vmapped, eager) over one training step and one evaluation batch,
    above what was allocated before."""
    dev = backend.device
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    runner = backend.runner(k, 1, compile=False, log=lambda s: None, executor="vmap")
    plan = Plan(arch, [0] * k, [optimizer] * k, 1, stacked=True)
    P, S, O = init_trees(plan, backend.precision, dev)
    step = make_train_step(optimizer, precision=backend.precision, device_type=dev.type)
    train = runner.wrap(guarded(vmap(step, in_dims=(0, 0, 0, None, None))))
    evaluate = runner.wrap(vmap(make_eval_step(precision=backend.precision, device_type=dev.type),
                                in_dims=(0, 0, None, None)), step="eval")
    x = torch.randn(batch_size, 3, 32, 32, device=dev, dtype=backend.precision.param)
    y = torch.randint(0, arch.num_classes, (batch_size,), device=dev)
    P, S, O, *_ = train(P, S, O, runner.batch(x), y, torch.ones(k, dtype=torch.bool, device=dev))
    del x, y
    xe = torch.randn(eval_batch_size, 3, 32, 32, device=dev, dtype=backend.precision.param)
    ye = torch.randint(0, arch.num_classes, (eval_batch_size,), device=dev)
    with torch.no_grad():
        evaluate(P, S, runner.batch(xe), ye)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - base
    del P, S, O, xe, ye
    torch.cuda.empty_cache()
    return int(peak)


def bytes_per_model(arch: model.Arch, batch_size: int, backend: Backend, *, eval_batch_size: int | None = None,
                    optimizer: Optimizer | None = None) -> int | None:
    """What one more model adds to a stack's peak memory on the backend's device (CUDA: measured, a stack of 2
    minus a stack of 1); None on a CPU (no limit). ``optimizer``: the members' (default Adam, whose two moments
    make it the larger state)."""
    if backend.device.type != "cuda":
        return None
    opt = optimizer or adam(1e-3)
    eval_bs = eval_batch_size or batch_size
    one, two = (_peak(arch, k, batch_size, eval_bs, backend, opt) for k in (1, 2))
    return max(two - one, 1)


def resolve_max_stack(cfg: Config, backend: Backend, arch: model.Arch,
                      log: Callable[[str], Any] | None = None) -> int | None:
    """``grid.max_stack`` as a number of models for stacks of ``arch``, or None (no limit): the config's own number
    or null as they are; ``auto``: what the device's free memory holds (None on a CPU)."""
    setting = cfg.grid.max_stack
    if setting != "auto":
        return setting
    if backend.stack_executor[0] == "sequential":  # members train in turn: a stack holds only their trees
        return None
    tc = cfg.train
    per_model = bytes_per_model(arch, tc.batch_size, backend, eval_batch_size=tc.eval_batch_size,
                                optimizer=recipe.optimizer(tc, recipe.hyper(cfg), 1))
    if per_model is None:
        return None
    free = free_bytes(backend.device)
    k = max_stack(free, per_model)
    if log is not None:
        log(f"grid.max_stack auto: blocks {list(arch.blocks)} mid {arch.mid}: {per_model / 2**20:.1f} MiB per model, "
            f"{free / 2**30:.2f} GiB free, {RESERVE:.0%} kept back -> at most {k} models per stack")
    return k
