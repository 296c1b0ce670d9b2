"""The translation from the config to the core's plain arguments loses no key: every ``dataset.*`` and
``augment.*`` value reaches the DataSpec / Augmentation / Pipeline (the config's fields, walked one by one)."""

from __future__ import annotations

import dataclasses

import torch

from cifar100_func.config import load_config
from cifar100_func.runtime.from_config import augmentation, data_spec, pipeline

DATASET = ["dataset.name=synthetic", "dataset.root=/somewhere", "dataset.download=false", "dataset.num_classes=7",
           "dataset.val_size=11", "dataset.split_seed=3", "dataset.max_train=13", "dataset.max_val=5",
           "dataset.max_test=6", "dataset.synthetic.train_size=300", "dataset.synthetic.test_size=40",
           "dataset.synthetic.noise=0.5"]
AUGMENT = ["augment.enabled=false", "augment.crop_padding=2", "augment.hflip_p=0.25", "augment.brightness=0.1",
           "augment.contrast=0.3", "augment.saturation=0.4", "augment.hue=0.05"]


def test_every_dataset_key_reaches_the_data_spec():
    cfg = load_config(None, DATASET)
    spec = data_spec(cfg)
    for f in dataclasses.fields(cfg.dataset):
        if f.name == "synthetic":
            for g in dataclasses.fields(cfg.dataset.synthetic):
                assert getattr(spec, f"synthetic_{g.name}") == getattr(cfg.dataset.synthetic, g.name), g.name
        else:
            assert getattr(spec, f.name) == getattr(cfg.dataset, f.name), f.name
    assert spec.download is False and spec.synthetic_noise == 0.5  # the overrides took effect


def test_every_augment_key_reaches_the_pipeline():
    cfg = load_config(None, AUGMENT + ["preprocess.mean=[0.1,0.2,0.3]", "preprocess.std=[0.4,0.5,0.6]"])
    settings = augmentation(cfg)
    for f in dataclasses.fields(cfg.augment):
        if f.name != "off_last_epochs":  # the training plan's (its last epochs on plain images), not the images'
            assert getattr(settings, f.name) == getattr(cfg.augment, f.name), f.name
    pipe = pipeline(cfg, "cpu")
    assert pipe.augment == settings and not settings.enabled
    torch.testing.assert_close(pipe.mean, torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(pipe.std, torch.tensor([0.4, 0.5, 0.6]))
