"""Wide ResNets (Zagoruyko & Komodakis 2016), ``wrn_<depth>_<width>``: pre-activation basic
blocks, (depth-4)/6 blocks per stage, stage widths 16k/32k/64k, 1x1 conv shortcuts where the
shape changes. Any depth = 6n+4 works by name; common ones are listed. Taps: ``stem``,
``layer1``, ``layer2``, ``layer3`` (layer3 after the final BN-ReLU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserError
from .base import StagedModel
from .registry import register_arch, register_pattern
from .resnet_cifar import _init


class PreActBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = (
            nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False)
            if (stride != 1 or in_ch != out_ch) else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = F.relu(self.bn2(o))
        if self.dropout:
            o = F.dropout(o, p=self.dropout, training=self.training)
        return self.conv2(o) + skip


def wide_resnet(depth: int, width: int, num_classes: int = 10, dropout: float = 0.0) -> StagedModel:
    if depth < 10 or (depth - 4) % 6:
        raise UserError(f"wide ResNet depth must be 6n+4 (10, 16, 22, 28, 40, ...), got wrn_{depth}_{width}")
    if width < 1:
        raise UserError(f"wide ResNet width must be >= 1, got wrn_{depth}_{width}")
    n = (depth - 4) // 6
    widths = (16 * width, 32 * width, 64 * width)
    stages: list[tuple[str, nn.Module]] = [("stem", nn.Conv2d(3, 16, 3, 1, 1, bias=False))]
    in_ch = 16
    for i, w in enumerate(widths):
        blocks: list[nn.Module] = []
        for j in range(n):
            blocks.append(PreActBlock(in_ch, w, 2 if (i > 0 and j == 0) else 1, dropout))
            in_ch = w
        if i == 2:
            blocks += [nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True)]
        stages.append((f"layer{i + 1}", nn.Sequential(*blocks)))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes))
    model = StagedModel(f"wrn_{depth}_{width}", stages, head, taps=("stem", "layer1", "layer2", "layer3"))
    _init(model)
    return model


@register_pattern(r"wrn_(\d+)_(\d+)", "wrn_<depth>_<width> (depth = 6n+4)")
def _wrn_from_name(match, num_classes: int = 10) -> StagedModel:
    return wide_resnet(int(match.group(1)), int(match.group(2)), num_classes)


def _make(depth: int, width: int):
    def factory(num_classes: int = 10) -> StagedModel:
        return wide_resnet(depth, width, num_classes)

    return factory


for _d, _w in ((16, 1), (16, 2), (16, 4), (28, 10), (40, 1), (40, 2)):
    register_arch(f"wrn_{_d}_{_w}", family="wide_resnet")(_make(_d, _w))
