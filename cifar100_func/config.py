"""The study's configuration: typed dataclasses, loaded from YAML and validated, with ``--set`` overrides.

Every value is checked when the file is read: an unknown key, a wrong type or an impossible value is a
``ConfigError`` naming the dotted key. Overrides are applied in memory only; nothing here writes a file
except :func:`save_snapshot`, which commands call for the copy they keep next to their outputs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import ConfigError


# --------------------------------------------------------------------------------------------- schema
@dataclass
class SyntheticConfig:
    """Sizes of the generated stand-in data set (``dataset.name: synthetic``)."""

    train_size: int = 2000  # before the train/val split
    test_size: int = 500
    noise: float = 0.35  # pixel noise around each class prototype; larger is harder

    def validate(self) -> None:
        _positive("dataset.synthetic.train_size", self.train_size)
        _positive("dataset.synthetic.test_size", self.test_size)
        _range("dataset.synthetic.noise", self.noise, 0.0, 10.0)


@dataclass
class DatasetConfig:
    name: Literal["cifar100", "synthetic"] = "cifar100"
    root: Optional[str] = None  # the folder that contains cifar-100-python/
    download: bool = False
    num_classes: int = 100
    val_size: int = 5000
    split_seed: int = 42
    max_train: Optional[int] = None
    max_val: Optional[int] = None
    max_test: Optional[int] = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self) -> None:
        _positive("dataset.num_classes", self.num_classes)
        _positive("dataset.val_size", self.val_size)
        for key in ("max_train", "max_val", "max_test"):
            if getattr(self, key) is not None:
                _positive(f"dataset.{key}", getattr(self, key))
        if self.name == "synthetic" and self.val_size >= self.synthetic.train_size:
            raise ConfigError(
                f"dataset.val_size: {self.val_size} must be smaller than dataset.synthetic.train_size "
                f"({self.synthetic.train_size})"
            )
        self.synthetic.validate()


@dataclass
class PreprocessConfig:
    mean: tuple[float, float, float] = (0.5071, 0.4867, 0.4408)
    std: tuple[float, float, float] = (0.2675, 0.2565, 0.2761)

    def validate(self) -> None:
        for i, s in enumerate(self.std):
            _range(f"preprocess.std[{i}]", s, 1e-6, 10.0)


@dataclass
class AugmentConfig:
    enabled: bool = True
    crop_padding: int = 4
    hflip_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1

    def validate(self) -> None:
        _range("augment.crop_padding", self.crop_padding, 0, 16)
        _range("augment.hflip_p", self.hflip_p, 0.0, 1.0)
        for key in ("brightness", "contrast", "saturation"):
            _range(f"augment.{key}", getattr(self, key), 0.0, 1.0)
        _range("augment.hue", self.hue, 0.0, 0.5)


@dataclass
class ModelConfig:
    name: Literal["bottlenecknet"] = "bottlenecknet"
    blocks: tuple[int, int, int] = (3, 3, 3)
    bottleneck_mid: int = 16

    def validate(self) -> None:
        for i, b in enumerate(self.blocks):
            _range(f"model.blocks[{i}]", b, 1, 64)
        _range("model.bottleneck_mid", self.bottleneck_mid, 1, 4096)


@dataclass
class OptimizerConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 0.01
    weight_decay: float = 0.0005
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only

    def validate(self) -> None:
        _range("train.optimizer.lr", self.lr, 0.0, 100.0, low_open=True)
        _range("train.optimizer.weight_decay", self.weight_decay, 0.0, 10.0)
        for i, b in enumerate(self.betas):
            _range(f"train.optimizer.betas[{i}]", b, 0.0, 1.0, high_open=True)
        _range("train.optimizer.eps", self.eps, 0.0, 1.0, low_open=True)
        _range("train.optimizer.momentum", self.momentum, 0.0, 1.0, high_open=True)


@dataclass
class SchedulerConfig:
    name: Literal["none", "cosine", "onecycle"] = "none"
    warmup_pct: float = 0.25  # onecycle: fraction of steps spent rising to the peak lr
    div_factor: float = 25.0  # onecycle: initial lr = peak / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = initial lr / final_div_factor
    min_lr_ratio: float = 0.0  # cosine: final lr = peak * min_lr_ratio

    def validate(self) -> None:
        _range("train.scheduler.warmup_pct", self.warmup_pct, 0.0, 1.0, low_open=True, high_open=True)
        _range("train.scheduler.div_factor", self.div_factor, 1.0, 1e9)
        _range("train.scheduler.final_div_factor", self.final_div_factor, 1.0, 1e12)
        _range("train.scheduler.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)


@dataclass
class TrainConfig:
    seed: int = 42
    batch_size: int = 64
    eval_batch_size: int = 500
    epochs: int = 20
    label_smoothing: float = 0.0
    precision: Literal["fp32", "bf16", "fp64"] = "fp32"  # fp64: for numerical checks
    channels_last: bool = False
    compile: bool = False
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def validate(self) -> None:
        _range("train.batch_size", self.batch_size, 2, 1 << 16)
        _range("train.eval_batch_size", self.eval_batch_size, 1, 1 << 16)
        _range("train.epochs", self.epochs, 1, 100000)
        _range("train.label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        self.optimizer.validate()
        self.scheduler.validate()


@dataclass
class HparamsConfig:
    """The grid's axes: every combination is one configuration."""

    lr: list[float] = field(default_factory=lambda: [0.002, 0.005, 0.01])
    weight_decay: list[float] = field(default_factory=lambda: [5e-5, 5e-4])
    blocks: list[tuple[int, int, int]] = field(default_factory=lambda: [(2, 2, 2), (3, 3, 3)])
    bottleneck_mid: list[int] = field(default_factory=lambda: [16, 32])

    def validate(self) -> None:
        for key in ("lr", "weight_decay", "blocks", "bottleneck_mid"):
            if not getattr(self, key):
                raise ConfigError(f"hparams.{key}: must list at least one value")
        for i, v in enumerate(self.lr):
            _range(f"hparams.lr[{i}]", v, 0.0, 100.0, low_open=True)
        for i, v in enumerate(self.weight_decay):
            _range(f"hparams.weight_decay[{i}]", v, 0.0, 10.0)
        for i, bl in enumerate(self.blocks):
            for j, b in enumerate(bl):
                _range(f"hparams.blocks[{i}][{j}]", b, 1, 64)
        for i, v in enumerate(self.bottleneck_mid):
            _range(f"hparams.bottleneck_mid[{i}]", v, 1, 4096)


@dataclass
class GridConfig:
    epochs: int = 5
    independent_seeds: bool = False
    max_stack: Optional[int] = None
    save_checkpoints: bool = False
    # how vmap runs stacked convolutions and batch norms (cifar100_func.batching); auto: per_model if eager on a CPU
    batching: Literal["auto", "per_model", "grouped"] = "auto"
    # compile the stacked step: null follows train.compile for stacks of at least 200 steps (shorter ones
    # spend more time compiling than it saves); true / false force it
    compile: Optional[bool] = None

    def validate(self) -> None:
        _range("grid.epochs", self.epochs, 1, 100000)
        if self.max_stack is not None:
            _positive("grid.max_stack", self.max_stack)


@dataclass
class LrFinderConfig:
    start: float = 1e-7
    end: float = 1.0
    seeds: int = 3  # stacked under vmap; the curve is their mean with a min-max band
    stop_factor: float = 4.0  # stop once the smoothed loss exceeds stop_factor x its minimum
    smoothing: float = 0.98  # EMA factor of the smoothed loss
    max_steps: Optional[int] = None  # default: one epoch of batches

    def validate(self) -> None:
        _range("lr_finder.start", self.start, 0.0, 100.0, low_open=True)
        _range("lr_finder.end", self.end, self.start, 1000.0, low_open=True)
        _range("lr_finder.seeds", self.seeds, 1, 64)
        _range("lr_finder.stop_factor", self.stop_factor, 1.0, 1e6, low_open=True)
        _range("lr_finder.smoothing", self.smoothing, 0.0, 1.0, high_open=True)
        if self.max_steps is not None:
            _range("lr_finder.max_steps", self.max_steps, 5, 10**7)


@dataclass
class OverfitConfig:
    """SPEC experiment 2: a tiny training subset must be learnt by heart, else something is broken."""

    num_train: int = 50
    blocks: tuple[int, int, int] = (2, 2, 2)
    bottleneck_mid: int = 16
    lr: float = 0.001
    weight_decay: float = 0.0
    epochs: int = 50
    augment: bool = False
    target_acc: float = 0.98

    def validate(self) -> None:
        _range("overfit.num_train", self.num_train, 2, 10**6)
        for i, b in enumerate(self.blocks):
            _range(f"overfit.blocks[{i}]", b, 1, 64)
        _range("overfit.bottleneck_mid", self.bottleneck_mid, 1, 4096)
        _range("overfit.lr", self.lr, 0.0, 100.0, low_open=True)
        _range("overfit.weight_decay", self.weight_decay, 0.0, 10.0)
        _range("overfit.epochs", self.epochs, 1, 100000)
        _range("overfit.target_acc", self.target_acc, 0.0, 1.0)


@dataclass
class SanityConfig:
    num_samples: int = 8  # images shown before/after augmentation

    def validate(self) -> None:
        _range("sanity.num_samples", self.num_samples, 1, 64)


@dataclass
class StudyConfig:
    """The whole study in one command (``cifar100_func.study``)."""

    profile: str = "full"  # a name printed in the report ("quick" says plainly that it is a reduced run)
    description: str = "the study as SPEC.md states it"
    final_from: Literal["grid", "config"] = "grid"  # final run: the grid's best configuration, or train/model as set
    final_epochs: Optional[int] = None  # default: train.epochs

    def validate(self) -> None:
        if self.final_epochs is not None:
            _range("study.final_epochs", self.final_epochs, 1, 100000)


@dataclass
class PathsConfig:
    runs_dir: str = "runs"
    artifacts_dir: str = "artifacts"
    report_dir: str = "report"

    def validate(self) -> None:
        for key in ("runs_dir", "artifacts_dir", "report_dir"):
            if not getattr(self, key):
                raise ConfigError(f"paths.{key}: must not be empty")


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hparams: HparamsConfig = field(default_factory=HparamsConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    lr_finder: LrFinderConfig = field(default_factory=LrFinderConfig)
    overfit: OverfitConfig = field(default_factory=OverfitConfig)
    sanity: SanityConfig = field(default_factory=SanityConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of YAML-safe values (tuples become lists)."""
        return _plain(dataclasses.asdict(self))


# ----------------------------------------------------------------------------------------- validation
def _positive(key: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value!r}")


def _range(key: str, value: float, low: float, high: float, *, low_open=False, high_open=False) -> None:
    bad_low = value <= low if low_open else value < low
    bad_high = value >= high if high_open else value > high
    if bad_low or bad_high or (isinstance(value, float) and math.isnan(value)):
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ConfigError(f"{key}: {value!r} is out of range, expected a value in {lo}{low}, {high}{hi}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {_type_name(args[0])}s"
        return f"a list of {_type_name(args[0])}s"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "int", float: "float", bool: "bool", str: "string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (lists to tuples, ints to floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    wrong = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise wrong
    if origin is Literal:
        if value not in args:
            raise wrong
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise wrong
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {_type_name(tp)}, got {len(value)} values: {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        items = [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if tp is float:
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                raise wrong from None
        raise wrong
    if tp is str:
        if not isinstance(value, str):
            raise wrong
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in the schema, not user input


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: unknown key (known keys: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------- loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.optimizer.lr=0.005"`` -> (["train", "optimizer", "lr"], 0.005); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected dotted.key=value, e.g. --set train.optimizer.lr=0.005")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} as YAML ({_first_line(exc)})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of the raw config mapping with each ``dotted.key=value`` applied."""
    data = _plain(data)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        cls: Any = Config
        for depth, part in enumerate(path):
            dotted = ".".join(path[: depth + 1])
            fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
            if part not in fields:
                raise ConfigError(f"--set {dotted}: no such key (known keys: {', '.join(sorted(fields))})")
            cls = typing.get_type_hints(cls)[part] if dataclasses.is_dataclass(cls) else None
            if depth == len(path) - 1:
                node[part] = value
            else:
                if not dataclasses.is_dataclass(cls):
                    raise ConfigError(f"--set {dotted}: is a value, not a section")
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {dotted}: is a section in the schema but not in the config file")
    return data


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (or the defaults when None), apply ``overrides``, validate, and return a :class:`Config`."""
    data: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: malformed YAML ({_first_line(exc)})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    config = from_dict(data)
    return config


def from_dict(data: dict) -> Config:
    """Build and validate a :class:`Config` from a plain mapping (a parsed file or a checkpoint's copy)."""
    config = _build(Config, data, "")
    config.validate()
    return config


def save_snapshot(config: Config, path: str | os.PathLike) -> None:
    """Write the resolved config next to a command's outputs (the only config file any command writes)."""
    from .io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
