"""The one translation from a :class:`~cifar100_func.config.Config` to the plain arguments of the data and
augmentation and model code, which know nothing of the config schema."""

from __future__ import annotations

import torch

from ..config import Config
from ..core.augment import Augmentation
from ..core.model import Arch
from ..data.dataset import DataSpec
from ..data.loader import Pipeline


def data_spec(cfg: Config) -> DataSpec:
    """``dataset.*`` as a :class:`DataSpec`."""
    d = cfg.dataset
    return DataSpec(name=d.name, num_classes=d.num_classes, val_size=d.val_size, split_seed=d.split_seed,
                    max_train=d.max_train, max_val=d.max_val, max_test=d.max_test, root=d.root, download=d.download,
                    synthetic_train_size=d.synthetic.train_size, synthetic_test_size=d.synthetic.test_size,
                    synthetic_noise=d.synthetic.noise)


def augmentation(cfg: Config) -> Augmentation:
    """``augment.*`` as an :class:`Augmentation` (``off_last_epochs`` is the training plan's, not the images')."""
    a = cfg.augment
    return Augmentation(enabled=a.enabled, crop_padding=a.crop_padding, hflip_p=a.hflip_p, flip=a.flip,
                        brightness=a.brightness, contrast=a.contrast, saturation=a.saturation, hue=a.hue)


def model_options(cfg: Config) -> dict:
    """The :class:`.core.model.Arch` fields ``model.*`` sets besides the shapes (batch-norm momentum, identity
    initialisation): ``Arch(blocks, mid, num_classes, **model_options(cfg))``."""
    return {"bn_momentum": cfg.model.bn_momentum, "identity_init": cfg.model.identity_init}


def arch(cfg: Config, num_classes: int, blocks: tuple[int, int, int] | None = None, mid: int | None = None) -> Arch:
    """The model of ``model.*`` (or of a grid point's ``blocks`` and ``mid``) for ``num_classes`` classes."""
    shape = tuple(blocks or cfg.model.blocks)
    return Arch(shape, mid or cfg.model.bottleneck_mid, num_classes, **model_options(cfg))  # type: ignore[arg-type]


def pipeline(cfg: Config, device: torch.device | str) -> Pipeline:
    """The input pipeline of ``preprocess.*`` and ``augment.*`` on ``device``."""
    return Pipeline.create(cfg.preprocess.mean, cfg.preprocess.std, augmentation(cfg), device)
