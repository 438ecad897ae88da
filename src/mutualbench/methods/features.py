"""A member's penultimate features beside its logits, for the cohort losses that use them
(OKDDip's attention weights, PCL's ensemble teacher).

The penultimate features of a ``StagedModel`` whose head ends in a linear classifier are the
input of that classifier: for the suite's CIFAR ResNets and wide ResNets the globally pooled
output of the last stage (what the papers' branches pool before their classifier), for the
blog's VGGs the last hidden layer of the head. ``logits_and_features`` computes both in one
pass, the same operations as the model's own forward."""

from __future__ import annotations

import torch
from torch import nn

from ..archs import StagedModel, create_arch
from ..core.errors import UserError


def has_features(model: nn.Module) -> bool:
    """Whether ``model`` is a chain of stages whose head ends in a linear classifier."""
    head = getattr(model, "head", None)
    return isinstance(model, StagedModel) and isinstance(head, nn.Sequential) and len(head) > 0 and \
        isinstance(head[-1], nn.Linear)


def feature_width(model: nn.Module) -> int:
    """D, the width of the model's penultimate features."""
    return model.head[-1].in_features


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, C], penultimate features [B, D]) of a model that ``has_features``."""
    for stage in model.stages.values():
        x = stage(x)
    layers = list(model.head)
    for layer in layers[:-1]:
        x = layer(x)
    return layers[-1](x), x


class WithFeatures(nn.Module):
    """``model`` whose forward gives (logits, penultimate features); its parameters are the
    model's, under the prefix ``model.``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits_and_features(self.model, x)


def check_features(archs: list[str], method: str) -> None:
    """Before any data is loaded: every architecture has penultimate features."""
    for arch in dict.fromkeys(archs):
        if not has_features(create_arch(arch)):
            raise UserError(f"{method} needs each member's penultimate features, and architecture {arch!r} is not a "
                            "chain of stages ending in a linear classifier; pick one of the suite's CIFAR "
                            "architectures (see `mutualbench archs`)")
