"""Which stages of the study each config key invalidates, key by key, for every leaf key of the schema.

No training: a stage's fingerprint is taken of what it reads (:mod:`cifar100_func.inputs`); the grid's output (its
winner) is stood in for by a row that changes whenever the grid's input does, and the final checkpoint's identity by
the final run's fingerprint, so a key invalidates a stage when the stage reads it or reads a changed output.
"""

from __future__ import annotations

import pytest
import torch

from cifar100_func import inputs
from cifar100_func.commands.study import final_config
from cifar100_func.config import Config, load_config
from cifar100_func.errors import ConfigError
from cifar100_func.fingerprint import canonical, first_difference, fingerprint

ALL = set(inputs.STAGES)
GRID = {"grid_search", "final", "evaluate"}  # the grid and what reads its winner
FINAL = {"final", "evaluate"}
NONE: set[str] = set()

# the base: the recipe's options (SGD, one-cycle with its momentum cycle, successive halving), so that most keys
# are read by someone; the final run trains the grid's winner
BASE = ["train.optimizer.name=sgd", "train.scheduler.name=onecycle", "train.scheduler.cycle_momentum=true",
        "grid.schedule=halving"]

# key (or "section." prefix; the longest match wins) -> the stages a change of it invalidates
EXPECT: dict[str, set[str]] = {
    "dataset.": ALL,
    "dataset.root": NONE, "dataset.download": NONE,  # where the data is, not what it is
    "dataset.synthetic.": NONE,  # the base reads CIFAR-100
    "dataset.max_train": ALL - {"overfit"},  # the overfit check takes its own number of images
    "dataset.max_val": ALL - {"lr_finder"},  # the range test does not validate
    "dataset.max_test": {"sanity", "evaluate"},
    "preprocess.": ALL,
    "augment.": ALL - {"overfit"},  # the overfit check trains without augmentation
    "augment.off_last_epochs": GRID,  # only runs of several epochs have a last phase
    "model.bn_momentum": ALL, "model.identity_init": ALL,  # every model trained or checked, whatever its shapes
    "model.": {"sanity", "lr_finder"},  # the grid has its own architectures, the final run the winner's
    "train.seed": ALL,
    "train.batch_size": ALL,
    "train.eval_batch_size": {"overfit"} | GRID,
    "train.epochs": FINAL,
    "train.label_smoothing": {"lr_finder"} | GRID,  # the overfit check has none
    "train.precision": ALL - {"sanity"},
    "train.allow_tf32": ALL - {"sanity"},
    "train.channels_last": NONE, "train.compile": NONE, "train.compile_mode": NONE,
    "train.optimizer.name": {"lr_finder"} | GRID,  # the overfit check has its own
    "train.optimizer.lr": NONE,  # the range test sweeps lrs, the grid's axis replaces it, the winner's is final
    "train.optimizer.weight_decay": {"lr_finder"},
    "train.optimizer.betas": {"overfit"},  # Adam's: only the overfit check uses Adam
    "train.optimizer.eps": {"overfit"},
    "train.optimizer.momentum": {"lr_finder"},  # the grid and final run cycle it
    "train.optimizer.nesterov": {"lr_finder"} | GRID,
    "train.optimizer.decay_norm_and_bias": ALL - {"sanity"},
    "train.optimizer.norm_bias_lr_mult": ALL - {"sanity", "overfit"},  # the overfit check has one lr for all
    "train.ema.": {"overfit"} | GRID,  # what training keeps besides the weights; the range test only steps
    "train.scheduler.": GRID,
    "train.scheduler.min_lr_ratio": NONE,  # cosine's
    "hparams.": GRID,
    "grid.": GRID,
    "grid.max_stack": NONE, "grid.executor": NONE, "grid.batching": NONE, "grid.compile": NONE, "grid.engine": NONE, "grid.ray.": NONE,
    "lr_finder.": {"lr_finder"},
    "overfit.": {"overfit"},
    "sanity.": {"sanity"},
    "study.": FINAL,
    "study.profile": NONE, "study.description": NONE,
    "evaluation.": {"evaluate"},
    "paths.": NONE,
}
UNCHANGEABLE = {"model.name"}  # one allowed value

# keys whose change needs other keys set in both configs, or a value the generic rule cannot find
SPECIAL: dict[str, tuple[list[str], str]] = {
    "dataset.name": (["dataset.val_size=500"], "synthetic"),
    "dataset.download": ([], "false"),
    "train.precision": ([], "fp64"),
    "train.compile_mode": ([], "default"),
    "train.optimizer.name": (["train.scheduler.cycle_momentum=false"], "adam"),
    "train.scheduler.name": (["train.scheduler.cycle_momentum=false"], "cosine"),
    "train.scheduler.max_momentum": ([], "0.97"),
    "augment.flip": ([], "alternating"),
    "train.ema.decay": ([], "0.9"),
    "train.ema.warmup": (["train.ema.decay=0.9"], None),
    "train.ema.bn": (["train.ema.decay=0.9"], "recompute"),
    "train.ema.bn_images": (["train.ema.decay=0.9", "train.ema.bn=recompute"], None),
    "grid.batching": ([], "grouped"),
    "grid.compile": ([], "true"),
    "grid.schedule": ([], "exhaustive"),
    "grid.engine": ([], "ray"),
    "grid.ray.data": ([], "data_root"),
    "grid.ray.address": ([], "auto"),
    "grid.executor": ([], "vmap"),
    "grid.tta": ([], "flip"),
    "evaluation.tta": ([], "flip"),
    "overfit.optimizer": ([], "sgd"),
    "study.final_from": ([], "config"),
    "study.final_epochs": ([], "3"),
    "hparams.label_smoothing": ([], "[0.0,0.1]"),
    "dataset.root": ([], "/elsewhere"),
}
NONE_VALUE = "1000"  # an unset optional number: set it


def leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def changed(value) -> str:
    """A different value of the same kind, as ``--set`` text."""
    if isinstance(value, bool):
        return str(not value).lower()
    if isinstance(value, int):
        return str(value + 1)
    if isinstance(value, float):
        return repr(value * 0.5 if value else 0.1)
    if isinstance(value, list):
        return "[" + ",".join(changed(v) for v in value) + "]"
    if value is None:
        return NONE_VALUE
    return f"{value}_changed"


def fake_winner(cfg: Config, grid_fp: str) -> dict:
    """A row the grid could rank first, different whenever the grid's input is."""
    h = cfg.hparams
    return {"rank": 1, "lr": h.lr[0] * (1 + int(grid_fp, 16) % 997 / 1000), "weight_decay": h.weight_decay[0],
            "blocks": list(h.blocks[0]), "mid": h.bottleneck_mid[0],
            "label_smoothing": (h.label_smoothing or [cfg.train.label_smoothing])[0]}


def stage_fingerprints(cfg: Config) -> dict[str, str]:
    ident = "the-data"
    fp = {"sanity": fingerprint(inputs.sanity(cfg, ident)), "overfit": fingerprint(inputs.overfit(cfg, ident)),
          "lr_finder": fingerprint(inputs.lr_finder(cfg, ident)), "grid_search": fingerprint(inputs.grid(cfg, ident))}
    winner = fake_winner(cfg, fp["grid_search"]) if cfg.study.final_from == "grid" else None
    final_cfg = final_config(cfg, winner)  # as the study builds it
    fp["final"] = fingerprint(inputs.final(final_cfg, ident))
    fp["evaluate"] = fingerprint(inputs.evaluate(final_cfg, ident, fp["final"]))
    return fp


def expected(key: str) -> set[str]:
    matches = [k for k in EXPECT if key == k or (k.endswith(".") and key.startswith(k))]
    assert matches, f"{key}: a new config key; say in EXPECT which stages a change of it invalidates"
    return EXPECT[max(matches, key=len)]


KEYS = sorted(k for k in leaves(Config().to_dict()) if k not in UNCHANGEABLE)


def test_every_leaf_key_is_walked():
    assert len(KEYS) > 90 and "train.optimizer.lr" in KEYS and "grid.ray.cpus_per_stack" in KEYS


@pytest.mark.parametrize("key", KEYS)
def test_a_key_invalidates_exactly_the_stages_that_read_it(key):
    extra, value = SPECIAL.get(key, ([], None))
    base = load_config(None, BASE + extra)
    if value is None:
        value = changed(leaves(base.to_dict())[key])
    try:
        after = load_config(None, BASE + extra + [f"{key}={value}"])
    except ConfigError as exc:
        pytest.fail(f"{key}={value} is not a valid change ({exc}); give it a value in SPECIAL")
    assert leaves(after.to_dict())[key] != leaves(base.to_dict())[key]
    a, b = stage_fingerprints(base), stage_fingerprints(after)
    assert {s for s in inputs.STAGES if a[s] != b[s]} == expected(key)


def test_with_the_final_run_from_the_config_the_grid_feeds_nothing():
    base = ["study.final_from=config"]

    def invalidated(change: str) -> set[str]:
        a, b = stage_fingerprints(load_config(None, base)), stage_fingerprints(load_config(None, base + [change]))
        return {s for s in inputs.STAGES if a[s] != b[s]}

    assert invalidated("hparams.lr=[0.1]") == {"grid_search"}
    assert invalidated("train.optimizer.lr=0.2") == FINAL
    assert invalidated("model.blocks=[1,1,1]") == {"sanity", "lr_finder"} | FINAL
    assert invalidated("train.optimizer.betas=[0.8,0.99]") == ALL - {"sanity"}  # Adam everywhere


def test_fingerprint_of_typed_values():
    assert fingerprint((1, 2.5)) == fingerprint([1, 2.5]) != fingerprint([1, 2.5000001])
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint(0.1 + 0.2) != fingerprint(0.3)  # exact floats, not rounded text
    t = torch.arange(6.0).reshape(2, 3)
    assert fingerprint(t) == fingerprint(t.clone()) != fingerprint(t.reshape(3, 2))
    assert fingerprint(t) != fingerprint(t.double()) and fingerprint(t) != fingerprint(t + 1e-6)
    assert canonical(float("inf")) == "inf"
    assert fingerprint(Config()) == fingerprint(load_config(None))
    assert first_difference({"run": {"seed": 1}}, {"run": {"seed": 2}}) == "run.seed: 1 -> 2"


def test_resume_accepts_more_epochs_and_how_keys_and_names_what_else_changed():
    from cifar100_func.runtime.trainer import _resume_mismatch

    saved = load_config(None).to_dict()
    same = ["train.epochs=40", "train.compile=false", "train.compile_mode=default", "train.channels_last=false",
            "paths.runs_dir=elsewhere", "paths.tensorboard=false", "dataset.root=/data", "dataset.download=false",
            "grid.engine=ray", "study.final_seeds=3", "hparams.lr=[0.5]"]
    assert _resume_mismatch(saved, load_config(None, same), 1) is None
    why = _resume_mismatch(saved, load_config(None, ["train.optimizer.lr=0.1"]), 1)
    assert why is not None and why.startswith("train.optimizer.lr: 0.01 -> 0.1")
    assert "dataset.max_train" in (_resume_mismatch(saved, load_config(None, ["dataset.max_train=10"]), 1) or "")
    assert "schema" in (_resume_mismatch({"train": {"nosuch": 1}}, load_config(None), 1) or "")
