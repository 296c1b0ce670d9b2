"""``python -m cifar100_func.evaluate --checkpoint artifacts/best.ckpt``: test-set metrics of one model.

Reads a project checkpoint or a plain reference-layout ``state_dict`` (detected automatically); the architecture
comes from the checkpoint's shapes, never from the config, so the two cannot disagree. Prints and writes
``<checkpoint dir>/eval_test.json`` with loss, accuracy, top-5 accuracy and per-class accuracy, plus fine (100x100)
and coarse (20x20) confusion matrices.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import cli
from .backend import Backend, resolve_device
from .checkpoint import load_weights, tree_to
from .config import Config
from .data import Dataset, load_dataset
from .errors import CheckpointError
from .io import atomic_write_json
from .loader import Pipeline
from .loop import evaluate, make_eval
from .plots import confusion_matrix_figure
from .step import cast_tree


def confusion(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)


def evaluate_test(params, state, data: Dataset, cfg: Config, backend: Backend) -> dict[str, Any]:
    """Test metrics plus confusion matrices (fine and coarse) for one model already on the backend's device."""
    engine = backend.engine(None, 0, compile=False)
    pipe = Pipeline.create(cfg.preprocess, cfg.augment, backend.device)
    res = evaluate(make_eval(backend, engine, stacked=False), engine.params(params), state, data.test, pipe,
                   cfg.train.eval_batch_size, engine, keep_predictions=True)
    true = data.test.y.cpu().numpy()
    pred = res["predictions"][0].numpy()
    k = data.num_classes
    cm = confusion(true, pred, k)
    f2c = data.fine_to_coarse.cpu().numpy()
    cm_coarse = confusion(f2c[true], f2c[pred], len(data.coarse_names))
    per_class = cm.diagonal() / np.maximum(cm.sum(axis=1), 1)
    return {
        "test_loss": res["loss"][0],
        "test_accuracy": res["acc"][0],
        "test_top5_accuracy": res["top5_acc"][0],
        "test_coarse_accuracy": float(cm_coarse.trace() / max(cm_coarse.sum(), 1)),
        "num_test_images": int(len(true)),
        "per_class_accuracy": {name: float(a) for name, a in zip(data.class_names, per_class)},
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_coarse": cm_coarse.tolist(),
    }


def run(cfg: Config, checkpoint: str | Path | None = None, *, device: str = "auto",
        data_root: str | None = None) -> dict[str, Any]:
    """The ``evaluate`` command on a :class:`Config`; the architecture comes from the checkpoint's shapes."""
    path = Path(checkpoint or Path(cfg.paths.artifacts_dir) / "best.ckpt")
    dev = resolve_device(device)
    data = load_dataset(cfg.dataset, data_root)
    params, state, meta, arch = load_weights(path)
    if arch.num_classes != data.num_classes:
        raise CheckpointError(f"{path}: the model predicts {arch.num_classes} classes, the data set has "
                              f"{data.num_classes}")
    backend = Backend.create(cfg, dev)
    params, state = cast_tree(params, backend.precision), cast_tree(state, backend.precision)
    result = evaluate_test(tree_to(params, dev), tree_to(state, dev), data.to(dev), cfg, backend)
    result.update({
        "checkpoint": str(path),
        "checkpoint_kind": "project checkpoint" if meta else "reference state_dict",
        "checkpoint_epoch": meta.get("epoch"),
        "architecture": {"blocks": list(arch.blocks), "bottleneck_mid": arch.mid, "num_classes": arch.num_classes},
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
    print(f"{'[SYNTHETIC] ' if data.synthetic else ''}test ({result['num_test_images']} images, "
          f"{result['checkpoint_kind']}, blocks {list(arch.blocks)}, mid {arch.mid}): "
          f"loss {result['test_loss']:.4f}, accuracy {result['test_accuracy']:.4f}, "
          f"top-5 {result['test_top5_accuracy']:.4f}, coarse accuracy {result['test_coarse_accuracy']:.4f}")
    print("hardest classes: " + ", ".join(f"{n} {a:.2f}" for n, a in worst))
    print(f"wrote {out / 'eval_test.json'}, {out / 'confusion_test.png'}, {out / 'confusion_test_coarse.png'}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.base_parser("cifar100_func.evaluate", "Evaluate a checkpoint on the CIFAR-100 test split.")
    p.add_argument("--checkpoint", default=None, help="checkpoint or state_dict (default: <artifacts_dir>/best.ckpt)")
    args = p.parse_args(argv)
    run(cli.load(args), args.checkpoint, device=args.device, data_root=args.data_root)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
