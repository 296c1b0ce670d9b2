"""``cifar100-func evaluate --checkpoint artifacts/best.ckpt``: test-set metrics of one model or ensemble.

Reads a project checkpoint or a plain reference-layout ``state_dict`` (detected automatically); the architecture
comes from the checkpoint's shapes, never from the config, so the two cannot disagree. Prints and writes
``<checkpoint dir>/eval_test.json`` with loss, accuracy, top-5 accuracy and per-class accuracy, plus fine (100x100)
and coarse (20x20) confusion matrices. An ensemble checkpoint (``train --ensemble N``, ``study.final_seeds``) is
evaluated as one stack: the ensemble's metrics (mean of the members' softmax) and each member's.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import cli
from ..runtime.backend import Backend
from ..runtime.checkpoint import load_members
from ..core import trees
from ..config import Config
from ..data.dataset import Dataset
from ..errors import CheckpointError, ModelNotFinite
from ..runtime.io import atomic_write_json
from ..runtime.from_config import pipeline
from ..runtime.loop import evaluate, make_eval
from ..report.plots import confusion_matrix_figure
from ..core.step import precision_of


def confusion(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)


def evaluate_test(params, state, data: Dataset, cfg: Config, backend: Backend, members: int = 0) -> dict[str, Any]:
    """Test metrics plus confusion matrices (fine and coarse) for one model already on the backend's device, or,
    with ``members`` > 0, for the ensemble of a stack of that many (mean of their softmax), each member's metrics
    under ``"members"``."""
    runner = backend.runner(members or None, 0)
    pipe = pipeline(cfg, backend.device)
    res = evaluate(make_eval(backend, runner, stacked=members > 0), runner.params(params), state, data.test, pipe,
                   cfg.train.eval_batch_size, runner, keep_predictions=True, ensemble=members > 0)
    true = data.test.y.cpu().numpy()
    ens = res.get("ensemble")
    pred = (ens["predictions"] if ens else res["predictions"][0]).numpy()
    top = ens or {k: res[k][0] for k in ("loss", "acc", "top5_acc")}
    k = data.num_classes
    cm = confusion(true, pred, k)
    f2c = data.fine_to_coarse.cpu().numpy()
    cm_coarse = confusion(f2c[true], f2c[pred], len(data.coarse_names))
    per_class = cm.diagonal() / np.maximum(cm.sum(axis=1), 1)
    out = {
        "test_loss": top["loss"],
        "test_accuracy": top["acc"],
        "test_top5_accuracy": top["top5_acc"],
        "test_coarse_accuracy": float(cm_coarse.trace() / max(cm_coarse.sum(), 1)),
        "num_test_images": int(len(true)),
        "per_class_accuracy": {name: float(a) for name, a in zip(data.class_names, per_class)},
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_coarse": cm_coarse.tolist(),
    }
    if ens:
        out["members"] = [{"test_loss": res["loss"][j], "test_accuracy": res["acc"][j],
                           "test_top5_accuracy": res["top5_acc"][j]} for j in range(members)]
    return out


def outputs(checkpoint: str | Path) -> dict[str, Path]:
    """What evaluating ``checkpoint`` writes, beside it and named by it (``best.ckpt`` -> ``best.eval_test.json``,
    ``best.confusion_test.png``, ``best.confusion_test_coarse.png``), so that evaluations of two checkpoints in one
    folder keep their own files."""
    path = Path(checkpoint)
    return {"metrics": path.with_name(f"{path.stem}.eval_test.json"),
            "fine": path.with_name(f"{path.stem}.confusion_test.png"),
            "coarse": path.with_name(f"{path.stem}.confusion_test_coarse.png")}


@dataclass(frozen=True)
class EvalResult:
    """The test metrics and where they and the confusion matrices are (:func:`outputs`)."""

    metrics: dict
    files: dict[str, Path]

    @property
    def figures(self) -> dict[str, Path]:
        return {k: self.files[k] for k in ("fine", "coarse")}


def load(checkpoint: Path) -> EvalResult:
    """The result an earlier evaluation of ``checkpoint`` left (raises when it is missing or damaged)."""
    files = outputs(checkpoint)
    metrics = json.loads(files["metrics"].read_text())
    if not isinstance(metrics, dict) or "test_accuracy" not in metrics:
        raise ValueError(f"{files['metrics']}: no test accuracy")
    return EvalResult(metrics, files)


def _check_finite(path: Path, models: list) -> None:
    """A model with NaN or inf weights or statistics gives meaningless numbers: stop with one line instead."""
    for j, (params, state) in enumerate(models):
        for name, t in list(_named(params)) + list(_named(state)):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                who = f"member {j + 1}, " if len(models) > 1 else ""
                raise ModelNotFinite(f"{path}: {who}{name} holds NaN or inf values; this model cannot be evaluated")


def _named(tree):
    from torch.utils._pytree import keystr, tree_flatten_with_path

    for keys, leaf in tree_flatten_with_path(tree)[0]:
        yield keystr(keys), leaf


def execute(cfg: Config, rt: cli.Runtime, checkpoint: str | Path | None = None) -> EvalResult:
    """Evaluate ``checkpoint`` (default ``<artifacts_dir>/best.ckpt``) on the test split of ``cfg``'s data; the
    architecture comes from the checkpoint's shapes. Writes beside the checkpoint."""
    path = Path(checkpoint or Path(cfg.paths.artifacts_dir) / "best.ckpt")
    run = cli.setup(cfg, rt, None)
    dev, data, backend = run.device, run.data, run.backend
    models, meta, arch = load_members(path)
    _check_finite(path, models)
    if arch.num_classes != data.num_classes:
        raise CheckpointError(f"{path}: the model predicts {arch.num_classes} classes, the data set has "
                              f"{data.num_classes}")
    n = len(models) if len(models) > 1 else 0
    params, state = (trees.stack([p for p, _ in models]), trees.stack([s for _, s in models])) if n else models[0]
    prec = precision_of(backend.precision)
    params, state = prec.params(params), prec.params(state)
    result = evaluate_test(trees.to(params, dev), trees.to(state, dev), data.to(dev), cfg, backend, members=n)
    kind = "project checkpoint" if meta else "reference state_dict"
    result.update({
        "checkpoint": str(path),
        "checkpoint_kind": f"ensemble of {n} (mean of softmax)" if n else kind,
        "ensemble_size": max(n, 1),
        "checkpoint_epoch": meta.get("epoch"),
        "architecture": {"blocks": list(arch.blocks), "bottleneck_mid": arch.mid, "num_classes": arch.num_classes},
        "dataset": "synthetic" if data.synthetic else "cifar100",
    })
    if not all(math.isfinite(result[k]) for k in ("test_loss", "test_accuracy")):
        raise ModelNotFinite(f"{path}: the model's outputs are not finite (test loss {result['test_loss']}); "
                             "this model cannot be evaluated")
    files = outputs(path)
    tag = " [SYNTHETIC DATA]" if data.synthetic else ""
    confusion_matrix_figure(np.array(result["confusion_matrix"]), data.class_names, files["fine"],
                            f"test confusion matrix, {data.num_classes} classes{tag}")
    confusion_matrix_figure(np.array(result["confusion_matrix_coarse"]), data.coarse_names,
                            files["coarse"], f"test confusion matrix, coarse classes{tag}")
    atomic_write_json(files["metrics"], result)
    worst = sorted(result["per_class_accuracy"].items(), key=lambda kv: kv[1])[:5]
    print(f"{'[SYNTHETIC] ' if data.synthetic else ''}test ({result['num_test_images']} images, "
          f"{result['checkpoint_kind']}, blocks {list(arch.blocks)}, mid {arch.mid}): "
          f"loss {result['test_loss']:.4f}, accuracy {result['test_accuracy']:.4f}, "
          f"top-5 {result['test_top5_accuracy']:.4f}, coarse accuracy {result['test_coarse_accuracy']:.4f}")
    for j, m in enumerate(result.get("members", [])):
        print(f"  member {j + 1}: loss {m['test_loss']:.4f}, accuracy "
              f"{m['test_accuracy']:.4f}, top-5 {m['test_top5_accuracy']:.4f}")
    print("hardest classes: " + ", ".join(f"{name} {a:.2f}" for name, a in worst))
    print(f"wrote {files['metrics']}, {files['fine']}, {files['coarse']}")
    return EvalResult(result, files)


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.base_parser("cifar100-func evaluate", "Evaluate a checkpoint on the CIFAR-100 test split.")
    p.add_argument("--checkpoint", default=None, help="checkpoint or state_dict (default: <artifacts_dir>/best.ckpt)")
    args = p.parse_args(argv)
    execute(cli.load(args), cli.runtime(args), args.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
