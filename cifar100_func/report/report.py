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
    final: "TrainResult | None"  # None: study.final_from ensemble (no final run)
    test: "EvalResult"
    records: dict


def write_report(cfg: Config, final_cfg: Config, results: StudyResults, report_dir: Path) -> Path:
    """``report_dir/REPORT.md`` from the study's results (``final_cfg``: the config the final run trained)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    r = results
    sanity, over, lrf, grid = r.sanity.summary, r.overfit.summary, r.lr_finder.summary, r.grid.rows
    final, test, records = (r.final.metrics if r.final else None), r.test.metrics, r.records
    final_changes = changed_keys(cfg, final_cfg)
    synthetic = sanity["dataset"] == "synthetic"
    best_grid = r.grid.winner
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
        *_noise_lines(cfg, r.grid.sweep, sep, sanity["split_sizes"]["val"]),
        "",
        *results_markdown(grid, synthetic).splitlines()[2:],
        "",
        *_ensemble_lines(grid, r.grid.sweep),
        fig(r.grid.figures["hparams"], "validation accuracy against each swept hyper-parameter"), "",
        fig(r.grid.figures["ensemble_gain"], "each configuration's seed ensemble against its single models"), "",
        *([fig(r.grid.figures["reliability"], "reliability of the selected ensemble"), ""]
          if r.grid.sweep.get("selection") else []),
        fig(r.grid.figures["val"], "grid validation curves"), "",
        fig(r.grid.figures["train"], "grid training curves"), "",
        fig(r.grid.figures["heatmap"], "grid heat-maps"),
        "",
        "## 7. Final training",
        "",
        *_final_lines(cfg, r, final, members, sets, fig),
        "## 8. Test evaluation",
        "",
        ("The ensemble selected in section 6" if final is None else
         f"Best-by-validation checkpoint (epoch {test.get('checkpoint_epoch')})")
        + f", {test['num_test_images']:,} test images"
        + (f", test-time views `{test['tta']}`" if test.get("tta", "none") != "none" else "") + ": "
        f"accuracy **{_pct(test['test_accuracy'])}**, loss **{test['test_loss']:.4f}**, top-5 accuracy "
        f"{_pct(test['test_top5_accuracy'])}, coarse (20 super-classes) accuracy {_pct(test['test_coarse_accuracy'])}"
        + (f"; the ensemble (mean of the members' softmax) of {len(members)} members." if members else ".")
        + (f" Without test-time views: accuracy {_pct(test['plain']['test_accuracy'])}, loss "
           f"{test['plain']['test_loss']:.4f}." if "plain" in test else ""),
        "",
        *_calibration_lines(test),
        *(["| member | weight | test accuracy | test loss | top-5 |", "| --- | ---: | ---: | ---: | ---: |"]
          + [f"| {m.get('name', j + 1)} | {m.get('weight', 1):.3g} | {_pct(m['test_accuracy'])} | "
             f"{m['test_loss']:.4f} | {_pct(m['test_top5_accuracy'])} |"
             for j, m in enumerate(members)] + [""] if members else []),
        *([fig(r.test.figures["reliability"], "test reliability diagram"), ""] if "reliability" in r.test.figures
          and r.test.figures["reliability"].is_file() else []),
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


def _noise_lines(cfg: Config, sweep: dict, sep: dict, n_val: int) -> list[str]:
    """Is the ranking more than noise? With seeds: paired tests over them; with one: the binomial error only."""
    noise = sweep.get("noise")
    if noise and noise.get("seeds", 1) > 1:
        verdicts = [noise[k]["verdict"] for k in ("runner_up", "median") if k in noise]
        out = [f"Is the ranking more than noise? Every configuration trained {noise['seeds']} seeds (the same seeds "
               "for all, so comparisons are paired); the ranking uses their mean. "
               + (f"Paired over them: {'; '.join(verdicts)}." if verdicts
                  else "Only one configuration finished, so there is nothing to compare it with.")]
        if noise.get("single_seed_flips") is not None:
            out[0] += (f" One seed alone would have crowned another winner for {100 * noise['single_seed_flips']:.0f}% "
                       "of the seeds.")
        return out
    return [f"Is the ranking more than noise? On {n_val:,} validation images the binomial standard error of the "
            f"winner's accuracy at {sep['at']} ({_pct(sep['winner'])}) is {_pct(sep['se'])}; the median configuration "
            f"had {_pct(sep['median'])} there: the winner stands **{sep['gap_in_se']:.1f} standard errors** above it"
            + (" (more than one: a ranking, not a draw)" if sep["gap_in_se"] > 1 else " (a draw within the noise)")
            + ". One seed per configuration: the seed's own noise, often larger, is not measured (`hparams.seeds`)."]


def _ensemble_lines(grid: list[dict], sweep: dict) -> list[str]:
    """Each configuration's seed ensemble, and the ensemble selected across the sweep, on validation."""
    out = []
    gains = [r["ensemble_gain"] for r in grid if "ensemble_gain" in r and r.get("seeds", 1) > 1]
    if gains:
        out += [f"Every configuration is also the ensemble of its seeds (mean of their softmax): on validation it "
                f"gains {100 * min(gains):+.2f} to {100 * max(gains):+.2f} points over its single models' mean.", ""]
    sel = sweep.get("selection")
    if sel:
        c = sel["val"]["calibration"]
        view = "" if sweep.get("view", "none") == "none" else f" (test-time views `{sweep['view']}`)"
        out += [f"Ensemble selection (greedy forward selection with replacement, Caruana et al. 2004, {sel['rounds']} "
                f"rounds on validation NLL) over all {sel['pool']} trained members{view}: "
                + ", ".join(f"{m['name']} x{m['count']}" for m in sel["members"])
                + f". Validation accuracy **{_pct(sel['val']['acc'])}**, NLL {sel['val']['loss']:.4f}, against the "
                f"best single member ({sel['best_member']['name']}) {_pct(sel['best_member']['acc'])}, NLL "
                f"{sel['best_member']['loss']:.4f}. Its calibration: ECE {c['ece']:.4f}, Brier {c['brier']:.4f}; with "
                f"a temperature of {c['temperature']:.3f} fitted on validation, ECE {c['scaled']['ece']:.4f}.", ""]
    return out


def _final_lines(cfg: Config, r: StudyResults, final: list[dict] | None, members: list, sets: str, fig) -> list[str]:
    if final is None:
        return ["No final run (`study.final_from: ensemble`): the answer is the ensemble selected from the grid's "
                "trained members in section 6, chosen on validation only; section 8 reads the test split once.", ""]
    best_epoch = max(final, key=lambda m: m["val_acc"])
    assert r.final is not None
    return [
        (f"A seed ensemble of {len(members)} models trained as one stack" if members else "Standard path (one model)")
        + f", {'the grid' if cfg.study.final_from == 'grid' else 'the config'}'s configuration "
        f"(overrides: `{sets}`), {len(final)} epochs. Best validation accuracy **{_pct(best_epoch['val_acc'])}** at "
        f"epoch {best_epoch['epoch']}; last epoch: train accuracy {_pct(final[-1]['train_acc'])}, validation "
        f"accuracy {_pct(final[-1]['val_acc'])}; {final[-1]['images_per_sec']:.0f} training images/s.",
        "",
        fig(r.final.figures["loss"], "final loss curves"), "",
        fig(r.final.figures["accuracy"], "final accuracy curves"),
        "",
    ]


def _calibration_lines(test: dict) -> list[str]:
    c = test.get("calibration")
    if not c:
        return []
    line = f"Calibration on test: NLL {c['nll']:.4f}, ECE (15 bins) {c['ece']:.4f}, Brier {c['brier']:.4f}"
    if "scaled" in c:
        line += (f"; after temperature scaling (T = {c['temperature']:.3f}, fitted on validation): NLL "
                 f"{c['scaled']['nll']:.4f}, ECE {c['scaled']['ece']:.4f}, Brier {c['scaled']['brier']:.4f}")
    return [line + ".", ""]
