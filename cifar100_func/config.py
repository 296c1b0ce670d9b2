"""The study's configuration: typed dataclasses, loaded from YAML and validated, with ``--set`` overrides.

This module is the schema; the generic checking and conversion is :mod:`cifar100_func.coerce`. Every value
is checked when the file is read: an unknown key, a wrong type or an impossible value is a ``ConfigError``
naming the dotted key. The schema's defaults are the values of ``configs/config.yaml``. Overrides are applied
in memory only; nothing here writes a file except :func:`save_snapshot`, which commands call for the copy
they keep next to their outputs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from . import coerce
from .coerce import build, check_positive, check_range, first_line, plain
from .coerce import parse_override as parse_override  # noqa: F401 - re-exported: grid_search parses --set with it
from .errors import ConfigError


# --------------------------------------------------------------------------------------------- schema
def how(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A field that says *how* a run executes (device, compilation, engine, paths, where the data is), not *what*
    it computes: fingerprints of results leave it out (:func:`what`)."""
    return field(default=default, default_factory=default_factory, metadata={"how": True})


@dataclass
class SyntheticConfig:
    """Sizes of the generated stand-in data set (``dataset.name: synthetic``)."""

    train_size: int = 2000  # before the train/val split
    test_size: int = 500
    noise: float = 0.35  # pixel noise around each class prototype; larger is harder

    def validate(self) -> None:
        check_positive("dataset.synthetic.train_size", self.train_size)
        check_positive("dataset.synthetic.test_size", self.test_size)
        check_range("dataset.synthetic.noise", self.noise, 0.0, 10.0)


@dataclass
class DatasetConfig:
    name: Literal["cifar100", "synthetic"] = "cifar100"
    root: Optional[str] = how(None)  # the folder that contains cifar-100-python/
    # auto: fetch the official archive (torchvision's downloader, checksum checked) when the files are missing,
    # and say so plainly when there is no network; true: the same, and a failed download is an error; false: never
    download: Union[bool, Literal["auto"]] = how("auto")
    num_classes: int = 100
    val_size: int = 5000
    split_seed: int = 42
    max_train: Optional[int] = None
    max_val: Optional[int] = None
    max_test: Optional[int] = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self) -> None:
        check_positive("dataset.num_classes", self.num_classes)
        check_positive("dataset.val_size", self.val_size)
        for key in ("max_train", "max_val", "max_test"):
            if getattr(self, key) is not None:
                check_positive(f"dataset.{key}", getattr(self, key))
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
            check_range(f"preprocess.std[{i}]", s, 1e-6, 10.0)


@dataclass
class AugmentConfig:
    enabled: bool = True
    crop_padding: int = 4
    hflip_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1
    off_last_epochs: int = 0  # the last N epochs of a run train on plain images (a short final phase)

    def validate(self) -> None:
        check_range("augment.crop_padding", self.crop_padding, 0, 16)
        check_range("augment.off_last_epochs", self.off_last_epochs, 0, 100000)
        check_range("augment.hflip_p", self.hflip_p, 0.0, 1.0)
        for key in ("brightness", "contrast", "saturation"):
            check_range(f"augment.{key}", getattr(self, key), 0.0, 1.0)
        check_range("augment.hue", self.hue, 0.0, 0.5)


@dataclass
class ModelConfig:
    name: Literal["bottlenecknet"] = "bottlenecknet"
    blocks: tuple[int, int, int] = (3, 3, 3)
    bottleneck_mid: int = 16

    def validate(self) -> None:
        for i, b in enumerate(self.blocks):
            check_range(f"model.blocks[{i}]", b, 1, 64)
        check_range("model.bottleneck_mid", self.bottleneck_mid, 1, 4096)


@dataclass
class OptimizerConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 0.01
    weight_decay: float = 0.0005
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    # false: weight decay on convolution and linear weights only (not on batch-norm weights and biases)
    decay_norm_and_bias: bool = True

    def validate(self) -> None:
        check_range("train.optimizer.lr", self.lr, 0.0, 100.0, low_open=True)
        check_range("train.optimizer.weight_decay", self.weight_decay, 0.0, 10.0)
        for i, b in enumerate(self.betas):
            check_range(f"train.optimizer.betas[{i}]", b, 0.0, 1.0, high_open=True)
        check_range("train.optimizer.eps", self.eps, 0.0, 1.0, low_open=True)
        check_range("train.optimizer.momentum", self.momentum, 0.0, 1.0, high_open=True)


@dataclass
class SchedulerConfig:
    name: Literal["none", "cosine", "onecycle"] = "none"
    warmup_pct: float = 0.25  # onecycle: fraction of steps spent rising to the peak lr
    div_factor: float = 25.0  # onecycle: initial lr = peak / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = initial lr / final_div_factor
    min_lr_ratio: float = 0.0  # cosine: final lr = peak * min_lr_ratio
    # onecycle with sgd: momentum falls from max to base while the lr rises and comes back as it falls (as
    # torch.optim.lr_scheduler.OneCycleLR(cycle_momentum=True)); false: the optimiser's constant momentum
    cycle_momentum: bool = False
    base_momentum: float = 0.85
    max_momentum: float = 0.95

    def validate(self) -> None:
        check_range("train.scheduler.base_momentum", self.base_momentum, 0.0, 1.0, high_open=True)
        check_range("train.scheduler.max_momentum", self.max_momentum, self.base_momentum, 1.0, high_open=True)
        check_range("train.scheduler.warmup_pct", self.warmup_pct, 0.0, 1.0, low_open=True, high_open=True)
        check_range("train.scheduler.div_factor", self.div_factor, 1.0, 1e9)
        check_range("train.scheduler.final_div_factor", self.final_div_factor, 1.0, 1e12)
        check_range("train.scheduler.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)


@dataclass
class TrainConfig:
    seed: int = 42
    batch_size: int = 64
    eval_batch_size: int = 500
    epochs: int = 20
    label_smoothing: float = 0.0
    # auto: bf16 where the device computes it natively (CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX), else
    # fp32; fp64: for numerical checks
    precision: Literal["auto", "fp32", "bf16", "fp64"] = "fp32"
    allow_tf32: bool = False  # CUDA only: TF32 matmuls/convolutions in fp32 runs; off so that CPU and GPU runs agree
    channels_last: bool = how(True)  # NHWC activations
    compile: bool = how(True)  # torch.compile the training step
    # auto: "default" on a CPU, "reduce-overhead" (CUDA graphs) on CUDA
    compile_mode: Literal["auto", "default", "reduce-overhead", "max-autotune"] = how("auto")
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def validate(self) -> None:
        check_range("train.batch_size", self.batch_size, 2, 1 << 16)
        check_range("train.eval_batch_size", self.eval_batch_size, 1, 1 << 16)
        check_range("train.epochs", self.epochs, 1, 100000)
        check_range("train.label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        self.optimizer.validate()
        self.scheduler.validate()
        if self.scheduler.cycle_momentum and (self.scheduler.name != "onecycle" or self.optimizer.name != "sgd"):
            raise ConfigError("train.scheduler.cycle_momentum: needs train.scheduler.name onecycle and "
                              f"train.optimizer.name sgd (got {self.scheduler.name}, {self.optimizer.name})")


@dataclass
class HparamsConfig:
    """The grid's axes: every combination is one configuration."""

    lr: list[float] = field(default_factory=lambda: [0.002, 0.005, 0.01])
    weight_decay: list[float] = field(default_factory=lambda: [5e-5, 5e-4])
    blocks: list[tuple[int, int, int]] = field(default_factory=lambda: [(2, 2, 2), (3, 3, 3)])
    bottleneck_mid: list[int] = field(default_factory=lambda: [16, 32])
    label_smoothing: Optional[list[float]] = None  # null: train.label_smoothing for every configuration

    def validate(self) -> None:
        for key in ("lr", "weight_decay", "blocks", "bottleneck_mid"):
            if not getattr(self, key):
                raise ConfigError(f"hparams.{key}: must list at least one value")
        if self.label_smoothing is not None:
            if not self.label_smoothing:
                raise ConfigError("hparams.label_smoothing: must list at least one value (or be null)")
            for i, v in enumerate(self.label_smoothing):
                check_range(f"hparams.label_smoothing[{i}]", v, 0.0, 1.0, high_open=True)
        for i, v in enumerate(self.lr):
            check_range(f"hparams.lr[{i}]", v, 0.0, 100.0, low_open=True)
        for i, v in enumerate(self.weight_decay):
            check_range(f"hparams.weight_decay[{i}]", v, 0.0, 10.0)
        for i, bl in enumerate(self.blocks):
            for j, b in enumerate(bl):
                check_range(f"hparams.blocks[{i}][{j}]", b, 1, 64)
        for i, v in enumerate(self.bottleneck_mid):
            check_range(f"hparams.bottleneck_mid[{i}]", v, 1, 4096)


@dataclass
class HalvingConfig:
    """Successive halving (``grid.schedule: halving``): rungs at ``min_epochs * eta**r`` epochs up to
    ``grid.epochs``; at each rung the best 1/eta of the running configurations (at least one) go on."""

    min_epochs: float = 1.0  # the first rung; may be a fraction of an epoch
    eta: int = 3  # 1 keeps everyone (the rungs only split the training)

    def validate(self) -> None:
        check_range("grid.halving.min_epochs", self.min_epochs, 0.0, 100000.0, low_open=True)
        check_range("grid.halving.eta", self.eta, 1, 1000)


@dataclass
class RayConfig:
    """``grid.engine: ray``: each stack of a rung is one Ray task (Ray Core), run in parallel where the cluster has
    room; the driver keeps the records, ranks and prunes."""

    address: Optional[str] = None  # null: start (or join) a local cluster; "auto" or "host:port": a running one
    cpus_per_stack: int = 1  # a task's CPUs (and torch threads) when the cluster has no GPUs; else one GPU each
    max_retries: int = 2  # Ray runs a stack again when its worker process died
    data: Literal["object_store", "data_root"] = "object_store"  # how the data reaches the workers: once through
    # Ray's object store, or read by each worker from the data root (shared storage on a multi-machine cluster)

    def validate(self) -> None:
        check_range("grid.ray.cpus_per_stack", self.cpus_per_stack, 1, 1024)
        check_range("grid.ray.max_retries", self.max_retries, 0, 100)


@dataclass
class GridConfig:
    epochs: int = 5
    independent_seeds: bool = False
    max_stack: Optional[int] = how(None)
    save_checkpoints: bool = False
    # how vmap runs stacked convolutions and batch norms (cifar100_func.runtime.batching); auto: per_model if eager on a CPU
    batching: Literal["auto", "per_model", "grouped"] = how("auto")
    max_train: Optional[int] = None  # train the grid on the first N training images only (null: all)
    # compile the stacked step: null follows train.compile for stacks of at least 200 steps (shorter ones
    # spend more time compiling than it saves); true / false force it
    compile: Optional[bool] = how(None)
    # exhaustive: every configuration for grid.epochs; halving: successive halving across all stacks
    schedule: Literal["exhaustive", "halving"] = "exhaustive"
    halving: HalvingConfig = field(default_factory=HalvingConfig)
    engine: Literal["local", "ray"] = how("local")  # local: stacks one after another in this process
    ray: RayConfig = how(default_factory=RayConfig)

    def validate(self) -> None:
        check_range("grid.epochs", self.epochs, 1, 100000)
        self.ray.validate()
        if self.max_train is not None:
            check_positive("grid.max_train", self.max_train)
        self.halving.validate()
        if self.max_stack is not None:
            check_positive("grid.max_stack", self.max_stack)


@dataclass
class LrFinderConfig:
    start: float = 1e-7
    end: float = 1.0
    seeds: int = 3  # stacked under vmap; the curve is their mean with a min-max band
    stop_factor: float = 4.0  # stop once the smoothed loss exceeds stop_factor x its minimum
    smoothing: float = 0.98  # EMA factor of the smoothed loss
    max_steps: Optional[int] = None  # default: one epoch of batches

    def validate(self) -> None:
        check_range("lr_finder.start", self.start, 0.0, 100.0, low_open=True)
        check_range("lr_finder.end", self.end, self.start, 1000.0, low_open=True)
        check_range("lr_finder.seeds", self.seeds, 1, 64)
        check_range("lr_finder.stop_factor", self.stop_factor, 1.0, 1e6, low_open=True)
        check_range("lr_finder.smoothing", self.smoothing, 0.0, 1.0, high_open=True)
        if self.max_steps is not None:
            check_range("lr_finder.max_steps", self.max_steps, 5, 10**7)


@dataclass
class OverfitConfig:
    """SPEC experiment 2: a tiny training subset must be learnt by heart, else something is broken."""

    num_train: int = 50
    max_val: Optional[int] = None  # validate on the first N validation images (null: all)
    blocks: tuple[int, int, int] = (2, 2, 2)
    bottleneck_mid: int = 16
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"  # the SPEC's; independent of train.optimizer
    lr: float = 0.001
    weight_decay: float = 0.0
    epochs: int = 50
    augment: bool = False
    target_acc: float = 0.98

    def validate(self) -> None:
        check_range("overfit.num_train", self.num_train, 2, 10**6)
        if self.max_val is not None:
            check_positive("overfit.max_val", self.max_val)
        for i, b in enumerate(self.blocks):
            check_range(f"overfit.blocks[{i}]", b, 1, 64)
        check_range("overfit.bottleneck_mid", self.bottleneck_mid, 1, 4096)
        check_range("overfit.lr", self.lr, 0.0, 100.0, low_open=True)
        check_range("overfit.weight_decay", self.weight_decay, 0.0, 10.0)
        check_range("overfit.epochs", self.epochs, 1, 100000)
        check_range("overfit.target_acc", self.target_acc, 0.0, 1.0)


@dataclass
class SanityConfig:
    num_samples: int = 8  # images shown before/after augmentation

    def validate(self) -> None:
        check_range("sanity.num_samples", self.num_samples, 1, 64)


@dataclass
class StudyConfig:
    """The whole study in one command (``cifar100_func.commands.study``)."""

    profile: str = how("full")  # a name printed in the report ("quick" says plainly that it is a reduced run)
    description: str = how("the study as SPEC.md states it (meant for a GPU; on a 2-core CPU it takes many hours)")
    final_from: Literal["grid", "config"] = "grid"  # final run: the grid's best configuration, or train/model as set
    final_epochs: Optional[int] = None  # default: train.epochs
    final_seeds: int = 1  # N > 1: the final run is a seed ensemble of N models trained as one stack

    def validate(self) -> None:
        if self.final_epochs is not None:
            check_range("study.final_epochs", self.final_epochs, 1, 100000)
        check_range("study.final_seeds", self.final_seeds, 1, 1024)


@dataclass
class PathsConfig:
    runs_dir: str = "runs"
    artifacts_dir: str = "artifacts"
    report_dir: str = "report"
    tensorboard: bool = True  # event files under each command's folder (tb/); tensorboard --logdir <runs_dir>

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
    paths: PathsConfig = how(default_factory=PathsConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of YAML-safe values (tuples become lists)."""
        return plain(dataclasses.asdict(self))


# ----------------------------------------------------------------------------------------- loading
def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of the raw config mapping with each ``dotted.key=value`` applied (keys checked against
    :class:`Config`)."""
    return coerce.apply_overrides(Config, data, overrides)


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
            raise ConfigError(f"{p}: malformed YAML ({first_line(exc)})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    config = from_dict(data)
    return config


def from_dict(data: dict) -> Config:
    """Build and validate a :class:`Config` from a plain mapping (a parsed file or a checkpoint's copy)."""
    config = build(Config, data, "")
    config.validate()
    return config


def changed_keys(before: Config, after: Config) -> list[str]:
    """``dotted.key=value`` for every value ``after`` changes (what the report says of the final run)."""
    def flat(d: dict, prefix: str = "") -> dict:
        out: dict = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(before.to_dict()), flat(after.to_dict())
    return [f"{k}={b[k]}" for k in b if a.get(k) != b[k]]


def what(cfg: Any) -> Any:
    """``cfg`` (a config or one of its sections) as a plain dict without the fields marked :func:`how`: what a
    result computed from it depends on."""
    if not dataclasses.is_dataclass(cfg):
        return plain(cfg)
    return {f.name: what(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if not f.metadata.get("how")}


def save_snapshot(config: Config, path: str | os.PathLike) -> None:
    """Write the resolved config next to a command's outputs (the only config file any command writes)."""
    from .runtime.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
