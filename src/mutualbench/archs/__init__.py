"""Architectures: ``create_arch(name, num_classes)`` and the registry behind it.

Each family lives in its own module and registers its names on import."""

from . import resnet_cifar, seed_vgg, timm_adapter, wide_resnet  # noqa: F401  (registration)
from .base import FeatureModel, StagedModel, count_parameters
from .registry import ARCHS, create_arch, is_known_arch, pattern_descriptions

__all__ = [
    "ARCHS",
    "FeatureModel",
    "StagedModel",
    "count_parameters",
    "create_arch",
    "is_known_arch",
    "pattern_descriptions",
]
