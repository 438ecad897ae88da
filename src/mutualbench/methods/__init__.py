"""Methods, one file each, registered by name on import.

Every module of this package is imported here, so a new method is one new file in it (with
``@register_method`` and, if it has settings, ``register_section``); no list to edit."""

import importlib
import pkgutil

from .base import METHODS, BuildContext, Method, ModelSlot, Stage, get_method, register_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "BuildContext", "Method", "ModelSlot", "Stage", "get_method", "register_method"]
