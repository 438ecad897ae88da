"""Architectures: ``create_arch(name, num_classes)`` and the registry behind it.

Each family lives in its own module of this package and registers its names on import;
every module here is imported, so a new family is one new file (no list to edit)."""

import importlib
import pkgutil

from .base import (
    FeatureModel,
    StagedModel,
    count_parameters,
    count_unique_parameters,
    he_normal_conv,
    he_normal_fan_out,
)
from .registry import ARCHS, create_arch, is_known_arch, pattern_descriptions

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ARCHS",
    "FeatureModel",
    "StagedModel",
    "count_parameters",
    "count_unique_parameters",
    "create_arch",
    "he_normal_conv",
    "he_normal_fan_out",
    "is_known_arch",
    "pattern_descriptions",
]
