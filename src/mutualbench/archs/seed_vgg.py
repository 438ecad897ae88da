"""The blog's VGG-style teacher and student, built from their list notation.

Notation: an integer is a 3x3 conv (padding 1, bias) + ReLU with that many output channels;
``M`` a 2x2 max-pool; any other letter marks a feature tap at that point (``G``: the
teacher's guided layer, ``H``: the student's hint layer). After the convs: global average
pooling, then Linear(C,256)-ReLU-Linear(256,256)-ReLU-Linear(256,classes). No BatchNorm.
With 10 classes this gives exactly 2,440,394 (teacher) and 1,497,434 (student) parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .base import StagedModel
from .registry import register_arch

TEACHER_SPEC: tuple = (32, "M", 64, "M", 128, 128, "G", "M", 256, 256, "M", 256, 256, "M")
STUDENT_SPEC: tuple = (16, 16, "M", 32, 32, "M", 64, 64, 64, "H", "M", 128, 128, 128, "M", 256, 256, "M")


def build_vgg_from_spec(
    arch_name: str, spec: Sequence, num_classes: int = 10, hidden: int = 256, in_channels: int = 3
) -> StagedModel:
    stages: list[tuple[str, nn.Module]] = []
    taps: list[str] = []
    layers: list[nn.Module] = []
    channels = in_channels
    for item in spec:
        if isinstance(item, int):
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = item
        elif item == "M":
            layers.append(nn.MaxPool2d(2))
        elif isinstance(item, str) and item.isalpha():
            stages.append((item, nn.Sequential(*layers)))
            taps.append(item)
            layers = []
        else:
            raise ValueError(f"bad VGG spec item {item!r}: use ints, 'M' or a tap letter")
    stages.append(("body", nn.Sequential(*layers)))
    head = nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )
    return StagedModel(arch_name, stages, head, taps)


@register_arch("seed_vgg_teacher", family="seed_vgg")
def seed_vgg_teacher(num_classes: int = 10) -> StagedModel:
    """The blog's teacher; tap ``G`` (128x8x8) is its guided layer."""
    return build_vgg_from_spec("seed_vgg_teacher", TEACHER_SPEC, num_classes)


@register_arch("seed_vgg_student", family="seed_vgg")
def seed_vgg_student(num_classes: int = 10) -> StagedModel:
    """The blog's student; tap ``H`` (64x8x8) is its hint layer."""
    return build_vgg_from_spec("seed_vgg_student", STUDENT_SPEC, num_classes)
