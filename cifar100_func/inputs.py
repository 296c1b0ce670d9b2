"""What each stage of the study computes from: the value its fingerprint (:mod:`.fingerprint`) is taken of.

One function per stage, each built from the :func:`.config.what` sections that stage reads (the fields marked
``how``: device, compilation, engine, paths, where the data is, are never part of it), the identity of the data,
and, for a stage that reads an earlier stage's output, that output (the grid's winner is in the final config; the
final checkpoint's identity is in the evaluation's input). Within a section, only the fields the chosen variant
uses count: Adam's betas do not matter to SGD, a cosine schedule's floor not to one-cycle, augmentation strengths not
to a run without augmentation. The study's cache, the grid's per-stack records and ``train --resume`` all compare
these values; tests/test_fingerprint.py walks every config key through them.
"""

from __future__ import annotations

from typing import Any

from .config import Config, what

STAGES = ("sanity", "overfit", "lr_finder", "grid_search", "final", "evaluate")


TRAIN_VAL = ("train", "val")


def dataset(cfg: Config, splits: tuple[str, ...], identity: str) -> dict:
    """The data a stage sees: the data set's identity (its files' content) and the dataset keys that shape the
    ``splits`` it reads ("train", "val", "test")."""
    d = what(cfg.dataset)
    if d["name"] != "synthetic":
        d.pop("synthetic", None)
    for split in ("train", "val", "test"):
        if split not in splits:
            d.pop(f"max_{split}")
    if "train" not in splits and "val" not in splits:
        d.pop("val_size")
        d.pop("split_seed")
    return {**d, "identity": identity}


def augment(cfg: Config, epochs_matter: bool = True) -> dict:
    """The augmentation a run applies (nothing else counts when it is off)."""
    a = what(cfg.augment)
    if not a["enabled"]:
        return {"enabled": False}
    if not epochs_matter:
        a.pop("off_last_epochs")
    if a["flip"] == "alternating":  # no coin with hflip_p
        a.pop("hflip_p")
    return a


def ema(cfg: Config) -> dict:
    """The weight averaging a run keeps (nothing else counts when it is off, the images only when recomputing)."""
    e = what(cfg.train.ema)
    if e["decay"] is None:
        return {"decay": None}
    if e["bn"] != "recompute":
        e.pop("bn_images")
    return e


def scheduler(cfg: Config) -> dict:
    """The fields of ``train.scheduler`` its ``name`` uses."""
    s = what(cfg.train.scheduler)
    if s["name"] == "cosine":
        return {"name": "cosine", "min_lr_ratio": s["min_lr_ratio"]}
    if s["name"] != "onecycle":
        return {"name": s["name"]}
    out = {k: s[k] for k in ("name", "warmup_pct", "div_factor", "final_div_factor", "cycle_momentum")}
    if s["cycle_momentum"]:
        out.update(base_momentum=s["base_momentum"], max_momentum=s["max_momentum"])
    return out


def optimizer(cfg: Config, *, lr: bool = True, weight_decay: bool = True, scheduled: bool = True) -> dict:
    """The fields of ``train.optimizer`` its ``name`` uses; ``lr``/``weight_decay`` False when the stage sets them
    itself (the grid's axes); the constant momentum does not count under a momentum cycle (``scheduled``)."""
    o = what(cfg.train.optimizer)
    if o["name"] == "sgd":
        o.pop("betas")
        o.pop("eps")
        if scheduled and scheduler(cfg).get("cycle_momentum"):
            o.pop("momentum")
    else:
        o.pop("momentum")
        o.pop("nesterov")
    if not lr:
        o.pop("lr")
    if not weight_decay:
        o.pop("weight_decay")
    return o


def numerics(cfg: Config) -> dict:
    """How the arithmetic is done where it changes the numbers (not the device: that is *how*)."""
    return {"precision": cfg.train.precision, "allow_tf32": cfg.train.allow_tf32}


def training(cfg: Config, members: int = 1) -> dict:
    """What one training run of ``cfg`` (the standard path, :func:`.runtime.trainer.fit`) computes from, but its
    data: model, recipe, schedule, seeds, laid out as the config's keys (so a difference names its key).
    ``train --resume`` compares this (without ``train.epochs``)."""
    tc = cfg.train
    return {"preprocess": what(cfg.preprocess), "augment": augment(cfg), "model": what(cfg.model),
            "train": {"seed": tc.seed, "batch_size": tc.batch_size, "eval_batch_size": tc.eval_batch_size,
                      "epochs": tc.epochs, "label_smoothing": tc.label_smoothing, **numerics(cfg),
                      "optimizer": optimizer(cfg), "scheduler": scheduler(cfg), "ema": ema(cfg)},
            "members": members}


def sanity(cfg: Config, identity: str) -> dict:
    """The checks before training: the splits, a batch of the pipeline, the configured model at its seed."""
    return {"data": dataset(cfg, ("train", "val", "test"), identity), "preprocess": what(cfg.preprocess),
            "augment": augment(cfg, epochs_matter=False), "model": what(cfg.model), "seed": cfg.train.seed,
            "batch_size": cfg.train.batch_size, "sanity": what(cfg.sanity)}


def overfit(cfg: Config, identity: str) -> dict:
    """The overfit check: the run of the config its ``overfit`` section derives, and its pass mark."""
    from .commands.overfit import overfit_config

    o = overfit_config(cfg)
    return {"data": dataset(o, TRAIN_VAL, identity), "run": training(o), "target_acc": cfg.overfit.target_acc}


def lr_finder(cfg: Config, identity: str) -> dict:
    """The range test: the configured model and optimiser (its own lrs, no schedule, no validation)."""
    tc = cfg.train
    return {"data": dataset(cfg, ("train",), identity), "preprocess": what(cfg.preprocess),
            "augment": augment(cfg, epochs_matter=False), "model": what(cfg.model), "seed": tc.seed,
            "batch_size": tc.batch_size, "label_smoothing": tc.label_smoothing, "numerics": numerics(cfg),
            "optimizer": optimizer(cfg, lr=False, scheduled=False), "lr_finder": what(cfg.lr_finder)}


def grid_common(cfg: Config, identity: str) -> dict:
    """What every stack of the grid computes from, but its members (architecture, hyper-parameters, seeds): the
    data subset, the recipe the axes do not replace, the grid's schedule of rungs."""
    from .commands.grid_search import grid_data

    g, tc = grid_data(cfg), cfg.train
    grid = what(cfg.grid)
    if grid["schedule"] != "halving":
        grid.pop("halving")
    for after_training in ("selection_rounds", "tta"):  # read after the stacks train: no stack trains again
        grid.pop(after_training)
    out = {"data": dataset(g, TRAIN_VAL, identity), "preprocess": what(cfg.preprocess), "augment": augment(cfg),
           "seed": tc.seed, "batch_size": tc.batch_size, "eval_batch_size": tc.eval_batch_size,
           "numerics": numerics(cfg), "optimizer": optimizer(cfg, lr=False, weight_decay=False),
           "scheduler": scheduler(cfg), "ema": ema(cfg), "grid": grid,
           "model": {k: getattr(cfg.model, k) for k in ("bn_momentum", "identity_init")}}  # not the axes' shapes
    if cfg.hparams.label_smoothing is None:
        out["label_smoothing"] = tc.label_smoothing
    return out


def grid(cfg: Config, identity: str) -> dict:
    """The whole grid: what its stacks share, its axes, and how its trained members are looked at."""
    return {**grid_common(cfg, identity), "hparams": what(cfg.hparams),
            "after": {"selection_rounds": cfg.grid.selection_rounds, "tta": cfg.grid.tta}}


def final(final_cfg: Config, identity: str) -> dict:
    """The final run: the *final* config (the grid's winner and ``study.final_epochs`` already in it; see
    :func:`.commands.study.final_config`), so keys the winner replaces do not count."""
    return {"data": dataset(final_cfg, TRAIN_VAL, identity), "run": training(final_cfg, final_cfg.study.final_seeds)}


def evaluate(cfg: Config, identity: str, checkpoint: str) -> dict:
    """The test evaluation: the checkpoint's identity (the final run's output) and the test split's pipeline."""
    return {"data": dataset(cfg, ("test",), identity), "preprocess": what(cfg.preprocess),
            "eval_batch_size": cfg.train.eval_batch_size, "numerics": numerics(cfg), "checkpoint": checkpoint,
            "evaluation": what(cfg.evaluation)}


def resume(cfg: Config, members: int) -> dict[str, Any]:
    """What ``train --resume`` requires unchanged: the run's inputs but ``train.epochs`` (a run may be extended)."""
    run = training(cfg, members)
    run["train"].pop("epochs")
    return {"dataset": dataset(cfg, TRAIN_VAL, ""), **run}


def data_identity(cfg: Config, data_root: str | None) -> str:
    """The identity of the data set's source: the content of CIFAR-100's three files (wherever they are: the folder
    is *how*), or "synthetic" (generated from the ``dataset`` keys alone). Finds (or fetches) the files, so a study
    without data stops here, before its first stage."""
    if cfg.dataset.name == "synthetic":
        return "synthetic"
    import hashlib

    from .data.dataset import find_cifar100, resolve_root

    folder = find_cifar100(resolve_root(data_root, cfg.dataset.root), cfg.dataset.download)
    h = hashlib.sha256()
    for name in ("meta", "train", "test"):
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]
