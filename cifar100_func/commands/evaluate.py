"""``cifar100-func evaluate --checkpoint artifacts/best.ckpt``: test-set metrics of one model or ensemble.

Reads a project checkpoint or a plain reference-layout ``state_dict`` (detected automatically); the architecture
comes from the checkpoint's shapes, never from the config, so the two cannot disagree. An ensemble checkpoint
(``train --ensemble N``, ``study.final_seeds``, a sweep's ``selection.ckpt`` or ``best_config.ckpt``) is the
weighted mean of its members' softmax; its members may differ in architecture. Everything is computed from the
models' log-probabilities (:mod:`..runtime.predict`), optionally averaged over test-time views (``--tta``; the plain
figures are reported beside): loss, accuracy, top-5 and per-class accuracy, fine (100x100) and coarse (20x20)
confusion matrices, each member's metrics, and calibration (NLL, ECE over 15 bins, Brier) before and after a
temperature fitted on the validation split, with its reliability diagram. Writes ``<stem>.eval_test.json``,
``<stem>.confusion_test(_coarse).png`` and ``<stem>.reliability_test.png`` beside the checkpoint.
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
from ..runtime.checkpoint import Members, load_members
from ..runtime.predict import log_probabilities, mean_log_probs, scores
from ..stats.calibration import calibration_and_reliability, fit_temperature
from ..core import trees
from ..config import Config
from ..data.dataset import Dataset, Split
from ..errors import CheckpointError, ModelNotFinite
from ..runtime.io import atomic_write_json
from ..runtime.from_config import pipeline
from ..report.plots import confusion_matrix_figure
from ..report.sweep_plots import reliability_diagram
from ..core.step import precision_of


def confusion(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)


def member_log_probs(members: Members, split: Split, cfg: Config, backend: Backend,
                     tta: str) -> dict[str, torch.Tensor]:
    """Every member's log-probabilities on ``split`` ({view: (K, N, C)},
    :func:`..runtime.predict.log_probabilities`), the members of one architecture evaluated as one stack."""
    groups: dict = {}
    for j, arch in enumerate(members.archs):
        groups.setdefault(arch, []).append(j)
    prec, pipe, dev = precision_of(backend.precision), pipeline(cfg, backend.device), backend.device
    parts: dict[str, list] = {}
    order: list[int] = []
    for idx in groups.values():
        models = [members.models[j] for j in idx]
        params, state = ((trees.stack([p for p, _ in models]), trees.stack([s for _, s in models])) if len(idx) > 1
                         else models[0])
        preds = log_probabilities(trees.to(prec.params(params), dev), trees.to(prec.params(state), dev), split,
                                  pipe, backend, members=len(idx),
                                  batch_size=cfg.train.eval_batch_size, tta=tta)
        for view, p in preds.items():
            parts.setdefault(view, []).append(p)
        order += idx
    inverse = torch.argsort(torch.tensor(order))
    return {view: torch.cat(p)[inverse] for view, p in parts.items()}


def _test_scores(log_probs: torch.Tensor, y: torch.Tensor, weights: list[float]) -> dict[str, float]:
    s = scores(log_probs, y, weights)
    return {"test_loss": s["loss"], "test_accuracy": s["acc"], "test_top5_accuracy": s["top5_acc"]}


def evaluate_test(members: Members, data: Dataset, cfg: Config, backend: Backend, tta: str = "none") -> dict[str, Any]:
    """Test metrics of one model or an ensemble (the weighted mean of its members' softmax) with ``tta``'s views
    (the plain figures beside them), confusion matrices (fine and coarse), each member's metrics, and calibration:
    NLL, ECE, Brier before and after a temperature fitted on the validation split. ``data`` on the backend's
    device."""
    y = data.test.y.cpu()
    test = member_log_probs(members, data.test, cfg, backend, tta)
    log_probs, w = test[tta], members.weights
    mean = mean_log_probs(log_probs, w)
    pred = mean.argmax(dim=-1).numpy()
    true = y.numpy()
    k = data.num_classes
    cm = confusion(true, pred, k)
    f2c = data.fine_to_coarse.cpu().numpy()
    cm_coarse = confusion(f2c[true], f2c[pred], len(data.coarse_names))
    per_class = cm.diagonal() / np.maximum(cm.sum(axis=1), 1)
    out: dict[str, Any] = {
        **_test_scores(log_probs, y, w),
        "test_coarse_accuracy": float(cm_coarse.trace() / max(cm_coarse.sum(), 1)),
        "num_test_images": int(len(true)),
        "tta": tta,
        "per_class_accuracy": {name: float(a) for name, a in zip(data.class_names, per_class)},
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_coarse": cm_coarse.tolist(),
    }
    if tta != "none":
        out["plain"] = _test_scores(test["none"], y, w)
    if len(members.models) > 1:
        out["members"] = [{"name": name, "weight": wj, **_test_scores(log_probs[j : j + 1], y, [1.0])}
                          for j, (name, wj) in enumerate(zip(members.names, w))]
    t = None
    if len(data.val):
        val = member_log_probs(members, data.val, cfg, backend, tta)[tta]
        t = fit_temperature(mean_log_probs(val, w), data.val.y.cpu())
    out.update(calibration_and_reliability(mean, y, t))
    out["calibration"]["temperature_fitted_on"] = "validation" if t is not None else None
    return out


def outputs(checkpoint: str | Path) -> dict[str, Path]:
    """What evaluating ``checkpoint`` writes, beside it and named by it (``best.ckpt`` -> ``best.eval_test.json``,
    ``best.confusion_test.png``, ``best.confusion_test_coarse.png``), so that evaluations of two checkpoints in one
    folder keep their own files."""
    path = Path(checkpoint)
    return {"metrics": path.with_name(f"{path.stem}.eval_test.json"),
            "fine": path.with_name(f"{path.stem}.confusion_test.png"),
            "coarse": path.with_name(f"{path.stem}.confusion_test_coarse.png"),
            "reliability": path.with_name(f"{path.stem}.reliability_test.png")}


@dataclass(frozen=True)
class EvalResult:
    """The test metrics and where they and the confusion matrices are (:func:`outputs`)."""

    metrics: dict
    files: dict[str, Path]

    @property
    def figures(self) -> dict[str, Path]:
        return {k: self.files[k] for k in ("fine", "coarse", "reliability")}


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


def _kind(members: Members) -> str:
    n = len(members.models)
    if n == 1:
        return "project checkpoint" if members.meta else "reference state_dict"
    equal = len(set(members.weights)) == 1
    return f"ensemble of {n} ({'mean' if equal else 'weighted mean'} of softmax)"


def execute(cfg: Config, rt: cli.Runtime, checkpoint: str | Path | None = None, tta: str | None = None) -> EvalResult:
    """Evaluate ``checkpoint`` (default ``<artifacts_dir>/best.ckpt``) on the test split of ``cfg``'s data with
    ``tta``'s views (default ``evaluation.tta``); each member's architecture comes from its checkpoint's shapes.
    Writes beside the checkpoint."""
    path = Path(checkpoint or Path(cfg.paths.artifacts_dir) / "best.ckpt")
    tta = tta or cfg.evaluation.tta
    run = cli.setup(cfg, rt, None)
    dev, data, backend = run.device, run.data, run.backend
    members = load_members(path)
    _check_finite(path, members.models)
    for arch in members.archs:
        if arch.num_classes != data.num_classes:
            raise CheckpointError(f"{path}: the model predicts {arch.num_classes} classes, the data set has "
                                  f"{data.num_classes}")
    result = evaluate_test(members, data.to(dev), cfg, backend, tta)
    n, arch = len(members.models), members.archs[0]
    result.update({
        "checkpoint": str(path),
        "checkpoint_kind": _kind(members),
        "ensemble_size": n,
        "checkpoint_epoch": members.meta.get("epoch"),
        "architecture": {"blocks": list(arch.blocks), "bottleneck_mid": arch.mid, "num_classes": arch.num_classes},
        "architectures": [{"blocks": list(a.blocks), "bottleneck_mid": a.mid} for a in members.archs],
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
    rel = result["reliability"]
    reliability_diagram(rel["before"], rel.get("after"), files["reliability"], f"test split{tag}")
    atomic_write_json(files["metrics"], result)
    worst = sorted(result["per_class_accuracy"].items(), key=lambda kv: kv[1])[:5]
    views = "" if tta == "none" else f", test-time views {tta}"
    print(f"{'[SYNTHETIC] ' if data.synthetic else ''}test ({result['num_test_images']} images, "
          f"{result['checkpoint_kind']}, blocks {list(arch.blocks)}, mid {arch.mid}{views}): "
          f"loss {result['test_loss']:.4f}, accuracy {result['test_accuracy']:.4f}, "
          f"top-5 {result['test_top5_accuracy']:.4f}, coarse accuracy {result['test_coarse_accuracy']:.4f}")
    if "plain" in result:
        p = result["plain"]
        print(f"  plain (no views): loss {p['test_loss']:.4f}, accuracy {p['test_accuracy']:.4f}, top-5 "
              f"{p['test_top5_accuracy']:.4f}")
    for m in result.get("members", []):
        print(f"  {m['name']} (weight {m['weight']:.3g}): loss {m['test_loss']:.4f}, accuracy "
              f"{m['test_accuracy']:.4f}, top-5 {m['test_top5_accuracy']:.4f}")
    c = result["calibration"]
    print(f"calibration: NLL {c['nll']:.4f}, ECE {c['ece']:.4f}, Brier {c['brier']:.4f}"
          + (f"; with temperature {c['temperature']:.3f} (fitted on validation): NLL {c['scaled']['nll']:.4f}, "
             f"ECE {c['scaled']['ece']:.4f}, Brier {c['scaled']['brier']:.4f}" if "scaled" in c else ""))
    print("hardest classes: " + ", ".join(f"{name} {a:.2f}" for name, a in worst))
    print(f"wrote {files['metrics']}, {files['fine']}, {files['coarse']}, {files['reliability']}")
    return EvalResult(result, files)


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.base_parser("cifar100-func evaluate", "Evaluate a checkpoint on the CIFAR-100 test split.")
    p.add_argument("--checkpoint", default=None, help="checkpoint or state_dict (default: <artifacts_dir>/best.ckpt)")
    p.add_argument("--tta", choices=["none", "flip", "flip_translate"], default=None,
                   help="test-time views (default: evaluation.tta); the plain figures are reported beside")
    args = p.parse_args(argv)
    execute(cli.load(args), cli.runtime(args), args.checkpoint, args.tta)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
