"""Methods, one file each, registered by name on import."""

from . import fitnets, hint_mutual, individual, kd, mutual  # noqa: F401  (registration)
from .base import METHODS, BuildContext, Method, ModelSlot, Stage, get_method, register_method

__all__ = ["METHODS", "BuildContext", "Method", "ModelSlot", "Stage", "get_method", "register_method"]
