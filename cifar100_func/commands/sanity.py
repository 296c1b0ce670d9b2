"""``cifar100-func sanity``: SPEC experiment 1, the checks to run before any training.

Split sizes and per-class counts, the shape of a train batch against the model's input, the initial loss on a
real batch against ln(num_classes), majority-class and uniform-random baselines on val and test, the
parameter count, FLOPs per image, and ``augmented_samples.png``. Writes ``<runs_dir>/sanity/sanity.json``.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ..core import augment as aug
from . import cli
from ..config import Config
from ..core import model
from ..data.dataset import Split
from ..runtime.io import atomic_write_json
from ..data.loader import train_batches
from ..runtime.from_config import augmentation, pipeline
from ..core.seeding import generator
from ..runtime.trainer import arch_from


def majority_baseline(train_y: torch.Tensor, eval_y: torch.Tensor, num_classes: int) -> float:
    """Accuracy on ``eval_y`` of always predicting the most frequent training class (lowest index on ties)."""
    majority = int(torch.bincount(train_y, minlength=num_classes).argmax())
    return float((eval_y == majority).double().mean())


def uniform_baseline(eval_y: torch.Tensor, num_classes: int, seed: int = 0) -> dict[str, float]:
    """Expected accuracy of uniform random guessing (1/k) and one seeded draw of it."""
    guess = torch.randint(0, num_classes, eval_y.shape, generator=generator(seed, "uniform-baseline"))
    return {"expected": 1.0 / num_classes, "measured": float((guess == eval_y.cpu()).double().mean())}


def class_counts(split: Split, num_classes: int) -> dict:
    counts = torch.bincount(split.y, minlength=num_classes)
    return {"min": int(counts.min()), "max": int(counts.max()), "balanced": bool(counts.max() - counts.min() <= 1
            or counts.min() / max(int(counts.max()), 1) >= 0.8), "counts": counts.tolist()}


def flops_per_image(arch: model.Arch, batch: int = 2) -> dict[str, float]:
    """Forward and forward+backward FLOPs per image, counted by ``torch.utils.flop_counter`` (train mode)."""
    params, state = model.init(arch, torch.Generator().manual_seed(0))
    x = torch.randn(batch, 3, 32, 32)
    with FlopCounterMode(display=False) as fwd:
        model.apply(params, state, x, train=True)
    leaves = [t.requires_grad_() for t in torch.utils._pytree.tree_leaves(params)]
    with FlopCounterMode(display=False) as both:
        logits, _ = model.apply(params, state, x, train=True)
        torch.autograd.grad(logits.sum(), leaves)
    return {"forward": fwd.get_total_flops() / batch, "forward_backward": both.get_total_flops() / batch}


@dataclass(frozen=True)
class SanityResult:
    """The checks' numbers (``sanity.json``) and the folder with the figure of augmented samples."""

    summary: dict
    out_dir: Path

    @property
    def samples_figure(self) -> Path:
        return self.out_dir / "augmented_samples.png"


def out_dir(cfg: Config) -> Path:
    return Path(cfg.paths.runs_dir) / "sanity"


def load(cfg: Config) -> SanityResult:
    """The result an earlier run left (raises when it is missing or damaged)."""
    d = out_dir(cfg)
    return SanityResult(json.loads((d / "sanity.json").read_text()), d)


@cli.exclusive(lambda cfg, *args, **kwargs: [out_dir(cfg)])
def execute(cfg: Config, rt: cli.Runtime) -> SanityResult:
    """Run the checks of ``cfg``; writes ``<runs_dir>/sanity/``."""
    run = cli.setup(cfg, rt, out_dir(cfg))
    device, data, out = run.device, run.data, out_dir(cfg)
    k = data.num_classes
    arch = arch_from(cfg, k)
    pipe = pipeline(cfg, "cpu")
    x, y = next(train_batches(data.train, pipe, cfg.train.batch_size, cfg.train.seed, 0))
    params, state = model.init(arch, generator(cfg.train.seed, "init"))
    with torch.no_grad():
        logits, _ = model.apply(params, state, x, train=True)
        init_loss = float(F.cross_entropy(logits, y))
    flops = flops_per_image(arch)
    result = {
        "dataset": "synthetic" if data.synthetic else "cifar100",
        "device": str(device),
        "split_sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "class_counts": {name: class_counts(s, k) for name, s in
                         (("train", data.train), ("val", data.val), ("test", data.test))},
        "train_batch_shape": list(x.shape),
        "model_input_shape": [cfg.train.batch_size, 3, 32, 32],
        "batch_shape_ok": list(x.shape[1:]) == [3, 32, 32],
        "initial_loss": init_loss,
        "ln_num_classes": math.log(k),
        "baselines": {
            split: {"majority_class": majority_baseline(data.train.y, s.y, k), "uniform_random": uniform_baseline(s.y, k)}
            for split, s in (("val", data.val), ("test", data.test))
        },
        "params": model.count_params(params),
        "flops_per_image": flops,
    }
    atomic_write_json(out / "sanity.json", result)
    _samples_figure(cfg, data, out)
    cc = result["class_counts"]
    print(("[SYNTHETIC DATA] " if data.synthetic else "") +
          f"splits: train {len(data.train)}, val {len(data.val)}, test {len(data.test)}; per-class counts "
          + ", ".join(f"{n} {c['min']}-{c['max']} ({'balanced' if c['balanced'] else 'UNBALANCED'})" for n, c in cc.items()))
    print(f"train batch {tuple(x.shape)} vs model input (N, 3, 32, 32): {'ok' if result['batch_shape_ok'] else 'MISMATCH'}")
    print(f"initial loss {init_loss:.4f} vs ln({k}) = {math.log(k):.4f}")
    for split, b in result["baselines"].items():
        print(f"{split}: majority-class accuracy {b['majority_class']:.4f}, uniform random "
              f"{b['uniform_random']['expected']:.4f} expected ({b['uniform_random']['measured']:.4f} drawn)")
    print(f"model blocks {list(arch.blocks)}, mid {arch.mid}: {result['params']:,} parameters, "
          f"{flops['forward'] / 1e9:.3f} GFLOP forward and {flops['forward_backward'] / 1e9:.3f} GFLOP forward+backward per image")
    print(f"wrote {out / 'sanity.json'} and {out / 'augmented_samples.png'}")
    return SanityResult(result, out)


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.base_parser("cifar100-func sanity", "Sanity checks before training (SPEC experiment 1).")
    args = p.parse_args(argv)
    execute(cli.load(args), cli.runtime(args))
    return 0


def _samples_figure(cfg, data, out_dir: Path) -> None:
    from ..report.plots import augmented_samples_figure

    n = min(cfg.sanity.num_samples, len(data.train))
    x = aug.to_float(data.train.x[:n])
    settings = augmentation(cfg)
    draws = [aug.augment(x, aug.sample_params(n, settings, generator(cfg.train.seed, "samples", r)), settings)
             for r in range(3)]
    to_img = lambda t: t.permute(0, 2, 3, 1).clamp(0, 1).numpy()  # noqa: E731
    names = [data.class_names[int(c)] for c in data.train.y[:n]]
    augmented_samples_figure(to_img(x), np.stack([to_img(d) for d in draws]), names,
                             out_dir / "augmented_samples.png", data.synthetic)


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
