"""``report/REPORT.md``: the study's report, every number taken from the results its stages returned.

Same sections as the original report (data, model, baselines, initial loss, overfit, LR finder, grid, final
curves, test metrics, reproducibility), figures embedded by relative path, and a table that puts the reference
report's claims beside what this run measured.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import Config, changed_keys
from ..commands.grid_search import results_markdown
from ..runtime.io import atomic_write_text

if TYPE_CHECKING:
    from ..commands.evaluate import EvalResult
    from ..commands.grid_search import GridResult
    from ..commands.lr_finder import LrFinderResult
    from ..commands.overfit import OverfitResult
    from ..commands.sanity import SanityResult
    from ..commands.train import TrainResult

# what the original report claimed (SPEC.md says which were checked and what was found)
REFERENCE = {
    "test_accuracy": "58.4%", "test_loss": "1.54", "initial_loss": "3.95 (not an initial loss, SPEC.md)",
    "params": "~1.2M (wrong, SPEC.md: 337,252)", "grid_winner": "lr 0.01, wd 5e-4, (3,3,3), mid 16",
    "spec_check": "21.0% test accuracy, test loss 3.21 (SPEC.md, the report's recipe, 20 epochs)",
}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _img(path: Path, report_dir: Path, alt: str) -> str:
    return f"![{alt}]({os.path.relpath(path, report_dir)})"


def separation(grid: list[dict], n_val: int, halving: bool) -> dict:
    """How far the grid's winner stands from the median configuration, at a budget all of them had (the first
    rung under halving, the last epoch otherwise), in binomial standard errors of the winner's accuracy on
    ``n_val`` validation images: does the ranking say something, or is it a draw?"""
    acc = (lambda r: r["rung_val_acc"][0]) if halving else (lambda r: r["final_val_acc"])  # noqa: E731
    best = min(grid, key=lambda r: r["rank"])
    values = sorted(acc(r) for r in grid)
    mid = len(values) // 2
    median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    p = acc(best)
    se = math.sqrt(max(p * (1 - p), 1e-12) / max(n_val, 1))
    return {"winner": p, "median": median, "se": se, "gap_in_se": (p - median) / se,
            "at": "the first rung" if halving else "the last epoch"}


@dataclass(frozen=True)
class StudyResults:
    """What the study's stages returned (run now or read back from their cache), and each stage's record (wall
    time, whether it was cached)."""

    sanity: "SanityResult"
    overfit: "OverfitResult"
    lr_finder: "LrFinderResult"
    grid: "GridResult"
    final: "TrainResult"
    test: "EvalResult"
    records: dict


def write_report(cfg: Config, final_cfg: Config, results: StudyResults, report_dir: Path) -> Path:
    """``report_dir/REPORT.md`` from the study's results (``final_cfg``: the config the final run trained)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    r = results
    sanity, over, lrf, grid = r.sanity.summary, r.overfit.summary, r.lr_finder.summary, r.grid.rows
    final, test, records = r.final.metrics, r.test.metrics, r.records
    final_changes = changed_keys(cfg, final_cfg)
    synthetic = sanity["dataset"] == "synthetic"
    best_grid = r.grid.winner
    best_epoch = max(final, key=lambda m: m["val_acc"])
    fig = lambda p, alt: _img(p, report_dir, alt)  # noqa: E731
    sets = " ".join(final_changes) or "(none)"
    h = cfg.grid.halving
    schedule = ("exhaustive" if cfg.grid.schedule == "exhaustive" else
                f"successive halving: first rung at {h.min_epochs:g} epoch(s), x{h.eta} per rung, the best 1/{h.eta} "
                "go on")
    reduced = cfg.study.profile != "full"
    sep = separation(grid, sanity["split_sizes"]["val"], cfg.grid.schedule == "halving")
    members = test.get("members", [])
    lines: list[str] = [
        f"# CIFAR-100 x BottleneckNet: study report ({cfg.study.profile} profile)",
        "",
    ]
    if synthetic:
        lines += ["> **SYNTHETIC DATA**: this run used the generated stand-in data set, not CIFAR-100. "
                  "Its numbers say nothing about CIFAR-100.", ""]
    if reduced:
        differs = [k for k in changed_keys(Config(), cfg) if not k.startswith(("paths.", "study.profile=",
                                                                               "study.description="))]
        lines += [f"> **Profile `{cfg.study.profile}`**: {cfg.study.description}. It differs from the full study "
                  "(`configs/config.yaml`, SPEC.md) in: " + ", ".join(f"`{k}`" for k in differs) + ".", ""]
    c = sanity["class_counts"]
    lines += [
        "## 1. Data",
        "",
        "| split | images | images per class (min-max) | balanced |",
        "| --- | ---: | --- | --- |",
        *[f"| {s} | {sanity['split_sizes'][s]:,} | {c[s]['min']}-{c[s]['max']} | {'yes' if c[s]['balanced'] else 'no'} |"
          for s in ("train", "val", "test")],
        "",
        f"Split: seeded {cfg.dataset.split_seed} random split of the official training set; "
        f"normalisation mean {list(cfg.preprocess.mean)}, std {list(cfg.preprocess.std)}. Train-only augmentation: "
        f"random crop with {cfg.augment.crop_padding}-pixel zero padding, horizontal flip p={cfg.augment.hflip_p}, "
        f"colour jitter (brightness {cfg.augment.brightness}, contrast {cfg.augment.contrast}, saturation "
        f"{cfg.augment.saturation}, hue {cfg.augment.hue}). A train batch has shape {tuple(sanity['train_batch_shape'])} "
        f"(model input {'matches' if sanity['batch_shape_ok'] else 'DOES NOT match'}).",
        "",
        fig(r.sanity.samples_figure, "training images before and after augmentation"),
        "",
        "## 2. Model",
        "",
        f"BottleneckNet, blocks {list(cfg.model.blocks)}, bottleneck width {cfg.model.bottleneck_mid}: "
        f"{sanity['params']:,} parameters, {sanity['flops_per_image']['forward'] / 1e9:.3f} GFLOP forward and "
        f"{sanity['flops_per_image']['forward_backward'] / 1e9:.3f} GFLOP forward+backward per image "
        "(`torch.utils.flop_counter`): the configured model, which the sanity checks measure; the grid trains "
        "the architectures of section 6 and the final run the one of section 7.",
        "",
        "## 3. Baselines and initial loss",
        "",
        "| split | majority class | uniform random (expected) |",
        "| --- | ---: | ---: |",
        *[f"| {s} | {_pct(b['majority_class'])} | {_pct(b['uniform_random']['expected'])} |"
          for s, b in sanity["baselines"].items()],
        "",
        f"Initial loss on a training batch: **{sanity['initial_loss']:.4f}** (ln {len(c['train']['counts'])} = "
        f"{sanity['ln_num_classes']:.4f}).",
        "",
        "## 4. Overfitting a small sample",
        "",
        f"{over['num_train']} training images, blocks {list(cfg.overfit.blocks)}, mid {cfg.overfit.bottleneck_mid}, "
        f"lr {cfg.overfit.lr:g}, wd {cfg.overfit.weight_decay:g}, {cfg.overfit.epochs} epochs: final train accuracy "
        f"**{_pct(over['final_train_acc'])}** (loss {over['final_train_loss']:.4f}), validation accuracy "
        f"{_pct(over['final_val_acc'])}: {'passed' if over['passed'] else 'FAILED'} (target {_pct(over['target_acc'])}).",
        "",
        fig(r.overfit.figures["train_loss"], "overfit train loss"), "",
        fig(r.overfit.figures["train_acc"], "overfit train accuracy"), "",
        fig(r.overfit.figures["val_metrics"], "overfit validation metrics"),
        "",
        "## 5. LR finder",
        "",
        f"lr from {cfg.lr_finder.start:g} to {cfg.lr_finder.end:g}, {lrf['num_seeds']} seeds stacked under vmap, "
        f"{lrf['steps']} of {lrf['planned_steps']} steps; stopped because {lrf['stop_reason']}.",
        "",
    ]
    if "upper_bound_lr" in lrf:
        slope = (f" (the smoothed loss falls {-lrf['steepest_slope_per_decade']:.3f} a decade there)"
                 if "steepest_slope_per_decade" in lrf else "")
        lines += [f"Steepest descent at lr **{lrf['steepest_descent_lr']:.3g}**{slope}; the loss bottoms out at lr "
                  f"**{lrf['upper_bound_lr']:.3g}**: an upper bound for training, not an optimum. Rule: {lrf['rule']}.",
                  ""]
    lines += [
        fig(r.lr_finder.figure, "LR finder"),
        "",
        "## 6. Grid search",
        "",
        f"{len(grid)} configurations, up to {cfg.grid.epochs} epoch(s) each ({schedule}), trained as stacked "
        f"models under `torch.func.vmap` ({'independent' if cfg.grid.independent_seeds else 'shared'} seeds). Best: "
        f"**{best_grid['config']}** (final val accuracy {_pct(best_grid['final_val_acc'])}).",
        "",
        f"Is the ranking more than noise? On {sanity['split_sizes']['val']:,} validation images the binomial "
        f"standard error of the winner's accuracy at {sep['at']} ({_pct(sep['winner'])}) is {_pct(sep['se'])}; the "
        f"median configuration had {_pct(sep['median'])} there: the winner stands "
        f"**{sep['gap_in_se']:.1f} standard errors** above it"
        + (" (more than one: a ranking, not a draw)." if sep["gap_in_se"] > 1 else " (a draw within the noise)."),
        "",
        *results_markdown(grid, synthetic).splitlines()[2:],
        "",
        fig(r.grid.figures["val"], "grid validation curves"), "",
        fig(r.grid.figures["train"], "grid training curves"), "",
        fig(r.grid.figures["heatmap"], "grid heat-maps"),
        "",
        "## 7. Final training",
        "",
        (f"A seed ensemble of {len(members)} models trained as one stack under vmap" if members else
         "Standard path (one model)")
        + f", {'the grid' if cfg.study.final_from == 'grid' else 'the config'}'s configuration "
        f"(overrides: `{sets}`), {len(final)} epochs. Best validation accuracy **{_pct(best_epoch['val_acc'])}** at "
        f"epoch {best_epoch['epoch']}; last epoch: train accuracy {_pct(final[-1]['train_acc'])}, validation "
        f"accuracy {_pct(final[-1]['val_acc'])}; {final[-1]['images_per_sec']:.0f} training images/s.",
        "",
        fig(r.final.figures["loss"], "final loss curves"), "",
        fig(r.final.figures["accuracy"], "final accuracy curves"),
        "",
        "## 8. Test evaluation",
        "",
        f"Best-by-validation checkpoint (epoch {test.get('checkpoint_epoch')}), {test['num_test_images']:,} test images: "
        f"accuracy **{_pct(test['test_accuracy'])}**, loss **{test['test_loss']:.4f}**, top-5 accuracy "
        f"{_pct(test['test_top5_accuracy'])}, coarse (20 super-classes) accuracy {_pct(test['test_coarse_accuracy'])}"
        + (f"; the ensemble (mean of the members' softmax) of {len(members)} members." if members else "."),
        "",
        *(["| member | test accuracy | test loss | top-5 |", "| ---: | ---: | ---: | ---: |"]
          + [f"| {j + 1} | {_pct(m['test_accuracy'])} | {m['test_loss']:.4f} | {_pct(m['test_top5_accuracy'])} |"
             for j, m in enumerate(members)] + [""] if members else []),
        fig(r.test.figures["coarse"], "coarse confusion matrix"), "",
        fig(r.test.figures["fine"], "fine confusion matrix"),
        "",
        "## 9. Against the reference report",
        "",
        "| quantity | reference report claims | this run |",
        "| --- | --- | --- |",
        f"| test accuracy | {REFERENCE['test_accuracy']} (SPEC.md check: {REFERENCE['spec_check']}) | {_pct(test['test_accuracy'])} |",
        f"| test loss | {REFERENCE['test_loss']} | {test['test_loss']:.4f} |",
        f"| initial loss | {REFERENCE['initial_loss']} | {sanity['initial_loss']:.4f} |",
        f"| parameters of (3,3,3), mid 16 | {REFERENCE['params']} | {sanity['params']:,} (configured model) |",
        f"| grid winner | {REFERENCE['grid_winner']} | lr {best_grid['lr']:g}, wd {best_grid['weight_decay']:g}, "
        f"{tuple(best_grid['blocks'])}, mid {best_grid['mid']} |",
        "",
        "## 10. Reproducibility",
        "",
        f"- Command: `cifar100-func study --config <config>`; profile `{cfg.study.profile}`; seed "
        f"{cfg.train.seed}, split seed {cfg.dataset.split_seed}.",
        f"- Device: {sanity['device']}; precision {cfg.train.precision}; channels_last {cfg.train.channels_last}; "
        f"torch.compile {cfg.train.compile}.",
        f"- Versions: Python {sys.version.split()[0]}, torch {torch.__version__}, platform {platform.platform()}.",
        "- Wall time per stage (a cached stage shows the time of the run that produced it):",
        "",
        "| stage | seconds | cached |",
        "| --- | ---: | --- |",
        *[f"| {s} | {r['seconds']:.0f} | {'yes' if r.get('cached') else 'no'} |" for s, r in records.items()],
        f"| all stages | {sum(r['seconds'] for r in records.values()):.0f} | |",
        "",
    ]
    path = report_dir / "REPORT.md"
    atomic_write_text(path, "\n".join(lines))
    return path
