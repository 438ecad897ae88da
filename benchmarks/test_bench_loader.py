"""One training epoch (flip + pad-4 crop + normalise, batch 128, shuffled) of the CIFAR-10
train split: ``DeviceLoader`` against torchvision's ``DataLoader`` with the equivalent
transforms on the same uint8 data, on the CPU.

    make bench        # writes results/bench/loader-cpu.{json,md} with the ratios
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from mutualbench.data import DeviceLoader

BATCH = 128


class UInt8ImageDataset(Dataset):
    """The torchvision way: one PIL image per item, transforms per image."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def run_epoch(loader) -> int:
    n = 0
    for _x, y in loader:
        n += y.shape[0]
    return n


def test_device_loader_epoch(benchmark, cifar_train):
    images, labels, mean, std, name = cifar_train
    loader = DeviceLoader(images, labels, batch_size=BATCH, flip=True, crop_padding=4, mean=mean, std=std, seed=0)
    benchmark.group = "loader-epoch"
    benchmark.extra_info.update(data=name, images=len(labels), role="candidate")
    assert benchmark.pedantic(run_epoch, args=(loader,), rounds=5, iterations=1, warmup_rounds=1) == len(labels)


@pytest.mark.parametrize("workers", [0, min(2, os.cpu_count() or 1)])
def test_torchvision_dataloader_epoch(benchmark, cifar_train, workers):
    from torchvision import transforms as T

    images, labels, mean, std, name = cifar_train
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    loader = DataLoader(UInt8ImageDataset(images, labels, transform), batch_size=BATCH, shuffle=True,
                        num_workers=workers, generator=torch.Generator().manual_seed(0),
                        persistent_workers=workers > 0)
    benchmark.group = "loader-epoch"
    benchmark.extra_info.update(data=name, images=len(labels), role="baseline", workers=workers)
    assert benchmark.pedantic(run_epoch, args=(loader,), rounds=2, iterations=1, warmup_rounds=1) == len(labels)
