"""``cifar100-func overfit``: SPEC experiment 2, learn a tiny training subset by heart.

N training images (default 50), blocks (2,2,2), mid 16, lr 1e-3, wd 0, 50 epochs, augmentation off (all in the
``overfit`` section). Train accuracy must reach ``overfit.target_acc`` (0.98) while validation stays poor; when
it does not, something in the data, model or optimiser is broken, and the command exits with code 1.
Runs the standard path (:func:`.trainer.fit`, one model through the one loop) on a derived config; nothing is written but
``<runs_dir>/overfit/``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import cli
from ..config import Config
from ..errors import UserError
from ..runtime.trainer import RunFiles, fit


class OverfitFailed(UserError):
    exit_code = 1


def overfit_config(cfg: Config) -> Config:
    """The config of the check: the main config with the ``overfit`` section's values swapped in; the SPEC's check
    whatever the training recipe is (its own optimiser with one lr for every parameter, constant lr, no label
    smoothing: the loss must reach ~0)."""
    o, tc = cfg.overfit, cfg.train
    replace = dataclasses.replace
    return replace(
        cfg,
        dataset=replace(cfg.dataset, max_train=o.num_train, max_val=o.max_val or cfg.dataset.max_val),
        augment=replace(cfg.augment, enabled=o.augment),
        model=replace(cfg.model, blocks=o.blocks, bottleneck_mid=o.bottleneck_mid),
        train=replace(tc, epochs=o.epochs, compile=False, label_smoothing=0.0,
                      scheduler=replace(tc.scheduler, name="none", cycle_momentum=False),
                      optimizer=replace(tc.optimizer, name=o.optimizer, lr=o.lr, weight_decay=o.weight_decay,
                                        norm_bias_lr_mult=1.0)),
    )


@dataclass(frozen=True)
class OverfitResult:
    """The check's summary (``overfit.json``: final accuracies, pass or fail, the metrics) and its folder."""

    summary: dict
    out_dir: Path

    @property
    def figures(self) -> dict[str, Path]:
        return {k: self.out_dir / f"overfit_{k}.png" for k in ("train_loss", "train_acc", "val_metrics")}


def out_dir(cfg: Config) -> Path:
    return Path(cfg.paths.runs_dir) / "overfit"


def load(cfg: Config) -> OverfitResult:
    """The result an earlier run left (raises when it is missing or damaged)."""
    d = out_dir(cfg)
    return OverfitResult(json.loads((d / "overfit.json").read_text()), d)


@cli.exclusive(lambda cfg, *args, **kwargs: [out_dir(cfg)])
def execute(cfg: Config, rt: cli.Runtime) -> OverfitResult:
    """Run the check of ``cfg`` (its ``overfit`` section); writes ``<runs_dir>/overfit/``; raises
    :class:`OverfitFailed` (exit 1) when the target is not reached."""
    out = out_dir(cfg)
    cfg = overfit_config(cfg)
    run = cli.setup(cfg, rt, out)
    device, data = run.device, run.data
    o = cfg.overfit
    print(f"{run.tag}: overfit {len(data.train)} training images, blocks {list(o.blocks)}, mid {o.bottleneck_mid}, "
          f"lr {o.lr:g}, wd {o.weight_decay:g}, {o.epochs} epochs, augmentation {'on' if o.augment else 'off'}",
          flush=True)
    log_every = max(1, o.epochs // 10)
    files = RunFiles(events=out / "tb" if cfg.paths.tensorboard else None)
    res = fit(cfg, data.to(device), run.backend, files, run_name="overfit",
              log=lambda line: None if ("epoch" in line and not _show(line, log_every, o.epochs)) else print(line))
    from ..runtime.io import atomic_write_json
    from ..report.plots import overfit_figures

    overfit_figures(res.metrics, out, data.synthetic, len(data.train))
    last = res.metrics[-1]
    summary = {"num_train": len(data.train), "final_train_acc": last["train_acc"], "final_train_loss": last["train_loss"],
               "final_val_acc": last["val_acc"], "final_val_loss": last["val_loss"], "target_acc": o.target_acc,
               "passed": last["train_acc"] >= o.target_acc, "metrics": res.metrics,
               "dataset": "synthetic" if data.synthetic else "cifar100"}
    atomic_write_json(out / "overfit.json", summary)
    print(f"final train acc {last['train_acc']:.4f} (loss {last['train_loss']:.4f}); val acc {last['val_acc']:.4f}; "
          f"figures in {out}")
    if not summary["passed"]:
        raise OverfitFailed(
            f"overfit check failed: train accuracy {last['train_acc']:.4f} < target {o.target_acc} after {o.epochs} "
            f"epochs on {len(data.train)} images; the model, data or optimiser is broken (or the lr is off)")
    return OverfitResult(summary, out)


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.base_parser("cifar100-func overfit", "Overfit a tiny training subset (SPEC experiment 2).")
    args = p.parse_args(argv)
    execute(cli.load(args), cli.runtime(args))
    return 0


def _show(line: str, every: int, total: int) -> bool:
    try:
        epoch = int(line.split("epoch ", 1)[1].split("/", 1)[0])
    except (IndexError, ValueError):
        return True
    return epoch % every == 0 or epoch in (1, total)


if __name__ == "__main__":
    sys.exit(cli.run_command(main))
