"""BottleneckNet as pure functions over parameter pytrees (no ``nn.Module``).

``init(arch, generator) -> (params, state)`` and ``apply(params, state, x, *, train) -> (logits, new_state)``.
``params`` holds the trainable tensors, ``state`` the BatchNorm running statistics; both are nested dicts
and lists of tensors whose structure mirrors the reference ``nn.Module`` (see :mod:`.interop`). The
functions are written for one model and one batch; ``torch.func.vmap`` stacks them without change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

Params = dict[str, Any]
State = dict[str, Any]

STEM = 64
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class Arch:
    """What fixes the shapes: blocks per stage, stage-1 bottleneck width, number of classes; and two options of
    the network's training that are not shapes: the batch norms' momentum (train-mode forward passes:
    ``running = (1 - m) * running + m * batch``) and identity initialisation (each residual branch's last batch
    norm starts with weight 0, so each block starts as its shortcut)."""

    blocks: tuple[int, int, int] = (3, 3, 3)
    mid: int = 16
    num_classes: int = 100
    bn_momentum: float = BN_MOMENTUM
    identity_init: bool = False

    def stages(self) -> list[tuple[int, int, int, int]]:
        """(blocks, in, mid, out) per stage."""
        return [
            (self.blocks[0], STEM, self.mid, 64),
            (self.blocks[1], 64, 2 * self.mid, 128),
            (self.blocks[2], 128, 4 * self.mid, 256),
        ]


# ----------------------------------------------------------------------------------- initialisation
def _kaiming_uniform(shape: tuple[int, ...], fan_in: int, g: torch.Generator) -> torch.Tensor:
    """PyTorch's default conv/linear weight init: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=g) * 2.0 - 1.0) * bound


def _conv(cin: int, cout: int, k: int, g: torch.Generator) -> torch.Tensor:
    return _kaiming_uniform((cout, cin, k, k), cin * k * k, g)


def _bn(c: int) -> tuple[dict, dict]:
    params = {"weight": torch.ones(c), "bias": torch.zeros(c)}
    state = {
        "running_mean": torch.zeros(c),
        "running_var": torch.ones(c),
        "num_batches_tracked": torch.zeros((), dtype=torch.int64),
    }
    return params, state


def _block(cin: int, mid: int, cout: int, stride: int, g: torch.Generator) -> tuple[dict, dict]:
    p: dict[str, Any] = {}
    s: dict[str, Any] = {}
    for i, (a, b, k) in enumerate(((cin, mid, 1), (mid, mid, 3), (mid, cout, 1)), start=1):
        p[f"conv{i}"] = _conv(a, b, k, g)
        p[f"bn{i}"], s[f"bn{i}"] = _bn(b)
    if stride != 1 or cin != cout:
        bn_p, bn_s = _bn(cout)
        p["shortcut"] = {"conv": _conv(cin, cout, 1, g), "bn": bn_p}
        s["shortcut"] = {"bn": bn_s}
    return p, s


def init(arch: Arch, generator: torch.Generator) -> tuple[Params, State]:
    """Fresh parameters and BatchNorm state, drawn from ``generator`` (float32, on the CPU)."""
    g = generator
    stem_bn_p, stem_bn_s = _bn(STEM)
    params: Params = {"stem": {"conv": _conv(3, STEM, 3, g), "bn": stem_bn_p}}
    state: State = {"stem": {"bn": stem_bn_s}}
    for stage, (n, cin, mid, cout) in enumerate(arch.stages(), start=1):
        blocks_p, blocks_s = [], []
        for i in range(n):
            stride = 2 if (i == 0 and stage > 1) else 1
            bp, bs = _block(cin if i == 0 else cout, mid, cout, stride, g)
            blocks_p.append(bp)
            blocks_s.append(bs)
        params[f"layer{stage}"], state[f"layer{stage}"] = blocks_p, blocks_s
    if arch.identity_init:  # after every draw: the other tensors are those of the default init
        for stage in (1, 2, 3):
            for bp in params[f"layer{stage}"]:
                bp["bn3"]["weight"] = torch.zeros_like(bp["bn3"]["weight"])
    params["fc"] = {
        "weight": _kaiming_uniform((arch.num_classes, 256), 256, g),
        "bias": _kaiming_uniform((arch.num_classes,), 256, g),
    }
    return params, state


# ----------------------------------------------------------------------------------- forward
def batch_norm(x: torch.Tensor, p: dict, s: dict, train: bool,
               momentum: float = BN_MOMENTUM) -> tuple[torch.Tensor, dict]:
    """Functional BatchNorm2d: batch statistics in training; the running statistics are returned, never mutated.

    The fused kernel updates running statistics in place, so it is handed fresh copies that then become the
    new state (three to four times faster than spelling batch norm out in elementwise ops on the CPU).
    """
    if x.dtype != p["weight"].dtype:  # bf16 activations under autocast: normalise in the parameters' precision
        x = x.to(p["weight"].dtype)  # (mixed-dtype batch_norm has no vmap batching rule)
    if not train:
        return F.batch_norm(x, s["running_mean"], s["running_var"], p["weight"], p["bias"], False, 0.0, BN_EPS), s
    mean, var = s["running_mean"].clone(), s["running_var"].clone()
    y = F.batch_norm(x, mean, var, p["weight"], p["bias"], True, momentum, BN_EPS)
    return y, {"running_mean": mean, "running_var": var, "num_batches_tracked": s["num_batches_tracked"] + 1}


def _block_apply(p: dict, s: dict, x: torch.Tensor, stride: int, train: bool,
                 momentum: float = BN_MOMENTUM) -> tuple[torch.Tensor, dict]:
    new_s: dict[str, Any] = {}
    out = F.conv2d(x, p["conv1"])
    out, new_s["bn1"] = batch_norm(out, p["bn1"], s["bn1"], train, momentum)
    out = F.relu(out)
    out = F.conv2d(out, p["conv2"], stride=stride, padding=1)
    out, new_s["bn2"] = batch_norm(out, p["bn2"], s["bn2"], train, momentum)
    out = F.relu(out)
    out = F.conv2d(out, p["conv3"])
    out, new_s["bn3"] = batch_norm(out, p["bn3"], s["bn3"], train, momentum)
    if "shortcut" in p:
        short = F.conv2d(x, p["shortcut"]["conv"], stride=stride)
        short, bn_s = batch_norm(short, p["shortcut"]["bn"], s["shortcut"]["bn"], train, momentum)
        new_s["shortcut"] = {"bn": bn_s}
    else:
        short = x
    return F.relu(out + short), new_s


def apply(params: Params, state: State, x: torch.Tensor, *, train: bool,
          momentum: float = BN_MOMENTUM) -> tuple[torch.Tensor, State]:
    """Logits for a batch ``x`` of shape (N, 3, H, W), and the new BatchNorm state (``momentum``: the batch
    norms' in a train-mode pass, a Python float)."""
    new_state: State = {}
    out = F.conv2d(x, params["stem"]["conv"], padding=1)
    out, bn_s = batch_norm(out, params["stem"]["bn"], state["stem"]["bn"], train, momentum)
    new_state["stem"] = {"bn": bn_s}
    out = F.relu(out)
    for stage in (1, 2, 3):
        name = f"layer{stage}"
        new_state[name] = []
        for i, (bp, bs) in enumerate(zip(params[name], state[name])):
            stride = 2 if (i == 0 and stage > 1) else 1
            out, s = _block_apply(bp, bs, out, stride, train, momentum)
            new_state[name].append(s)
    out = out.mean(dim=(-2, -1))
    logits = F.linear(out, params["fc"]["weight"], params["fc"]["bias"])
    return logits, new_state


def count_params(params: Params) -> int:
    """Number of trainable scalars."""
    return sum(t.numel() for t in torch.utils._pytree.tree_leaves(params))
