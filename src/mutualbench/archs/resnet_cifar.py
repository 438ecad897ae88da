"""CIFAR ResNets of He et al. 2016 (sec. 4.2): 6n+2 layers, three stages of 16/32/64
channels, basic blocks, parameter-free (option A) shortcuts: resnet20/32/56/110 have
0.27M/0.46M/0.85M/1.7M parameters. Taps: ``stem``, ``layer1``, ``layer2``, ``layer3``.

Their own initialisation (a run's ``init = "pytorch_default"``): He normal (fan-out) for every
convolution and for the classifier, BatchNorm weight 1 and bias 0. The classifier's fan-out
gain (std sqrt(2/10) for 10 classes) starts them at a loss several times ln 10; ``init =
"he_normal_conv"`` keeps the classifier at PyTorch's default, as torchvision's ResNets and the
online-distillation authors' CIFAR ResNets do (``archs.base.he_normal_conv``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import StagedModel, he_normal_fan_out
from .registry import register_arch


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.stride = stride
        self.pad = out_ch - in_ch

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        # Option A: subsample spatially, zero-pad the new channels (no parameters).
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _init(model: nn.Module) -> None:
    he_normal_fan_out(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def cifar_resnet(depth: int, num_classes: int = 10, arch_name: str | None = None) -> StagedModel:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    widths = (16, 32, 64)
    stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
    stages: list[tuple[str, nn.Module]] = [("stem", stem)]
    in_ch = 16
    for i, width in enumerate(widths):
        blocks = []
        for j in range(n):
            blocks.append(BasicBlock(in_ch, width, 2 if (i > 0 and j == 0) else 1))
            in_ch = width
        stages.append((f"layer{i + 1}", nn.Sequential(*blocks)))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes))
    model = StagedModel(arch_name or f"resnet{depth}", stages, head,
                        taps=("stem", "layer1", "layer2", "layer3"))
    _init(model)
    return model


def _make(depth: int):
    def factory(num_classes: int = 10) -> StagedModel:
        return cifar_resnet(depth, num_classes)

    factory.__name__ = f"resnet{depth}"
    return factory


for _depth in (20, 32, 56, 110):
    register_arch(f"resnet{_depth}", family="cifar_resnet")(_make(_depth))
