"""Figures a sweep reader wants: validation accuracy against each swept hyper-parameter with seed error bars, the
gain of each configuration's seed ensemble over its single models, and a reliability diagram before and after
temperature scaling (matplotlib, Agg, written atomically as PNG by ``plots.save_figure``).

Rows are the grid's, one per configuration: ``config, lr, weight_decay, label_smoothing, blocks, mid`` and, over
seeds, ``seeds, val_acc_mean, val_acc_sd, val_acc_sem, val_loss_mean, val_loss_sem, ensemble_val_acc,
ensemble_val_loss``. A missing field is skipped: without ``val_acc_mean`` a row's ``final_val_acc`` stands in
(no error bar), without ``ensemble_val_acc`` no ensemble marker is drawn. Each function returns the path it wrote,
or None when the rows hold nothing to draw.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .plots import save_figure  # noqa: E402

# (row key, axis label, log axis): the hyper-parameters a sweep may vary besides the architecture
HPARAMS = (("lr", "peak learning rate", True), ("weight_decay", "weight decay", True),
           ("label_smoothing", "label smoothing", False))
SYNTHETIC = " [SYNTHETIC DATA]"


def _num(v) -> float:
    """A float, NaN for a missing or null value (a diverged configuration's metric is written as null)."""
    return math.nan if v is None else float(v)


def _single(row: dict) -> tuple[float, float]:
    """A configuration's single-model validation accuracy: the seed mean and its SEM (0 when not known)."""
    if row.get("val_acc_mean") is not None:
        return _num(row["val_acc_mean"]), _num(row.get("val_acc_sem") or 0.0)
    return _num(row.get("final_val_acc")), 0.0


def _ensemble(row: dict) -> float:
    return _num(row.get("ensemble_val_acc"))


def _arch(row: dict) -> str:
    if "blocks" in row and "mid" in row:
        return f"blocks {tuple(row['blocks'])}, mid {row['mid']}"
    return "all configurations"


def _label(row: dict) -> str:
    if row.get("config"):
        return str(row["config"])
    parts = [f"{k} {row[k]:g}" for k, _, _ in HPARAMS if row.get(k) is not None]
    return ", ".join(parts + [_arch(row)])


def _seeds_note(rows: Sequence[dict]) -> str:
    seeds = sorted({int(r["seeds"]) for r in rows if r.get("seeds") is not None})
    if not seeds:
        return ""
    n = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    return f"{n} seed{'s' if seeds[-1] > 1 else ''} per configuration"


def _set_xscale(ax, xs: Sequence[float], log: bool) -> None:
    if not log or not xs:
        return
    positive = [x for x in xs if x > 0]
    if len(positive) == len(xs):
        ax.set_xscale("log")
    elif positive:  # a zero (no weight decay) among positive values: linear near zero, log beyond
        ax.set_xscale("symlog", linthresh=min(positive))


def metric_vs_hparams(rows: Sequence[dict], path: Path, synthetic: bool = False) -> Path | None:
    """Validation accuracy against each swept hyper-parameter (one panel each; log axis for the learning rate and
    weight decay), one line per architecture: the single-model seed mean with SEM bars, and the configuration's
    seed ensemble as a second marker. Where several hyper-parameters vary, each point is the best configuration
    (by seed mean) at that value."""
    rows = [r for r in rows if not math.isnan(_single(r)[0])]
    if not rows:
        return None
    present = [h for h in HPARAMS if any(r.get(h[0]) is not None for r in rows)]
    swept = [h for h in present if len({r[h[0]] for r in rows if r.get(h[0]) is not None}) > 1] or present[:1]
    if not swept:
        return None
    archs = sorted({_arch(r) for r in rows})
    colours = plt.cm.tab10(np.arange(len(archs)) % 10)
    fig, axes = plt.subplots(1, len(swept), figsize=(5 * len(swept), 4), squeeze=False, layout="constrained")
    for ax, (key, name, log) in zip(axes[0], swept):
        xs_all = []
        for colour, arch in zip(colours, archs):
            best: dict[float, dict] = {}
            for r in rows:
                if _arch(r) == arch and r.get(key) is not None:
                    x = float(r[key])
                    if x not in best or _single(r)[0] > _single(best[x])[0]:
                        best[x] = r
            xs = sorted(best)
            xs_all += xs
            mean, sem = zip(*(_single(best[x]) for x in xs))
            ax.errorbar(xs, 100 * np.array(mean), yerr=100 * np.array(sem), color=colour, marker="o", markersize=4,
                        capsize=3, label=f"{arch}: single model (seed mean +- SEM)")
            ens = [_ensemble(best[x]) for x in xs]
            if any(not math.isnan(e) for e in ens):
                ax.plot(xs, 100 * np.array(ens), color=colour, marker="*", markersize=9, linestyle=":",
                        label=f"{arch}: ensemble of its seeds")
        _set_xscale(ax, xs_all, log)
        values = sorted(set(xs_all))
        if len(values) <= 8:  # label the swept values themselves
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.minorticks_off()
        ax.set_xlabel(name)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("validation accuracy (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside lower center", ncols=min(len(archs), 4))  # a column per architecture
    note = "; each point the best configuration at that value" if len(swept) > 1 else ""
    seeds = _seeds_note(rows)
    fig.suptitle("validation accuracy against the swept hyper-parameters" + (f" ({seeds}{note})" if seeds or note
                 else "") + (SYNTHETIC if synthetic else ""), fontsize=10)
    save_figure(fig, path)
    return Path(path)


def ensemble_gain(rows: Sequence[dict], path: Path, synthetic: bool = False) -> Path | None:
    """Per configuration (best single-model seed mean on top): the single model's validation accuracy, seed mean
    +- SEM, beside the ensemble of its seeds, with the gain in points."""
    rows = sorted((r for r in rows if not math.isnan(_single(r)[0])), key=lambda r: -_single(r)[0])
    if not rows:
        return None
    ys = np.arange(len(rows))[::-1]
    mean, sem = (100 * np.array(v) for v in zip(*(_single(r) for r in rows)))
    ens = 100 * np.array([_ensemble(r) for r in rows])
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * len(rows)), layout="constrained")
    ax.errorbar(mean, ys, xerr=sem, fmt="o", color="tab:blue", markersize=5, capsize=3,
                label="single model: seed mean +- SEM")
    if not np.isnan(ens).all():
        ax.plot(ens, ys, "*", color="tab:orange", markersize=10, label="ensemble of the configuration's seeds")
        for y, m, s, e in zip(ys, mean, sem, ens):
            if not (np.isnan(e) or np.isnan(m)):
                ax.annotate(f"{e - m:+.1f}", (max(e, m + s), y), xytext=(6, -3), textcoords="offset points",
                            fontsize=7)
    ax.set_yticks(ys, [_label(r) for r in rows], fontsize=7)
    ax.set_xlabel("validation accuracy (%)")
    ax.grid(alpha=0.3, axis="x")
    fig.legend(fontsize=7, loc="outside lower center", ncols=2)
    seeds = _seeds_note(rows)
    ax.set_title("ensemble gain per configuration (points)" + (f", {seeds}" if seeds else "")
                 + (SYNTHETIC if synthetic else ""), fontsize=10)
    save_figure(fig, path)
    return Path(path)


def _nonempty(bins: dict) -> tuple[np.ndarray, ...]:
    edges = np.asarray(bins["edges"], dtype=np.float64)
    count = np.asarray(bins["count"], dtype=np.float64)
    conf = np.array([_num(v) for v in bins["confidence"]])
    acc = np.array([_num(v) for v in bins["accuracy"]])
    keep = count > 0
    return edges[:-1][keep], np.diff(edges)[keep], count[keep] / max(count.sum(), 1), conf[keep], acc[keep]


def _ece(bins: dict) -> float:
    if bins.get("ece") is not None:
        return float(bins["ece"])
    _, _, frac, conf, acc = _nonempty(bins)
    return float((np.abs(acc - conf) * frac).sum())


def reliability_diagram(bins_before: dict, bins_after: dict | None, path: Path, title: str,
                        temperature: float | None = None) -> Path:
    """Accuracy per confidence bin against the diagonal of perfect calibration (the gap to each bin's mean
    confidence hatched), with the fraction of images per bin below; ``bins_*`` are ``stats.calibration.reliability``
    results (after: with the fitted temperature, or None to draw one panel)."""
    after = "after temperature scaling" + (f" (T = {temperature:.3g})" if temperature is not None else "")
    panels = [(name, b) for name, b in (("before temperature scaling", bins_before), (after, bins_after))
              if b is not None]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 5.6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, layout="constrained")
    for col, (name, bins) in enumerate(panels):
        left, width, frac, conf, acc = _nonempty(bins)
        top, bottom = axes[0, col], axes[1, col]
        top.bar(left, acc, width=width, align="edge", color="tab:blue", edgecolor="black", linewidth=0.5,
                label="accuracy")
        top.bar(left, conf - acc, bottom=acc, width=width, align="edge", color="tab:red", alpha=0.3,
                edgecolor="tab:red", hatch="//", linewidth=0.5, label="gap to the mean confidence")
        top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy")
        top.set_title(f"{name}\nECE {100 * _ece(bins):.2f}%", fontsize=9)
        top.legend(fontsize=7, loc="upper left")
        bottom.bar(left, frac, width=width, align="edge", color="tab:gray", edgecolor="black", linewidth=0.5)
        bottom.set_xlim(0, 1)
        bottom.set_xlabel("confidence (top-1 probability)")
        bottom.set_ylabel("fraction")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    return Path(path)
