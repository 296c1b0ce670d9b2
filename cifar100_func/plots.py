"""Figures (matplotlib, Agg backend, written atomically as PNG)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_write  # noqa: E402


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write(Path(path), lambda f: f.write(buf.getvalue()))


def learning_curve(metrics: Sequence[dict], key: str, path: Path, title: str) -> None:
    """Train and val ``key`` ("loss" or "acc") per epoch on one figure."""
    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, style in (("train", "-o"), ("val", "-s")):
        values = [m[f"{split}_{key}"] for m in metrics]
        if key == "acc":
            values = [100 * v for v in values]
        ax.plot(epochs, values, style, label=split, markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)" if key == "acc" else "cross-entropy loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def confusion_matrix_figure(cm: np.ndarray, names: Sequence[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (rows: true class); tick labels only where they stay legible."""
    rows = cm.sum(axis=1, keepdims=True)
    norm = cm / np.maximum(rows, 1)
    k = len(names)
    size = 6 if k <= 20 else 14
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ticks = np.arange(k)
    ax.set_xticks(ticks, names, rotation=90, fontsize=8 if k <= 20 else 4)
    ax.set_yticks(ticks, names, fontsize=8 if k <= 20 else 4)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    save_figure(fig, path)
