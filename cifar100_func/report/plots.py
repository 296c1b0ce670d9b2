"""Figures (matplotlib, Agg backend, written atomically as PNG)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..runtime.io import atomic_write  # noqa: E402


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


def _arch_label(row: dict) -> str:
    return f"blocks {tuple(row['blocks'])}, mid {row['mid']}"


def _ema(values: Sequence[float], beta: float = 0.9) -> np.ndarray:
    out, avg = [], 0.0
    for i, v in enumerate(values):
        v = float("nan") if v is None else v  # a non-finite loss, written to JSON as null
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return np.array(out)


def _decay(r: dict) -> tuple:
    """A configuration's regularisation: (weight decay,) or (weight decay, label smoothing) when the grid varies
    label smoothing."""
    return (r["weight_decay"], r["label_smoothing"]) if r.get("ls_axis") else (r["weight_decay"],)


def _decay_label(key: tuple) -> str:
    return f"wd {key[0]:g}" + (f", ls {key[1]:g}" if len(key) > 1 else "")


def grid_curves(rows: Sequence[dict], split: str, path: Path, synthetic: bool) -> None:
    """One column per architecture; colour = lr, line style and marker = weight decay (and label smoothing).

    Train: the loss of every step (smoothed) on top, accuracy per epoch below. Val: loss and accuracy per epoch.
    """
    archs = sorted({_arch_label(r) for r in rows})
    lrs = sorted({r["lr"] for r in rows})
    wds = sorted({_decay(r) for r in rows})
    colours = plt.cm.viridis(np.linspace(0.0, 0.85, max(len(lrs), 1)))
    styles, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D"]
    fig, axes = plt.subplots(2, len(archs), figsize=(4.2 * len(archs), 7), squeeze=False, layout="constrained")
    for col, arch in enumerate(archs):
        for r in (r for r in rows if _arch_label(r) == arch):
            w = wds.index(_decay(r))
            style = dict(color=colours[lrs.index(r["lr"])], linestyle=styles[w % 4], marker=markers[w % 4],
                         markersize=4, label=f"lr {r['lr']:g}, {_decay_label(_decay(r))}"
                         + (" (diverged)" if r["diverged"] else "")
                         + (f" (pruned at {r['epochs']:g} ep.)" if r.get("pruned") else ""))
            epochs = [h["epoch"] for h in r["history"]]  # fractional where a halving rung fell inside an epoch
            if split == "train" and r.get("step_losses"):
                steps = np.arange(1, len(r["step_losses"]) + 1) / (len(r["step_losses"]) / epochs[-1])
                axes[0, col].plot(steps, _ema(r["step_losses"]), **{**style, "marker": None})
            else:
                axes[0, col].plot(epochs, [h[f"{split}_loss"] for h in r["history"]], **style)
            axes[1, col].plot(epochs, [100 * h[f"{split}_acc"] for h in r["history"]], **style)
        n_epochs = int(np.ceil(max(r["history"][-1]["epoch"] for r in rows)))
        axes[0, col].set_title(arch, fontsize=10)
        for row, ax in enumerate(axes[:, col]):
            ax.set_xlabel("epoch")
            ax.set_xlim((0, n_epochs) if split == "train" and row == 0 else (0.5, n_epochs + 0.5))
        axes[1, col].set_xticks(range(1, n_epochs + 1) if n_epochs <= 20 else
                                range(1, n_epochs + 1, max(1, n_epochs // 10)))
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(f"{split} loss" + (" (every step, smoothed)" if split == "train" else ""))
    axes[1, 0].set_ylabel(f"{split} accuracy (%)")
    axes[1, -1].legend(fontsize=7, loc="best")
    fig.suptitle(f"grid search: {split} curves of {len(rows)} runs" + (" [SYNTHETIC DATA]" if synthetic else ""))
    save_figure(fig, path)


def grid_heatmaps(rows: Sequence[dict], path: Path, synthetic: bool) -> None:
    """Validation accuracy at the last epoch each configuration trained (pruned ones marked) over (lr, weight
    decay [and label smoothing]), one heat-map per architecture."""
    archs = sorted({_arch_label(r) for r in rows})
    lrs = sorted({r["lr"] for r in rows})
    wds = sorted({_decay(r) for r in rows})
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.6), squeeze=False, layout="constrained")
    for ax, arch in zip(axes[0], archs):
        grid = np.full((len(wds), len(lrs)), np.nan)
        pruned: dict[tuple[int, int], float] = {}
        for r in rows:
            if _arch_label(r) == arch:
                grid[wds.index(_decay(r)), lrs.index(r["lr"])] = 100 * r["final_val_acc"]
                if r.get("pruned"):
                    pruned[(wds.index(_decay(r)), lrs.index(r["lr"]))] = r["epochs"]
        im = ax.imshow(grid, cmap="magma", origin="lower", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                note = f"\npruned@{pruned[(i, j)]:.2g}" if (i, j) in pruned else ""
                ax.text(j, i, f"{v:.1f}{note}", ha="center", va="center", fontsize=8,
                        color="white" if v < np.nanmean(grid) else "black")
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
        ax.set_yticks(range(len(wds)), [_decay_label(v) for v in wds])
        ax.set_xlabel("lr")
        ax.set_title(arch, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    axes[0, 0].set_ylabel("regularisation")
    legend = "; pruned@e: left the grid after e epochs (halving)" if any(r.get("pruned") for r in rows) else ""
    fig.suptitle("validation accuracy at the last epoch trained (%)" + legend
                 + (" [SYNTHETIC DATA]" if synthetic else ""))
    save_figure(fig, path)


def lr_finder_figure(res: dict, path: Path, synthetic: bool) -> None:
    """Smoothed loss vs lr (log x): mean of the seeds with a min-max band, suggestions marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lrs, sm = res["lrs"], res["smoothed"]
    if len(lrs):
        ax.fill_between(lrs, sm.min(axis=1), sm.max(axis=1), alpha=0.25, label=f"min-max over {sm.shape[1]} seeds")
        ax.plot(lrs, sm.mean(axis=1), lw=1.8, label="smoothed loss (mean)")
    for key, colour, text in (("steepest_descent_lr", "tab:green", "steepest descent"),
                              ("upper_bound_lr", "tab:red", "upper bound (loss starts to rise)")):
        if key in res:
            ax.axvline(res[key], color=colour, ls="--", label=f"{text}: {res[key]:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    if len(lrs):
        top = float(np.nanpercentile(sm.max(axis=1), 95))
        ax.set_ylim(max(0.0, float(sm.min()) - 0.2), top + 0.3)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("LR finder" + (" [SYNTHETIC DATA]" if synthetic else ""))
    save_figure(fig, path)


def overfit_figures(metrics: Sequence[dict], out_dir: Path, synthetic: bool, n: int) -> None:
    tag = " [SYNTHETIC DATA]" if synthetic else ""
    epochs = [m["epoch"] for m in metrics]
    for key, name, label in (("train_loss", "overfit_train_loss.png", "train loss"),
                             ("train_acc", "overfit_train_acc.png", "train accuracy (%)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        values = [m[key] * (100 if "acc" in key else 1) for m in metrics]
        ax.plot(epochs, values, "-o", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"overfit check on {n} training images: {label}{tag}")
        ax.grid(alpha=0.3)
        save_figure(fig, out_dir / name)
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(epochs, [m["val_loss"] for m in metrics], "-o", markersize=3, color="tab:blue", label="val loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("val loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [100 * m["val_acc"] for m in metrics], "-s", markersize=3, color="tab:orange", label="val acc")
    ax2.set_ylabel("val accuracy (%)", color="tab:orange")
    ax1.set_title(f"overfit check: validation stays poor{tag}")
    ax1.grid(alpha=0.3)
    save_figure(fig, out_dir / "overfit_val_metrics.png")


def augmented_samples_figure(before: np.ndarray, after: np.ndarray, names: Sequence[str], path: Path,
                             synthetic: bool) -> None:
    """Row 1: original images; rows 2..: the same images under independent augmentation draws."""
    rows, n = after.shape[0] + 1, before.shape[0]
    fig, axes = plt.subplots(rows, n, figsize=(1.6 * n, 1.75 * rows), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(before[j])
        axes[0, j].set_title(names[j], fontsize=7)
        for r in range(1, rows):
            axes[r, j].imshow(after[r - 1, j])
        for r in range(rows):
            axes[r, j].axis("off")
    axes[0, 0].text(-0.15, 0.5, "original", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    for r in range(1, rows):
        axes[r, 0].text(-0.15, 0.5, f"augmented #{r}", transform=axes[r, 0].transAxes, rotation=90, va="center",
                        ha="right")
    fig.suptitle("training images before and after augmentation (crop, flip, colour jitter)"
                 + (" [SYNTHETIC DATA]" if synthetic else ""), fontsize=9)
    save_figure(fig, path)
