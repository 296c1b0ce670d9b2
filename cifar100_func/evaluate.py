"""``python -m cifar100_func.evaluate --checkpoint artifacts/best.ckpt``: test-set metrics of one model.

Reads a project checkpoint or a plain reference-layout ``state_dict`` (detected automatically; the
architecture comes from the config). Prints and writes ``<checkpoint dir>/eval_test.json`` with loss,
accuracy, top-5 accuracy and per-class accuracy, plus fine (100x100) and coarse (20x20) confusion matrices.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import cli
from .checkpoint import load_weights, tree_to
from .data import Dataset, load_dataset
from .io import atomic_write_json
from .loader import Pipeline
from .plots import confusion_matrix_figure
from .step import make_eval_step
from .trainer import arch_from, evaluate_split, to_memory_format


def confusion(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)


def evaluate_test(params, state, data: Dataset, cfg, device: torch.device) -> dict[str, Any]:
    """Test metrics plus confusion matrices (fine and coarse) for a model already on ``device``."""
    pipe = Pipeline.create(cfg.preprocess, cfg.augment, device, cfg.train.channels_last)
    eval_step = make_eval_step(precision=cfg.train.precision, device_type=device.type)
    res = evaluate_split(params, state, data.test, pipe, cfg.train.eval_batch_size, eval_step, keep_predictions=True)
    true = data.test.y.cpu().numpy()
    pred = res.pop("predictions").cpu().numpy()
    k = data.num_classes
    cm = confusion(true, pred, k)
    f2c = data.fine_to_coarse.cpu().numpy()
    cm_coarse = confusion(f2c[true], f2c[pred], len(data.coarse_names))
    per_class = cm.diagonal() / np.maximum(cm.sum(axis=1), 1)
    return {
        "test_loss": res["loss"],
        "test_accuracy": res["acc"],
        "test_top5_accuracy": res["top5_acc"],
        "test_coarse_accuracy": float(cm_coarse.trace() / max(cm_coarse.sum(), 1)),
        "num_test_images": int(len(true)),
        "per_class_accuracy": {name: float(a) for name, a in zip(data.class_names, per_class)},
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_coarse": cm_coarse.tolist(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.base_parser("cifar100_func.evaluate", "Evaluate a checkpoint on the CIFAR-100 test split.")
    p.add_argument("--checkpoint", default=None, help="checkpoint or state_dict (default: <artifacts_dir>/best.ckpt)")
    args = p.parse_args(argv)
    cfg = cli.load(args)
    device = cli.resolve_device(args.device)
    path = Path(args.checkpoint or Path(cfg.paths.artifacts_dir) / "best.ckpt")
    data = load_dataset(cfg.dataset, args.data_root)
    params, state, meta = load_weights(path, arch_from(cfg, data.num_classes))
    params = to_memory_format(tree_to(params, device), cfg.train.channels_last)
    result = evaluate_test(params, tree_to(state, device), data.to(device), cfg, device)
    result.update({
        "checkpoint": str(path),
        "checkpoint_kind": "project checkpoint" if meta else "reference state_dict",
        "checkpoint_epoch": meta.get("epoch"),
        "dataset": "synthetic" if data.synthetic else "cifar100",
    })
    out = path.parent
    tag = " [SYNTHETIC DATA]" if data.synthetic else ""
    confusion_matrix_figure(np.array(result["confusion_matrix"]), data.class_names, out / "confusion_test.png",
                            f"test confusion matrix, {data.num_classes} classes{tag}")
    confusion_matrix_figure(np.array(result["confusion_matrix_coarse"]), data.coarse_names,
                            out / "confusion_test_coarse.png", f"test confusion matrix, coarse classes{tag}")
    atomic_write_json(out / "eval_test.json", result)
    worst = sorted(result["per_class_accuracy"].items(), key=lambda kv: kv[1])[:5]
    print(f"{'[SYNTHETIC] ' if data.synthetic else ''}test ({result['num_test_images']} images, {result['checkpoint_kind']}): "
          f"loss {result['test_loss']:.4f}, accuracy {result['test_accuracy']:.4f}, "
          f"top-5 {result['test_top5_accuracy']:.4f}, coarse accuracy {result['test_coarse_accuracy']:.4f}")
    print("hardest classes: " + ", ".join(f"{n} {a:.2f}" for n, a in worst))
    print(f"wrote {out / 'eval_test.json'}, {out / 'confusion_test.png'}, {out / 'confusion_test_coarse.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
