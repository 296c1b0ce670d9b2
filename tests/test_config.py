"""Config loading: the shipped file equals SPEC.md; bad input is one clear ConfigError naming the key."""

from __future__ import annotations

import dataclasses
import re

import pydantic
import pytest

from cifar100_func.config import Config, load_config
from cifar100_func.errors import ConfigError

from conftest import REPO


def test_shipped_config_is_the_spec_study():
    cfg = load_config(REPO / "configs" / "config.yaml")
    assert cfg.dataset.val_size == 5000 and cfg.dataset.split_seed == 42
    assert cfg.preprocess.mean == (0.5071, 0.4867, 0.4408) and cfg.preprocess.std == (0.2675, 0.2565, 0.2761)
    a = cfg.augment
    assert (a.crop_padding, a.hflip_p, a.brightness, a.contrast, a.saturation, a.hue) == (4, 0.5, 0.2, 0.2, 0.2, 0.1)
    assert cfg.model.blocks == (3, 3, 3) and cfg.model.bottleneck_mid == 16
    o = cfg.train.optimizer
    assert (o.name, o.lr, o.weight_decay, o.betas, o.eps) == ("adam", 0.01, 0.0005, (0.9, 0.999), 1e-8)
    assert cfg.train.batch_size == 64 and cfg.train.epochs == 20 and cfg.train.scheduler.name == "none"
    h = cfg.hparams
    assert len(h.lr) * len(h.weight_decay) * len(h.blocks) * len(h.bottleneck_mid) == 24
    assert cfg.grid.epochs == 5 and not cfg.grid.save_checkpoints


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        out.update(_flatten(value, dotted + ".") if isinstance(value, dict) else {dotted: value})
    return out


def test_schema_defaults_are_the_shipped_config():
    """configs/quick.yaml (and any partial config) relies on it: an unset key is the study's value."""
    shipped = _flatten(load_config(REPO / "configs" / "config.yaml").to_dict())
    defaults = _flatten(Config().to_dict())
    assert shipped.keys() == defaults.keys()
    differing = {k: (shipped[k], defaults[k]) for k in shipped if shipped[k] != defaults[k]}
    assert not differing, "config.yaml != schema defaults (yaml, schema): " + ", ".join(
        f"{k}: {a!r} != {b!r}" for k, (a, b) in differing.items())


def test_new_train_keys():
    cfg = load_config(REPO / "configs" / "config.yaml")
    assert (cfg.train.precision, cfg.train.allow_tf32, cfg.train.compile_mode) == ("fp32", False, "auto")
    cfg = load_config(REPO / "configs" / "config.yaml",
                      ["train.precision=auto", "train.allow_tf32=true", "train.compile_mode=reduce-overhead"])
    assert (cfg.train.precision, cfg.train.allow_tf32, cfg.train.compile_mode) == ("auto", True, "reduce-overhead")
    for mode in ("default", "max-autotune"):
        assert load_config(None, [f"train.compile_mode={mode}"]).train.compile_mode == mode


def test_parse_override_is_reexported():
    from cifar100_func import config, overrides

    assert config.parse_override is overrides.parse_override
    assert config.parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


def test_overrides_are_parsed_as_yaml(tmp_path):
    before = (REPO / "configs" / "config.yaml").read_text()
    cfg = load_config(REPO / "configs" / "config.yaml",
                      ["train.optimizer.lr=0.005", "model.blocks=[2,2,2]", "train.optimizer.eps=1e-7",
                       "dataset.max_train=100"])
    assert cfg.train.optimizer.lr == 0.005 and cfg.model.blocks == (2, 2, 2)
    assert cfg.train.optimizer.eps == 1e-7 and cfg.dataset.max_train == 100
    assert (REPO / "configs" / "config.yaml").read_text() == before  # overrides never touch the file
    for value, expected in (("null", None), ("true", True), ("false", False)):
        assert load_config(REPO / "configs" / "config.yaml", [f"grid.compile={value}"]).grid.compile is expected


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["train.optimizer.lr=-0.1"], "train.optimizer.lr"),
        (["model.blocks=[2,2]"], "model.blocks"),
        (["model.blocks=[2,0,2]"], "model.blocks[1]"),
        (["train.batch_size=abc"], "train.batch_size: expected int"),
        (["train.batch_size=1.5"], "train.batch_size"),
        (["train.precision=fp8"], "train.precision"),
        (["augment.hflip_p=2"], "augment.hflip_p"),
        (["train.optimizer.nosuch=1"], "train.optimizer.nosuch: no such key"),
        (["nosection.x=1"], "nosection: no such key"),
        (["train.optimizer.lr"], "dotted.key=value"),
        (["train.optimizer=3"], "train.optimizer: expected a mapping"),
        (["dataset.val_size=0"], "dataset.val_size"),
        (["hparams.lr=[]"], "hparams.lr"),
        (["train.channels_last=yes please"], "train.channels_last: expected bool"),
        (["train.precision=bf32"], "train.precision: expected one of 'auto', 'fp32', 'bf16', 'fp64'"),
        (["train.allow_tf32=maybe"], "train.allow_tf32: expected bool"),
        (["train.allow_tf32=1"], "train.allow_tf32: expected bool"),
        (["train.compile_mode=fast"], "train.compile_mode: expected one of 'auto', 'default'"),
        (["train.compile_mode=true"], "train.compile_mode"),
        (["grid.compile=sometimes"], "grid.compile"),
    ],
)
def test_bad_values_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as exc:
        load_config(REPO / "configs" / "config.yaml", overrides)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  optimiser:\n    lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.optimiser: unknown key"):
        load_config(p)


def test_malformed_yaml_and_missing_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_config_errors_exit_2_without_traceback(run_cli, tiny_config):
    code, out, err = run_cli("train", "--config", str(tiny_config()), "--set", "train.optimizer.lr=-1")
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and "train.optimizer.lr" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["dataset.split_seed=18446744073709551616"], "dataset.split_seed: 18446744073709551616 is out of range"),
        (["dataset.split_seed=-1"], "dataset.split_seed: -1 is out of range"),
        (["train.seed=9223372036854775808"], "train.seed: 9223372036854775808 is out of range"),
        (["preprocess.mean=[.nan, 0.5, 0.5]"], "preprocess.mean[0]: expected a finite number, got nan"),
        (["preprocess.std=[0.2, .inf, 0.2]"], "preprocess.std[1]: expected a finite number, got inf"),
        (["preprocess.std=[0.2, 0.2, 0]"], "preprocess.std[2]: 0 is out of range"),
        (["train.optimizer.lr=.nan"], "train.optimizer.lr: expected a finite number"),
        (["train.optimizer.lr=true"], "train.optimizer.lr: expected float, got True"),
        (["model.blocks=[2,2,2,2]"], "model.blocks: expected a list of 3 ints, got 4 values"),
        (["hparams.blocks=[[2,2]]"], "hparams.blocks[0]: expected a list of 3 ints, got 2 values"),
        (["hparams.blocks=[[2,2,65]]"], "hparams.blocks[0][2]: 65 is out of range, expected a value in [1, 64]"),
        (["hparams.lr=[0.1, abc]"], "hparams.lr[1]: expected float, got 'abc'"),
        (["dataset.download=maybe"], "dataset.download: expected bool or one of 'auto', got 'maybe'"),
        (["paths.runs_dir=''"], "paths.runs_dir: must not be empty"),
        (["dataset.max_train=0"], "dataset.max_train: 0 is out of range, expected a value > 0"),
        (["train.scheduler.max_momentum=0.5"], "train.scheduler.max_momentum: 0.5 is out of range"),
        (["train.scheduler.cycle_momentum=true"], "train.scheduler.cycle_momentum: needs"),
        (["dataset.name=synthetic", "dataset.synthetic.train_size=100"], "dataset.val_size: 5000 must be smaller"),
        (["lr_finder.end=1e-8"], "lr_finder.end: 1e-08 is out of range"),
    ],
)
def test_bounds_and_shapes_name_the_key(overrides, needle):
    """Each bad value is one line naming the dotted key; pydantic's own multi-line report never shows."""
    with pytest.raises(ConfigError) as exc:
        load_config(REPO / "configs" / "config.yaml", overrides)
    message = str(exc.value)
    assert needle in message and "\n" not in message
    assert "pydantic" not in message and "Input should" not in message


def test_seed_bounds_admit_the_largest_64_bit_seed():
    top = 2**63 - 1
    cfg = load_config(None, [f"dataset.split_seed={top}", f"train.seed={top}"])
    assert (cfg.dataset.split_seed, cfg.train.seed) == (top, top)
    assert load_config(None, ["dataset.split_seed=0"]).dataset.split_seed == 0


def test_unknown_keys_in_a_file_list_the_known_ones(tmp_path):
    p = tmp_path / "c.yaml"
    for text, needle in (("nosection: 1\n", "nosection: unknown key (known keys: augment, dataset,"),
                         ("train:\n  1: 2\n", "train.1: unknown key (known keys: allow_tf32,"),
                         ("train:\n  optimizer: 3\n", "train.optimizer: expected a mapping, got 3")):
        p.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(needle)):
            load_config(p)


def test_config_is_frozen():
    cfg = load_config(REPO / "configs" / "quick.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train = cfg.train  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.optimizer.lr = 0.5  # type: ignore[misc]
    with pytest.raises(AttributeError):  # the grid's axes are tuples: immutable all the way down
        cfg.hparams.lr.append(0.5)  # type: ignore[attr-defined]


def test_replace_copies_and_validates_again():
    """Commands derive configs with dataclasses.replace: the copy is new and checked like a loaded one."""
    cfg = load_config(REPO / "configs" / "quick.yaml")
    copy = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, epochs=2, optimizer=dataclasses.replace(cfg.train.optimizer, lr=0.5)))
    assert (copy.train.epochs, copy.train.optimizer.lr, cfg.train.optimizer.lr) == (2, 0.5, 0.1)
    assert copy.model is cfg.model
    with pytest.raises(pydantic.ValidationError):  # a bug in a command, not user input: pydantic's own report
        dataclasses.replace(cfg.train.optimizer, lr=-1.0)
    with pytest.raises(ConfigError, match="cycle_momentum"):
        dataclasses.replace(cfg.train, optimizer=dataclasses.replace(cfg.train.optimizer, name="adam"))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_loads_and_round_trips(name, tmp_path):
    from cifar100_func.config import from_dict, save_snapshot

    cfg = load_config(REPO / "configs" / name)
    assert from_dict(cfg.to_dict()) == cfg
    save_snapshot(cfg, tmp_path / "snap.yaml")
    assert load_config(tmp_path / "snap.yaml") == cfg


def test_what_leaves_out_how_fields():
    from cifar100_func.config import what

    w = what(Config())
    assert "paths" not in w and "compile" not in w["train"] and "root" not in w["dataset"]
    assert "ray" not in w["grid"] and w["train"]["optimizer"]["lr"] == 0.01


@pytest.mark.parametrize("override, needle", [("dataset.split_seed=18446744073709551616", "dataset.split_seed"),
                                              ("preprocess.std=[.nan, 0.2, 0.2]", "preprocess.std[0]"),
                                              ("train.seed=-1", "train.seed")])
def test_cli_bounds_exit_2_on_one_line(run_cli, tiny_config, override, needle):
    code, _, err = run_cli("train", "--config", str(tiny_config()), "--set", override)
    assert code == 2 and err.startswith(f"error: {needle}") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_huge_values_are_one_short_line(tmp_path):
    """A hostile value (an int of 5000 digits, a float beyond range) is named, not echoed in full or a traceback."""
    for override, needle in ((f"train.epochs={'9' * 5000}", "--set train.epochs: cannot parse value"),
                             (f"train.optimizer.lr=1{'0' * 400}", "train.optimizer.lr: expected float"),
                             ("train.optimizer.lr=1e400", "train.optimizer.lr: expected a finite number, got inf")):
        with pytest.raises(ConfigError) as exc:
            load_config(None, [override])
        assert str(exc.value).startswith(needle) and len(str(exc.value)) < 400
    p = tmp_path / "c.yaml"
    p.write_text(f"train:\n  epochs: {'9' * 5000}\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(p)
