"""Everything that depends on the device, decided in one place.

:func:`resolve_device` picks the device; :func:`setup_process` sets the process-wide switches once (the glibc
allocator setting on CPUs, TF32 and ``cudnn.benchmark`` on CUDA); :class:`Backend` turns the config and the device
into the choices a run needs: precision (``auto``: bf16 where the device computes it natively), compile or not and
in which mode, the batching formulation of a stack (:mod:`.batching`) and the memory format of the batches.
:class:`Engine` runs step functions that way, and when compiling fails it prints one line with the reason and
continues eagerly with the settings that suit an eager step.

CUDA paths are written from the documentation, not measured: no GPU was available to this project.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_map

from .allocator import reuse_freed_memory
from .batching import per_model_rules
from ..config import Config
from ..errors import ConfigError, UserError

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
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                 "_is_amx_tile_supported"))


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


def worth_compiling(enabled: bool, n_steps: int) -> bool:
    """Whether a run of ``n_steps`` steps with ``compile`` set to ``enabled`` should be compiled: short runs
    (the LR finder, a reduced grid's stacks, the overfit check) spend more time compiling than it saves."""
    return enabled and n_steps >= MIN_STEPS_TO_COMPILE


@dataclass(frozen=True)
class Backend:
    """The device-dependent choices of a config on a device."""

    device: torch.device
    precision: str  # resolved: fp32 | bf16 | fp64
    precision_note: str
    channels_last: bool
    compile: bool
    compile_mode: str  # resolved: default | reduce-overhead | max-autotune
    batching: str  # auto | per_model | grouped
    notes: tuple[str, ...] = ()

    @staticmethod
    def create(cfg: Config, device: torch.device) -> "Backend":
        tc = cfg.train
        if tc.precision == "auto":
            precision = "bf16" if native_bf16(device) else "fp32"
            note = f"auto: {'native bf16 on this device' if precision == 'bf16' else 'no native bf16 here'}"
        else:
            precision, note = tc.precision, "as set"
        mode = tc.compile_mode
        if mode == "auto":
            mode = "reduce-overhead" if device.type == "cuda" else "default"
        if device.type != "cpu" and cfg.grid.batching == "per_model":
            raise ConfigError("grid.batching: per_model is for CPUs (its rules cover native_batch_norm, not the "
                              "cudnn_batch_norm CUDA dispatches to); use auto or grouped on CUDA")
        notes = tuple(setup_process(device, tc.allow_tf32))
        return Backend(device, precision, note, tc.channels_last, tc.compile, mode, cfg.grid.batching, notes)

    def header(self) -> str:
        """One line for a run's first lines: what this backend does on this device."""
        compiled = f"compile {self.compile_mode}" if self.compile else "eager"
        return (f"device {self.device}, precision {self.precision} ({self.precision_note}), {compiled}, "
                f"channels_last {self.channels_last}" + "".join(f", {n}" for n in self.notes))

    def engine(self, k: int | None, n_steps: int, compile: bool | None = None,
               log: Callable[[str], None] = print) -> "Engine":
        """An engine for ``k`` stacked models (``None``: one model, no vmap) over ``n_steps`` steps.
        ``compile``: None follows ``train.compile`` for runs of at least 200 steps; True/False force it."""
        want = worth_compiling(self.compile, n_steps) if compile is None else compile
        return Engine(self, k, want, log)


@dataclass
class Engine:
    """Runs a run's step functions as its backend says: compiled or eager, stacked rules, batch memory format."""

    backend: Backend
    k: int | None  # None: one unstacked model (the standard path)
    compiled: bool
    log: Callable[[str], None] = print
    fallback: str | None = None  # why compiling failed, when it did

    def __post_init__(self) -> None:
        if self.compiled:
            torch._dynamo.reset()  # fresh caches: each run compiles new closures (the recompile limit is 8)

    @property
    def per_model(self) -> bool:
        """Whether a stack runs with per-model batching rules: ``auto`` picks them on a CPU when eager."""
        if self.k is None or self.backend.device.type != "cpu":
            return False
        form = self.backend.batching
        return form == "per_model" or (form == "auto" and not self.compiled)

    @property
    def channels_last(self) -> bool:
        """Batches channels-last: one model (oneDNN's fastest layout on a CPU) or a stack with per-model rules."""
        return self.backend.channels_last and (self.k is None or self.per_model)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the memory format of this engine; (K, N, C, H, W) per-model batches channels-last per model."""
        if not self.channels_last:
            return x
        if x.ndim == 5:
            return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        return x.contiguous(memory_format=torch.channels_last)

    def params(self, tree: Any) -> Any:
        """One model's conv weights channels-last when its batches are (no layout change inside the step)."""
        if self.k is not None or not self.channels_last:
            return tree
        return tree_map(lambda t: t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t, tree)

    def wrap(self, fn: Callable, compile: bool = True) -> Callable:
        """``fn`` as this engine runs it; ``compile=False`` keeps it eager even in a compiled engine."""
        fast = torch.compile(fn, mode=self.backend.compile_mode) if self.compiled and compile else None
        cudagraphs = self.backend.compile_mode == "reduce-overhead" and self.backend.device.type == "cuda"

        def call(*args):
            if fast is not None and self.compiled:
                try:
                    if cudagraphs:
                        torch.compiler.cudagraph_mark_step_begin()
                    with per_model_rules(self.per_model, functional=True):
                        return fast(*args)
                except Exception as exc:  # noqa: BLE001 - no compiler, an unsupported operator, a backend bug...
                    self._fall_back(exc)
            with per_model_rules(self.per_model, functional=False):
                return fn(*args)

        return call

    def _form(self) -> str:
        if self.k is None:
            return "grouped"  # unstacked: no vmap, no rules
        return "per_model" if self.per_model else "grouped"

    def _fall_back(self, exc: Exception) -> None:
        message = " ".join(str(exc).split())[:300]
        self.fallback = f"{type(exc).__name__}: {message}"
        self.compiled = False
        self.log(f"warning: torch.compile failed ({self.fallback}); continuing eagerly (batching "
                 f"{self._form() if self.k is not None else 'none'}, channels_last {self.channels_last})")

    def describe(self) -> str:
        what = "compiled" if self.compiled else ("eager after a compile failure" if self.fallback else "eager")
        stack = "one model" if self.k is None else f"{self.k} stacked ({self._form()} batching)"
        return f"{stack}, {what}, channels_last {self.channels_last}"
