"""The study's configuration: a frozen, typed schema (pydantic dataclasses), loaded from YAML, with ``--set``.

Every value is checked when the file is read: an unknown key, a wrong type or an impossible value is one
``ConfigError`` line naming the dotted key (:mod:`.config_errors` turns pydantic's report into it). The schema's
defaults are the values of ``configs/config.yaml``. Configs are immutable: derive one with
``dataclasses.replace`` (which validates again). Nothing here writes a file except :func:`save_snapshot`.

Why pydantic and not OmegaConf structured configs: OmegaConf 2.3 has no ``Literal``, no ``Union[bool,
Literal["auto"]]`` and no fixed-length tuples (2.4 adds them, tuples experimental) and neither checks numeric
bounds, which pydantic validates natively.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import annotated_types as at
import pydantic
import yaml
from pydantic import BeforeValidator, ConfigDict, Strict

from .config_errors import explain
from .errors import ConfigError
from .overrides import apply_overrides as _apply_overrides
from .overrides import first_line
from .overrides import parse_override as parse_override  # noqa: F401 - re-exported: grid_search parses --set with it


# ------------------------------------------------------------------------------------------ value types
def _yaml_float(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string: accept numeric strings (anything else is left for the type check)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Int = Annotated[int, Strict()]  # no bools, floats or numeric strings
Bool = Annotated[bool, Strict()]  # true/false only: not 1, not the string "true"
Str = Annotated[str, Strict()]
Float = Annotated[float, BeforeValidator(_yaml_float), Strict()]  # ints and numeric strings; finite (see _SCHEMA)
Seed = Annotated[Int, at.Interval(ge=0, lt=2**63)]  # torch seeds are 64-bit; seed + index must stay below 2**64


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> at.Interval:
    """The bounds of a numeric field: [low, high], each end open on request."""
    return at.Interval(**{"gt" if low_open else "ge": low, "lt" if high_open else "le": high})


Positive = Annotated[Int, at.Gt(0)]
Blocks = tuple[Annotated[Int, within(1, 64)], Annotated[Int, within(1, 64)], Annotated[Int, within(1, 64)]]
Mid = Annotated[Int, within(1, 4096)]
Lr = Annotated[Float, within(0.0, 100.0, low_open=True)]
Decay = Annotated[Float, within(0.0, 10.0)]
Smoothing = Annotated[Float, within(0.0, 1.0, high_open=True)]
Epochs = Annotated[Int, within(1, 100000)]
Probability = Annotated[Float, within(0.0, 1.0)]

_SCHEMA = ConfigDict(extra="forbid", allow_inf_nan=False)
section = pydantic.dataclasses.dataclass(frozen=True, config=_SCHEMA)


def how(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A field that says *how* a run executes (device, compilation, engine, paths, where the data is), not *what*
    it computes: fingerprints of results leave it out (:func:`what`)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"how": True})



# --------------------------------------------------------------------------------------------- schema
@section
class SyntheticConfig:
    """Sizes of the generated stand-in data set (``dataset.name: synthetic``)."""

    train_size: Positive = 2000  # before the train/val split
    test_size: Positive = 500
    noise: Annotated[Float, within(0.0, 10.0)] = 0.35  # pixel noise around each class prototype; larger is harder


@section
class DatasetConfig:
    name: Literal["cifar100", "synthetic"] = "cifar100"
    root: Optional[Str] = how(None)  # the folder that contains cifar-100-python/
    # auto: fetch the official archive (torchvision's downloader, checksum checked) when the files are missing,
    # and say so plainly when there is no network; true: the same, and a failed download is an error; false: never
    download: Union[Bool, Literal["auto"]] = how("auto")
    num_classes: Positive = 100
    val_size: Positive = 5000
    split_seed: Seed = 42
    max_train: Optional[Positive] = None
    max_val: Optional[Positive] = None
    max_test: Optional[Positive] = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        if self.name == "synthetic" and self.val_size >= self.synthetic.train_size:
            raise ConfigError(f"dataset.val_size: {self.val_size} must be smaller than dataset.synthetic.train_size "
                              f"({self.synthetic.train_size})")


Channel = Annotated[Float, within(-10.0, 10.0)]
Spread = Annotated[Float, within(1e-6, 10.0)]


@section
class PreprocessConfig:
    mean: tuple[Channel, Channel, Channel] = (0.5071, 0.4867, 0.4408)
    std: tuple[Spread, Spread, Spread] = (0.2675, 0.2565, 0.2761)


@section
class AugmentConfig:
    enabled: Bool = True
    crop_padding: Annotated[Int, within(0, 16)] = 4
    hflip_p: Probability = 0.5
    # random: a coin per image and epoch (p = hflip_p); alternating: each image mirrored every other epoch, from a
    # per-image coin drawn once from the seed (hflip_p unused)
    flip: Literal["random", "alternating"] = "random"
    brightness: Probability = 0.2
    contrast: Probability = 0.2
    saturation: Probability = 0.2
    hue: Annotated[Float, within(0.0, 0.5)] = 0.1
    # the last N epochs of a run train on plain images (a short final phase)
    off_last_epochs: Annotated[Int, within(0, 100000)] = 0


Beta = Annotated[Float, within(0.0, 1.0, high_open=True)]


@section
class ModelConfig:
    name: Literal["bottlenecknet"] = "bottlenecknet"
    blocks: Blocks = (3, 3, 3)
    bottleneck_mid: Mid = 16
    # running = (1 - m) * running + m * batch statistics in training (nn.BatchNorm2d's momentum)
    bn_momentum: Annotated[Float, within(0.0, 1.0, low_open=True)] = 0.1
    identity_init: Bool = False  # each residual branch's last batch norm starts with weight 0 (block = shortcut)


@section
class OptimizerConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Lr = 0.01
    weight_decay: Decay = 0.0005
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: Annotated[Float, within(0.0, 1.0, low_open=True)] = 1e-8
    momentum: Beta = 0.9  # sgd only
    nesterov: Bool = True  # sgd only
    # false: weight decay on convolution and linear weights only (not on batch-norm weights and biases)
    decay_norm_and_bias: Bool = True
    # the lr of batch-norm weights and biases and of the classifier's bias is this times the lr (a second group)
    norm_bias_lr_mult: Annotated[Float, within(0.0, 1000.0, low_open=True)] = 1.0


@section
class SchedulerConfig:
    name: Literal["none", "cosine", "onecycle"] = "none"
    # onecycle: fraction of steps spent rising to the peak lr
    warmup_pct: Annotated[Float, within(0.0, 1.0, low_open=True, high_open=True)] = 0.25
    div_factor: Annotated[Float, within(1.0, 1e9)] = 25.0  # onecycle: initial lr = peak / div_factor
    # onecycle: final lr = initial lr / final_div_factor
    final_div_factor: Annotated[Float, within(1.0, 1e12)] = 1e4
    min_lr_ratio: Probability = 0.0  # cosine: final lr = peak * min_lr_ratio
    # onecycle with sgd: momentum falls from max to base while the lr rises and comes back as it falls (as
    # torch.optim.lr_scheduler.OneCycleLR(cycle_momentum=True)); false: the optimiser's constant momentum
    cycle_momentum: Bool = False
    base_momentum: Beta = 0.85
    max_momentum: Beta = 0.95  # at least base_momentum

    def __post_init__(self) -> None:
        if self.max_momentum < self.base_momentum:
            raise ConfigError(f"train.scheduler.max_momentum: {self.max_momentum!r} is out of range, expected a "
                              f"value in [{self.base_momentum}, 1.0) (at least train.scheduler.base_momentum)")


@section
class EmaConfig:
    """An exponential moving average of the weights, kept by the optimiser (off while ``decay`` is null)."""

    decay: Optional[Annotated[Float, within(0.0, 1.0, high_open=True)]] = None
    warmup: Bool = False  # decay min(decay, (1 + t) / (10 + t)) after t averaged steps
    # the batch-norm statistics of the averaged weights: average: an average of the running statistics alongside;
    # recompute: recomputed on the first bn_images training images (rounded down to whole batches of
    # train.eval_batch_size) at each validation (train-mode passes, cumulative average)
    bn: Literal["average", "recompute"] = "average"
    bn_images: Annotated[Int, within(1, 1 << 20)] = 2000


@section
class TrainConfig:
    seed: Seed = 42
    batch_size: Annotated[Int, within(2, 1 << 16)] = 64
    eval_batch_size: Annotated[Int, within(1, 1 << 16)] = 500
    epochs: Epochs = 20
    label_smoothing: Smoothing = 0.0
    # auto: bf16 where the device computes it natively (CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX), else
    # fp32; fp64: for numerical checks
    precision: Literal["auto", "fp32", "bf16", "fp64"] = "fp32"
    allow_tf32: Bool = False  # CUDA only: TF32 matmuls/convolutions in fp32 runs; off so that CPU and GPU runs agree
    channels_last: Bool = how(True)  # NHWC activations
    compile: Bool = how(True)  # torch.compile the training step
    # auto: "default" on a CPU, "reduce-overhead" (CUDA graphs) on CUDA
    compile_mode: Literal["auto", "default", "reduce-overhead", "max-autotune"] = how("auto")
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)

    def __post_init__(self) -> None:
        if self.scheduler.cycle_momentum and (self.scheduler.name != "onecycle" or self.optimizer.name != "sgd"):
            raise ConfigError("train.scheduler.cycle_momentum: needs train.scheduler.name onecycle and "
                              f"train.optimizer.name sgd (got {self.scheduler.name}, {self.optimizer.name})")



@section
class HparamsConfig:
    """The grid's axes: every combination is one configuration."""

    lr: Annotated[tuple[Lr, ...], at.MinLen(1)] = (0.002, 0.005, 0.01)
    weight_decay: Annotated[tuple[Decay, ...], at.MinLen(1)] = (5e-5, 5e-4)
    blocks: Annotated[tuple[Blocks, ...], at.MinLen(1)] = ((2, 2, 2), (3, 3, 3))
    bottleneck_mid: Annotated[tuple[Mid, ...], at.MinLen(1)] = (16, 32)
    # null: train.label_smoothing for every configuration
    label_smoothing: Optional[Annotated[tuple[Smoothing, ...], at.MinLen(1)]] = None
    # seeds per configuration (own initial weights, batch order and augmentation; the same N seeds for every
    # configuration, so comparisons are paired); every configuration is also the ensemble of its seeds
    seeds: Annotated[Int, within(1, 1024)] = 3


@section
class HalvingConfig:
    """Successive halving (``grid.schedule: halving``): rungs at ``min_epochs * eta**r`` epochs up to
    ``grid.epochs``; at each rung the best 1/eta of the running configurations (at least one) go on."""

    # the first rung; may be a fraction of an epoch
    min_epochs: Annotated[Float, within(0.0, 100000.0, low_open=True)] = 1.0
    eta: Annotated[Int, within(1, 1000)] = 3  # 1 keeps everyone (the rungs only split the training)


@section
class RayConfig:
    """``grid.engine: ray``: each stack of a rung is one Ray task (Ray Core), run in parallel where the cluster has
    room; the driver keeps the records, ranks and prunes."""

    address: Optional[Str] = None  # null: start (or join) a local cluster; "auto" or "host:port": a running one
    # a task's CPUs (and torch threads) when the cluster has no GPUs; else one GPU each
    cpus_per_stack: Annotated[Int, within(1, 1024)] = 1
    max_retries: Annotated[Int, within(0, 100)] = 2  # Ray runs a stack again when its worker process died
    connect_timeout: Annotated[Float, within(0.1, 3600.0)] = 30.0  # seconds to reach grid.ray.address, then stop
    data: Literal["object_store", "data_root"] = "object_store"  # how the data reaches the workers: once through
    # Ray's object store, or read by each worker from the data root (shared storage on a multi-machine cluster)


@section
class GridConfig:
    epochs: Epochs = 5
    independent_seeds: Bool = False
    # at most this many models per stack; null: all the configurations of an architecture; auto: as many as the
    # device's free memory holds (measured per model on a GPU; all of them on a CPU)
    max_stack: Union[Positive, Literal["auto"], None] = how(None)
    # how a stack's step executes: vmap (fused, for GPUs), sequential (the compiled one-model step over each member
    # in turn, for CPUs), auto: vmap on a GPU, sequential on a CPU; results are the same either way
    executor: Literal["auto", "vmap", "sequential"] = how("auto")
    save_checkpoints: Bool = False
    # how vmap runs stacked convolutions and batch norms (cifar100_func.runtime.batching); auto: per_model if eager
    # on a CPU
    batching: Literal["auto", "per_model", "grouped"] = how("auto")
    max_train: Optional[Positive] = None  # train the grid on the first N training images only (null: all)
    # compile the stacked step: null follows train.compile for stacks of at least 200 steps (shorter ones
    # spend more time compiling than it saves); true / false force it
    compile: Optional[Bool] = how(None)
    # exhaustive: every configuration for grid.epochs; halving: successive halving across all stacks
    schedule: Literal["exhaustive", "halving"] = "exhaustive"
    halving: HalvingConfig = field(default_factory=HalvingConfig)
    engine: Literal["local", "ray"] = how("local")  # local: stacks one after another in this process
    # greedy ensemble selection (Caruana et al. 2004) over every trained member of the sweep: this many rounds,
    # each adding (with replacement) the member that lowers the ensemble's validation NLL most
    selection_rounds: Annotated[Int, within(1, 10000)] = 20
    tta: Literal["none", "flip", "flip_translate"] = "none"  # test-time views of the grid's final predictions
    ray: RayConfig = how(default_factory=RayConfig)


@section
class LrFinderConfig:
    start: Lr = 1e-7
    end: Annotated[Float, within(0.0, 1000.0, low_open=True)] = 1.0  # above start
    seeds: Annotated[Int, within(1, 64)] = 3  # stacked under vmap; the curve is their mean with a min-max band
    # stop once the smoothed loss exceeds stop_factor x its minimum
    stop_factor: Annotated[Float, within(1.0, 1e6, low_open=True)] = 4.0
    smoothing: Beta = 0.98  # EMA factor of the smoothed loss
    max_steps: Optional[Annotated[Int, within(5, 10**7)]] = None  # default: one epoch of batches

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ConfigError(f"lr_finder.end: {self.end!r} is out of range, expected a value in "
                              f"({self.start}, 1000.0] (above lr_finder.start)")


@section
class OverfitConfig:
    """SPEC experiment 2: a tiny training subset must be learnt by heart, else something is broken."""

    num_train: Annotated[Int, within(2, 10**6)] = 50
    max_val: Optional[Positive] = None  # validate on the first N validation images (null: all)
    blocks: Blocks = (2, 2, 2)
    bottleneck_mid: Mid = 16
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"  # the SPEC's; independent of train.optimizer
    lr: Lr = 0.001
    weight_decay: Decay = 0.0
    epochs: Epochs = 50
    augment: Bool = False
    target_acc: Probability = 0.98


@section
class SanityConfig:
    num_samples: Annotated[Int, within(1, 64)] = 8  # images shown before/after augmentation


@section
class StudyConfig:
    """The whole study in one command (``cifar100_func.commands.study``)."""

    profile: Str = how("full")  # a name printed in the report ("quick" says plainly that it is a reduced run)
    description: Str = how("the study as SPEC.md states it (meant for a GPU; on a 2-core CPU it takes many hours)")
    # final run: the grid's best configuration, or train/model as set
    # final answer: a run of the grid's best configuration, of train/model as set, or the ensemble selected from
    # every member the grid trained (no final run; test is touched once, at the end)
    final_from: Literal["grid", "config", "ensemble"] = "grid"
    final_epochs: Optional[Epochs] = None  # default: train.epochs
    # N > 1: the final run is a seed ensemble of N models trained as one stack
    final_seeds: Annotated[Int, within(1, 1024)] = 1


Folder = Annotated[Str, at.MinLen(1)]


@section
class EvaluationConfig:
    """How the test evaluation (``evaluate``, the study's last stage) looks at each image."""

    # none; flip: the image and its mirror; flip_translate: those, each also shifted by 2 pixels in 4 directions
    tta: Literal["none", "flip", "flip_translate"] = "none"


@section
class PathsConfig:
    runs_dir: Folder = "runs"
    artifacts_dir: Folder = "artifacts"
    report_dir: Folder = "report"
    tensorboard: Bool = True  # event files under each command's folder (tb/); tensorboard --logdir <runs_dir>


@section
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
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    paths: PathsConfig = how(default_factory=PathsConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of YAML-safe values (tuples become lists)."""
        return plain(dataclasses.asdict(self))


# ----------------------------------------------------------------------------------------- loading
def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of the raw config mapping with each ``dotted.key=value`` applied (keys checked against
    :class:`Config`)."""
    return _apply_overrides(Config, data, overrides)


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (or the defaults when None), apply ``overrides``, validate, and return a :class:`Config`."""
    data: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except (yaml.YAMLError, ValueError) as exc:  # ValueError: an int of more than 4300 digits
            raise ConfigError(f"{p}: malformed YAML ({first_line(exc)})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return from_dict(apply_overrides(data, overrides or []))


@functools.cache
def _adapter() -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(Config)


def from_dict(data: dict) -> Config:
    """Build and validate a :class:`Config` from a plain mapping (a parsed file or a checkpoint's copy)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(data).__name__}")
    try:
        return _adapter().validate_python(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(explain(exc.errors()[0], Config)) from None


# ------------------------------------------------------------------------------------------- views
def plain(obj: Any) -> Any:
    """A copy with nested dicts copied and tuples turned into lists (YAML-safe)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


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
