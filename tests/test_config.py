"""Config loading: the shipped file equals SPEC.md; bad input is one clear ConfigError naming the key."""

from __future__ import annotations

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
    from cifar100_func import coerce, config

    assert config.parse_override is coerce.parse_override
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
