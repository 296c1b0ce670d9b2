"""The reference implementation, rebuilt independently of the package: an ``nn.Module`` BottleneckNet and the
per-image torchvision pipeline with a ``DataLoader``. Tests use the module as the oracle for the functional
model; the throughput benchmark uses the whole pipeline as the baseline to beat.

Nothing here imports ``cifar100_func``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from torchvision import transforms

MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + identity)


class BottleneckNetRef(nn.Module):
    def __init__(self, blocks=(3, 3, 3), mid: int = 16, num_classes: int = 100) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.layer1 = self._stage(64, mid, 64, blocks[0], 1)
        self.layer2 = self._stage(64, 2 * mid, 128, blocks[1], 2)
        self.layer3 = self._stage(128, 4 * mid, 256, blocks[2], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(256, num_classes)

    @staticmethod
    def _stage(cin: int, mid: int, cout: int, n: int, stride: int) -> nn.Sequential:
        layers = [Bottleneck(cin, mid, cout, stride)]
        layers += [Bottleneck(cout, mid, cout, 1) for _ in range(n - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def train_transform() -> transforms.Compose:
    """The reference's train-time pipeline (augmentation only on train, jitter applied once)."""
    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.2, 0.2, 0.2, 0.1),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )


class ImageArrayDataset(TorchDataset):
    """uint8 images (N, 3, 32, 32) served one PIL image at a time, as torchvision's CIFAR100 does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def train_loader(images: np.ndarray, labels: np.ndarray, batch_size: int = 64, workers: int = 2) -> DataLoader:
    ds = ImageArrayDataset(images, labels, train_transform())
    return DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0)


def train_steps(model: nn.Module, loader: DataLoader, steps: int, lr: float = 0.01, wd: float = 5e-4) -> int:
    """Run ``steps`` reference training steps (Adam, coupled L2); returns the number of images seen."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    seen = 0
    while seen < steps * loader.batch_size:
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            seen += len(y)
            if seen >= steps * loader.batch_size:
                break
    return seen
