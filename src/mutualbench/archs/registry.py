"""Architecture registry: name -> factory(num_classes) returning a ``FeatureModel``.

Families register their names with ``@register_arch``; a family may also claim a name
pattern (``wrn_<depth>_<width>``, ``timm:<name>``) with ``register_pattern``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..core.errors import UserError
from ..core.registry import Registry
from .base import FeatureModel


@dataclass(frozen=True)
class ArchEntry:
    name: str
    family: str
    factory: Callable[..., FeatureModel]


ARCHS: Registry[ArchEntry] = Registry("architecture")
_PATTERNS: list[tuple[re.Pattern, str, Callable[..., FeatureModel]]] = []


def register_arch(name: str, family: str):
    def decorator(factory):
        ARCHS.register(name)(ArchEntry(name, family, factory))
        return factory

    return decorator


def register_pattern(pattern: str, description: str):
    """``factory(match, num_classes)`` builds any name that fully matches ``pattern``."""

    def decorator(factory):
        _PATTERNS.append((re.compile(pattern), description, factory))
        return factory

    return decorator


def pattern_descriptions() -> list[str]:
    return [d for _, d, _ in _PATTERNS]


def create_arch(name: str, num_classes: int = 10) -> FeatureModel:
    """Build architecture ``name`` for ``num_classes`` classes."""
    if name in ARCHS:
        return ARCHS.get(name).factory(num_classes=num_classes)
    for pattern, _, factory in _PATTERNS:
        m = pattern.fullmatch(name)
        if m:
            return factory(m, num_classes=num_classes)
    extra = "; also " + ", ".join(pattern_descriptions()) if _PATTERNS else ""
    raise UserError(ARCHS.unknown_message(name, extra))


def is_known_arch(name: str) -> bool:
    return name in ARCHS or any(p.fullmatch(name) for p, _, _ in _PATTERNS)
