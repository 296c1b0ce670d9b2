"""Everything that depends on the device, decided in one place.

:func:`resolve_device` picks the device; :func:`setup_process` sets the process-wide switches once (the glibc
allocator setting on CPUs, TF32 and ``cudnn.benchmark`` on CUDA); :class:`Backend` turns the config and the device
into the choices a run needs: precision (a :class:`~cifar100_func.core.precision.Precision`; ``auto``: bf16 where
the device computes it natively), compile or not (:func:`compile_policy`, the one place that decides) and in which
mode, how a stack executes (:func:`resolve_executor`: vmap over the stack, or the one-model step over each member in
turn; :mod:`.executor`), the batching formulation of a vmapped stack (:mod:`.batching`) and the memory format of
the batches. :class:`Runner` runs step functions that way, and when compiling fails it prints one line with the
reason and continues eagerly with the settings that suit an eager step.

CUDA paths are written from the documentation, not measured: no GPU was available to this project.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from einops import rearrange
from torch.utils._pytree import tree_map

from .allocator import reuse_freed_memory
from .batching import per_model_rules
from ..torch_private import cpu_native_bf16
from ..config import Config
from ..core.precision import PRECISIONS, Precision
from ..errors import ConfigError, UserError, plain_text

MIN_STEPS_TO_COMPILE = 200  # below this, compiling (a minute or more per step function on 2 cores) costs more


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else the CPU), ``cpu`` or ``cuda`` (a clear error without a GPU)."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is available on this machine (use --device cpu or auto)")
        return torch.device("cuda")
    return torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)  # not the slow emulation of older GPUs
    return cpu_native_bf16()


def setup_process(device: torch.device, allow_tf32: bool = False) -> list[str]:
    """Process-wide settings for ``device``; returns what was set, for the run's header."""
    notes = []
    if device.type == "cpu":
        notes.append("allocator: freed memory reused" if reuse_freed_memory() else "allocator: platform default")
    else:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
        # fixed shapes, so autotuned convolutions pay; not where a test asks for deterministic algorithms
        torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()
        notes.append(f"TF32 {'on' if allow_tf32 else 'off'}, cudnn.benchmark {torch.backends.cudnn.benchmark}")
    return notes


def resolve_executor(setting: str, device: torch.device) -> tuple[str, str]:
    """(executor, why) for ``grid.executor`` on ``device``: ``vmap`` (one vmapped step over the stack) or
    ``sequential`` (the compiled one-model step over each member in turn); ``auto``: vmap on CUDA, where one fused
    kernel over the stack beats K small launches, sequential on a CPU, where vmap's stacked kernels are slower per
    model than the standard path's (``benchmarks/bench_grid.py`` measures both)."""
    if setting in ("vmap", "sequential"):
        return setting, f"grid.executor {setting}"
    if setting != "auto":
        raise ConfigError(f"grid.executor: expected auto, vmap or sequential, got {setting!r}")
    if device.type == "cuda":
        return "vmap", "grid.executor auto: vmap on CUDA"
    return "sequential", f"grid.executor auto: sequential on a {device.type.upper()}"


@dataclass(frozen=True)
class CompileChoice:
    """Whether a step function is compiled, and why (for the run's header and its metrics)."""

    compiled: bool
    why: str


def compile_policy(step: Literal["train", "eval"], k: int | None, n_steps: int, train_compile: bool,
                   grid_compile: bool | None = None, grid: bool = False, force: bool | None = None) -> CompileChoice:
    """The one rule for compiling a step function.

    ``step``: the training or the evaluation step; ``k``: the models of a stack (``None``: one model, no vmap);
    ``n_steps``: the training steps the run will take; ``train_compile``/``grid_compile``: the config's
    ``train.compile`` and ``grid.compile``; ``grid``: a stack of the grid search (``grid.compile`` true/false
    decides it); ``force``: a caller's explicit choice (tests, benchmarks). One model's evaluation is always eager
    (compiling it costs more than it saves); a vmapped stack's evaluation follows its training step. A stack under
    the sequential executor runs one model's steps, so it asks with ``k=None``. Otherwise compile when
    ``train.compile`` is true and the run takes at least ``MIN_STEPS_TO_COMPILE`` steps: short runs (the LR finder,
    a reduced grid's stacks, the overfit check) spend more time compiling than it saves.
    """
    if step == "eval" and k is None:
        return CompileChoice(False, "one model's evaluation is eager")
    if force is not None:
        return CompileChoice(force, "forced by the caller")
    if grid and grid_compile is not None:
        return CompileChoice(grid_compile, f"grid.compile {str(grid_compile).lower()}")
    source = "grid.compile null, train.compile" if grid else "train.compile"
    if not train_compile:
        return CompileChoice(False, f"{source} false")
    if n_steps < MIN_STEPS_TO_COMPILE:
        return CompileChoice(False, f"{source} true, but {n_steps} steps < {MIN_STEPS_TO_COMPILE}")
    return CompileChoice(True, f"{source} true, {n_steps} steps")


@dataclass(frozen=True)
class Backend:
    """The device-dependent choices of a config on a device."""

    device: torch.device
    precision: Precision  # resolved: fp32 | bf16 | fp64
    precision_note: str
    channels_last: bool
    compile: bool  # train.compile
    compile_mode: str  # resolved: default | reduce-overhead | max-autotune
    batching: str  # auto | per_model | grouped
    grid_compile: bool | None = None  # grid.compile (None: follow train.compile)
    notes: tuple[str, ...] = ()
    executor: str = "auto"  # grid.executor: auto | vmap | sequential (resolved per device by resolve_executor)

    @staticmethod
    def create(cfg: Config, device: torch.device) -> "Backend":
        tc = cfg.train
        if tc.precision == "auto":
            name = "bf16" if native_bf16(device) else "fp32"
            note = f"auto: {'native bf16 on this device' if name == 'bf16' else 'no native bf16 here'}"
        else:
            name, note = tc.precision, "as set"
        mode = tc.compile_mode
        if mode == "auto":
            mode = "reduce-overhead" if device.type == "cuda" else "default"
        if device.type != "cpu" and cfg.grid.batching == "per_model":
            raise ConfigError("grid.batching: per_model is for CPUs (its rules cover native_batch_norm, not the "
                              "cudnn_batch_norm CUDA dispatches to); use auto or grouped on CUDA")
        notes = tuple(setup_process(device, tc.allow_tf32))
        resolve_executor(cfg.grid.executor, device)  # a bad value fails here, before any training
        return Backend(device, PRECISIONS[name], note, tc.channels_last, tc.compile, mode, cfg.grid.batching,
                       cfg.grid.compile, notes, cfg.grid.executor)

    @property
    def stack_executor(self) -> tuple[str, str]:
        """(executor, why) of this backend's stacks: :func:`resolve_executor`."""
        return resolve_executor(self.executor, self.device)

    def header(self) -> str:
        """One line for a run's first lines: what this backend does on this device, and its compile rule."""
        if self.compile:
            compiled = f"compile {self.compile_mode} for runs of >= {MIN_STEPS_TO_COMPILE} steps (train.compile)"
        else:
            compiled = "eager (train.compile false)"
        if self.grid_compile is not None:
            compiled += f", grid stacks {'compiled' if self.grid_compile else 'eager'} (grid.compile)"
        executor, why = self.stack_executor
        return (f"device {self.device}, precision {self.precision.name} ({self.precision_note}), {compiled}, "
                f"channels_last {self.channels_last}, stacks: {executor} executor ({why})"
                + "".join(f", {n}" for n in self.notes))

    def decide(self, step: Literal["train", "eval"], k: int | None, n_steps: int, grid: bool = False,
               force: bool | None = None) -> CompileChoice:
        """:func:`compile_policy` for this backend's config."""
        return compile_policy(step, k, n_steps, self.compile, self.grid_compile, grid, force)

    def runner(self, k: int | None, n_steps: int, compile: bool | None = None,
               log: Callable[[str], None] = print, *, grid: bool = False, executor: str | None = None) -> "Runner":
        """A runner for ``k`` stacked models (``None``: one model, no vmap) over ``n_steps`` steps; ``grid``: a
        stack of the grid search. ``compile``: None asks :func:`compile_policy`; True/False force it.
        ``executor``: vmap or sequential for a caller that builds its own step (default: :attr:`stack_executor`).
        A sequential stack's steps are one model's, so the policy decides them as the standard path's, counting
        every member's calls (``k * n_steps``: one compiled graph serves them all)."""
        if k is None:
            how = None
        elif executor is None:
            how = self.stack_executor
        else:
            how = resolve_executor(executor, self.device)
        per_step = None if how is not None and how[0] == "sequential" else k
        calls = n_steps * k if per_step is None and k is not None else n_steps
        return Runner(self, k, self.decide("train", per_step, calls, grid, compile), log,
                      evaluation=self.decide("eval", per_step, n_steps, grid, compile),
                      executor=None if how is None else how[0], executor_why=None if how is None else how[1])


@dataclass
class Runner:
    """Runs a run's step functions as its backend says: compiled or eager, stacked rules, batch memory format."""

    backend: Backend
    k: int | None  # None: one unstacked model (the standard path)
    choice: CompileChoice  # the training step's
    log: Callable[[str], None] = print
    evaluation: CompileChoice | None = None  # the evaluation step's (None: as the training step)
    executor: str | None = None  # a stack's: vmap | sequential (None: one model)
    executor_why: str | None = None
    fallback: str | None = None  # why compiling failed, when it did
    compiled: bool = field(init=False)  # the choice, until compiling fails

    def __post_init__(self) -> None:
        self.compiled = self.choice.compiled
        if self.compiled:
            torch.compiler.reset()  # fresh caches: each run compiles new closures (the recompile limit is 8)

    @property
    def sequential(self) -> bool:
        """Whether a stack runs the one-model step over each member in turn (:mod:`.executor`)."""
        return self.k is not None and self.executor == "sequential"

    @property
    def per_model(self) -> bool:
        """Whether a vmapped stack runs with per-model batching rules: ``auto`` picks them on a CPU when eager."""
        if self.k is None or self.sequential or self.backend.device.type != "cpu":
            return False
        form = self.backend.batching
        return form == "per_model" or (form == "auto" and not self.compiled)

    @property
    def channels_last(self) -> bool:
        """Batches channels-last: one model's steps (oneDNN's fastest layout on a CPU: the standard path, and each
        member under the sequential executor) or a vmapped stack with per-model rules."""
        return self.backend.channels_last and (self.k is None or self.sequential or self.per_model)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the memory format of this runner; (K, N, C, H, W) per-model batches channels-last per model."""
        if not self.channels_last:
            return x
        if x.ndim == 5:
            return rearrange(rearrange(x, "k n c h w -> k n h w c").contiguous(), "k n h w c -> k n c h w")
        return x.contiguous(memory_format=torch.channels_last)

    def params(self, tree: Any) -> Any:
        """One model's conv weights channels-last when its batches are (no layout change inside the step); under
        the sequential executor a stack's, each member's slice channels-last (``t[j]`` is the member's weight as
        the one-model step takes it)."""
        if not self.channels_last or (self.k is not None and not self.sequential):
            return tree
        if self.k is None:
            return tree_map(lambda t: t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t, tree)
        return tree_map(lambda t: self.batch(t) if t.ndim == 5 else t, tree)

    def member(self, tree: Any, j: int) -> Any:
        """Member ``j`` of a stacked tree as the sequential executor keeps it: its own contiguous tensors, conv
        weights (and their optimiser moments) channels-last when the batches are, as on the standard path."""
        cl = self.channels_last
        return tree_map(lambda t: t[j].contiguous(memory_format=torch.channels_last) if cl and t.ndim == 5
                        else t[j].clone(), tree)

    def wrap(self, fn: Callable, step: Literal["train", "eval"] = "train") -> Callable:
        """``fn``, the training or the evaluation step, as this runner runs it (compiled as its choice says)."""
        choice = self.choice if step == "train" or self.evaluation is None else self.evaluation
        fast = torch.compile(fn, mode=self.backend.compile_mode) if self.compiled and choice.compiled else None
        cudagraphs = self.backend.compile_mode == "reduce-overhead" and self.backend.device.type == "cuda"
        # a CUDA graph's outputs live in its memory pool until its next replay, and every call starts a new
        # generation: whatever outlives a call (the next step's trees, a member's trees while the graph serves the
        # next member, an evaluation's running sums) must be a copy

        def call(*args):
            if fast is not None and self.compiled:
                try:
                    if cudagraphs:
                        torch.compiler.cudagraph_mark_step_begin()
                    with per_model_rules(self.per_model, functional=True):
                        out = fast(*args)
                    return tree_map(torch.clone, out) if cudagraphs else out
                except Exception as exc:  # noqa: BLE001 - no compiler, an unsupported operator, a backend bug...
                    self._fall_back(exc)
            with per_model_rules(self.per_model, functional=False):
                return fn(*args)

        return call

    def _form(self) -> str:
        if self.k is None or self.sequential:
            return "none"  # no vmap, no rules
        return "per_model" if self.per_model else "grouped"

    def _fall_back(self, exc: Exception) -> None:
        message = plain_text(exc)[:300]
        self.fallback = f"{type(exc).__name__}: {message}"
        self.compiled = False
        self.log(f"warning: torch.compile failed ({self.fallback}); continuing eagerly (batching "
                 f"{self._form()}, channels_last {self.channels_last})")

    def describe(self) -> str:
        what = "compiled" if self.compiled else ("eager after a compile failure" if self.fallback else "eager")
        if self.k is None:
            stack = "one model"
        elif self.sequential:
            stack = f"{self.k} stacked, sequential executor ({self.executor_why}): the one-model step per member"
        else:
            stack = f"{self.k} stacked, vmap executor ({self.executor_why}; {self._form()} batching)"
        return f"{stack}, {what} ({self.choice.why}), channels_last {self.channels_last}"
