"""Per-model batching rules: vmap runs stacked convolutions and batch norms as one dense kernel per model.

``torch.func.vmap`` turns a convolution whose weights carry a model axis into one *grouped* convolution
(the K models folded into the channels), and a batch norm with per-model affine parameters into separate
normalise / multiply / add kernels. On a CPU, oneDNN's grouped kernels take up to 1.8x the time of K dense
convolutions of the same shapes (``benchmarks/bench_conv.py``), and the unfused batch norm several times the
fused kernel. Inside :func:`per_model_rules`, ``aten::convolution``, ``aten::native_batch_norm``, their backward
operators and ReLU's backward (``aten::threshold_backward``, slower over a K-times larger tensor than in K calls)
get a batching rule that calls the standard path's own kernel once per model, on channels-last inputs, and stacks
the results so that every model stays channels-last (the next layer reads it without a copy). The model is
unchanged (``F.conv2d`` and ``F.batch_norm`` written for one model); each model's result comes from its own
inputs through the very kernel a sequential run calls, so models never mix and a stack reproduces sequential
runs bit for bit in the convolutions' weight gradients.

Formulations: ``per_model`` (these rules), ``grouped`` (vmap's built-in rules), ``auto`` (per_model for an eager
step on a CPU; grouped for a compiled step, and on CUDA, where one large kernel should beat K small launches and
the batch norm dispatches to ``cudnn_batch_norm``, which these rules do not cover). :mod:`.backend` decides.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from einops import rearrange
from torch import Tensor

from ..torch_private import aten_override

def _slices(t: Tensor | None, dim: int | None, k: int, activation: bool) -> Sequence[Tensor | None]:
    """The k per-model slices of ``t`` along ``dim`` (``t`` itself k times when the models share it);
    4-D activations channels-last."""
    if t is None:
        return [None] * k
    if dim is None:
        t = t.contiguous(memory_format=torch.channels_last) if activation and t.ndim == 4 else t
        return [t] * k
    parts = t.unbind(dim)
    if activation and t.ndim == 5:
        parts = tuple(part.contiguous(memory_format=torch.channels_last) for part in parts)
    return parts


def _stacked_like(first: Tensor, k: int, activation: bool) -> Tensor:
    """An empty (K, *first.shape) buffer; for a channels-last activation every model's slice is channels-last."""
    if activation and first.ndim == 4 and first.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = first.shape
        return rearrange(first.new_empty((k, n, h, w, c)), "k n h w c -> k n c h w")
    return first.new_empty((k, *first.shape))


def _stack(outs: Sequence[Tensor], activation: bool) -> Tensor:
    """Per-model results stacked on a new dim 0 without mutation (traceable); channels-last stays so per model."""
    if activation and outs[0].ndim == 4 and outs[0].is_contiguous(memory_format=torch.channels_last):
        nhwc = torch.stack([rearrange(o, "n c h w -> n h w c") for o in outs])
        return rearrange(nhwc, "k n h w c -> k n c h w")
    return torch.stack(list(outs))


def _as_tuple(out: Tensor | Sequence[Tensor | None]) -> tuple[Tensor | None, ...]:
    return (out,) if isinstance(out, Tensor) else tuple(out)


def _copy_into(slots: Sequence[Tensor | None], outs: Sequence[Tensor | None]) -> None:
    """One model's results into its slices of the stacked outputs (results the op did not produce are skipped)."""
    for slot, out in zip(slots, outs):
        if slot is not None:
            slot.copy_(out)


def _per_model_rule(op, n_tensors: int, activations: tuple[int, ...], op_out: Callable | None = None,
                    functional: bool = False):
    """A batching rule calling ``op`` once per model on the first ``n_tensors`` arguments' slices.

    ``activations``: which tensor arguments are (N, C, H, W) activations, made channels-last (the first result,
    an activation or its gradient, stays so); a tensor that is not batched is shared by every model. Each
    model's results are copied into the stacked outputs as soon as they are computed, while still in cache;
    where the kernel has an ``out=`` form (``op_out(args, outs)``), models after the first write straight into
    their slices and nothing is copied. One model: its results are the stack, as they are. ``functional``: for a
    step that ``torch.compile`` traces, which must not write into tensors it did not get: the per-model results are
    stacked with ``torch.stack`` (inductor plans that copy itself).
    """

    def rule(info, in_dims, *args):
        k = info.batch_size
        per_arg = [_slices(t, d, k, j in activations) for j, (t, d) in enumerate(zip(args[:n_tensors], in_dims))]
        rest = args[n_tensors:]
        model_args = [[slices[i] for slices in per_arg] for i in range(k)]
        first = op(*model_args[0], *rest)
        single = isinstance(first, Tensor)
        firsts = _as_tuple(first)
        if k == 1:  # one model: its results are the stack
            stacked = [None if o is None else o.unsqueeze(0) for o in firsts]
        elif functional:
            results = [firsts] + [_as_tuple(op(*a, *rest)) for a in model_args[1:]]
            stacked = [None if o is None else _stack([r[j] for r in results], activation=j == 0)
                       for j, o in enumerate(firsts)]
        else:
            stacked = [None if o is None else _stacked_like(o, k, activation=j == 0) for j, o in enumerate(firsts)]
            views = [None if buf is None else buf.unbind(0) for buf in stacked]
            _copy_into([None if v is None else v[0] for v in views], firsts)
            for i in range(1, k):
                slots = [None if v is None else v[i] for v in views]
                if op_out is not None:
                    op_out(*model_args[i], *rest, outs=slots)
                else:
                    _copy_into(slots, _as_tuple(op(*model_args[i], *rest)))
        if single:
            return stacked[0], 0
        return tuple(stacked), tuple(None if r is None else 0 for r in stacked)

    return rule


def _batch_norm_out(*args, outs: list[Tensor]) -> None:
    torch.ops.aten.native_batch_norm.out(*args, out=outs[0], save_mean=outs[1], save_invstd=outs[2])


def _threshold_backward_out(grad, x, threshold, *, outs: list[Tensor]) -> None:
    torch.ops.aten.threshold_backward.grad_input(grad, x, threshold, grad_input=outs[0])


def _rules(functional: bool) -> dict[str, Callable]:
    """The per-model rules by operator; ``functional`` for a step being compiled (see :func:`_per_model_rule`)."""
    aten = torch.ops.aten
    batch_norm = _per_model_rule(aten.native_batch_norm, 5, (0,), _batch_norm_out, functional)

    def batch_norm_rule(info, in_dims, x, weight, bias, running_mean, running_var, training, *rest):
        """Per-model batch norm; stacked running statistics are updated in place, model by model (as the kernel
        does for one model), so statistics shared by the models cannot be updated."""
        if training and running_mean is not None and (in_dims[3] is None or in_dims[4] is None):
            raise RuntimeError("stacked batch norm: running statistics must be stacked (one per model) to be "
                               "updated")
        return batch_norm(info, in_dims, x, weight, bias, running_mean, running_var, training, *rest)

    return {
        "aten::convolution": _per_model_rule(aten.convolution, 3, (0,), None, functional),
        "aten::convolution_backward": _per_model_rule(aten.convolution_backward, 3, (0, 1), None, functional),
        "aten::native_batch_norm": batch_norm_rule,
        "aten::native_batch_norm_backward": _per_model_rule(aten.native_batch_norm_backward, 7, (0, 1), None,
                                                            functional),
        # ReLU's backward: over a K-times larger stacked activation the kernel ran 2.3x slower than K per-model calls
        "aten::threshold_backward": _per_model_rule(aten.threshold_backward, 2, (), _threshold_backward_out,
                                                    functional),
    }


_RULES = {False: _rules(False), True: _rules(True)}


@contextlib.contextmanager
def per_model_rules(enabled: bool = True, functional: bool = False) -> Iterator[None]:
    """Within the block (when ``enabled``), vmapped convolutions and batch norms run per model (see the module).

    The rules are registered with the dispatcher on entry and removed on exit (the built-in rules return).
    ``torch.compile`` bakes the rule in force at tracing time into the compiled graph; ``functional`` selects the
    rules' functional form, which such a graph needs (no writes into preallocated outputs). Which device and mode
    use them is :mod:`.backend`'s decision.
    """
    if not enabled:
        yield
        return
    with aten_override() as lib:
        with _quiet_override():
            for name, rule in _RULES[functional].items():
                torch.library.register_vmap(name, rule, lib=lib)
        yield


@contextlib.contextmanager
def _quiet_override() -> Iterator[None]:
    """Registering over a built-in batching rule warns once per kernel; here that is the point."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
        yield
