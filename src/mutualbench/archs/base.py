"""The model interface every architecture implements.

A ``FeatureModel`` is an ``nn.Module`` whose ``forward(x)`` returns logits and which can also
return named intermediate feature maps ("taps") beside them, as hint training needs:

    logits = model(x)
    logits, feats = model(x, taps=("G",))      # feats["G"] is the tapped map
    g = model.forward_to(x, "G")               # computes only what the tap needs

``StagedModel`` implements it for networks that are a chain of stages followed by a head,
with taps at stage boundaries (the blog's VGGs, CIFAR ResNets, wide ResNets).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..core.errors import UserError


class FeatureModel(nn.Module):
    """Base class: subclasses set ``arch_name`` and implement the tap machinery."""

    arch_name: str = "?"

    @property
    def tap_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def check_tap(self, tap: str) -> None:
        if tap not in self.tap_names:
            known = ", ".join(self.tap_names) or "none"
            raise UserError(
                f"architecture {self.arch_name!r} has no feature tap {tap!r} (its taps: {known}); "
                f"pick one of its taps, or an architecture that has {tap!r} "
                "(see `mutualbench archs`)"
            )

    def forward_to(self, x: torch.Tensor, tap: str) -> torch.Tensor:
        """The feature map at ``tap``; subclasses skip the layers after it."""
        self.check_tap(tap)
        return self(x, taps=(tap,))[1][tap]

    def parameters_up_to(self, tap: str) -> Iterator[nn.Parameter]:
        """Parameters that influence the feature map at ``tap`` (found by autograd)."""
        self.check_tap(tap)
        params = [p for p in self.parameters() if p.requires_grad]
        x = torch.zeros(2, 3, 32, 32, device=params[0].device, dtype=params[0].dtype)
        was_training = self.training
        self.eval()  # no BatchNorm statistics may change
        try:
            out = self.forward_to(x, tap)
        finally:
            self.train(was_training)
        grads = torch.autograd.grad(out.sum(), params, allow_unused=True)
        return iter([p for p, g in zip(params, grads, strict=True) if g is not None])

    @torch.no_grad()
    def tap_shape(self, tap: str, image_size: int = 32) -> tuple[int, int, int]:
        """(channels, height, width) of the tap for a square RGB input."""
        self.check_tap(tap)
        p = next(self.parameters())
        x = torch.zeros(1, 3, image_size, image_size, device=p.device, dtype=p.dtype)
        was_training = self.training
        self.eval()
        try:
            return tuple(self.forward_to(x, tap).shape[1:])  # type: ignore[return-value]
        finally:
            self.train(was_training)


class StagedModel(FeatureModel):
    """A chain of named stages then a head; ``taps`` names the stages whose outputs are taps."""

    def __init__(
        self, arch_name: str, stages: Sequence[tuple[str, nn.Module]], head: nn.Module,
        taps: Sequence[str],
    ) -> None:
        super().__init__()
        self.arch_name = arch_name
        self.stages = nn.ModuleDict(stages)
        self.head = head
        unknown = set(taps) - set(self.stages)
        if unknown:
            raise ValueError(f"taps {sorted(unknown)} are not stage names")
        self._taps = tuple(taps)

    @property
    def tap_names(self) -> tuple[str, ...]:
        return self._taps

    def forward(self, x: torch.Tensor, taps: Sequence[str] = ()):
        for tap in taps:
            self.check_tap(tap)
        feats = {}
        for name, stage in self.stages.items():
            x = stage(x)
            if name in taps:
                feats[name] = x
        logits = self.head(x)
        return (logits, feats) if taps else logits

    def forward_to(self, x: torch.Tensor, tap: str) -> torch.Tensor:
        self.check_tap(tap)
        for name, stage in self.stages.items():
            x = stage(x)
            if name == tap:
                return x
        raise AssertionError("unreachable")

    def parameters_up_to(self, tap: str) -> Iterator[nn.Parameter]:
        self.check_tap(tap)
        for name, stage in self.stages.items():
            yield from stage.parameters()
            if name == tap:
                return

    def split(self, at: str) -> tuple[nn.Sequential, nn.Sequential]:
        """The model in two parts that share its modules (and so its initial weights): the
        stages up to and including ``at``, and the stages after it with the head, so that
        ``rest(trunk(x)) == model(x)``. A method with a shared trunk and branches (ONE) takes
        the trunk of one model and the rests of several."""
        names = list(self.stages)
        if at not in names or at == names[-1]:
            usable = ", ".join(names[:-1])
            raise UserError(f"architecture {self.arch_name!r} cannot be split after {at!r}: give one of its stages "
                            f"that has another after it ({usable})")
        cut = names.index(at) + 1
        trunk = nn.Sequential(*(self.stages[n] for n in names[:cut]))
        rest = nn.Sequential(*(self.stages[n] for n in names[cut:]), self.head)
        return trunk, rest


def he_normal_fan_out(model: nn.Module) -> nn.Module:
    """He et al. 2015 normal initialisation (fan-out, ReLU gain) of every convolution and
    linear layer, biases zero, drawn from the global RNG (seeded by the caller)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def he_normal_conv(model: nn.Module) -> nn.Module:
    """torchvision's ResNet initialisation, which the online-distillation authors' CIFAR
    ResNets use: He et al. 2015 normal (fan-out, ReLU gain) for every convolution, BatchNorm
    weight 1 and bias 0, and every linear layer at PyTorch's default (uniform within
    1/sqrt(fan_in)). Unlike ``he_normal_fan_out`` it leaves the classifier small: He's fan-out
    gain on a 10-way classifier (std sqrt(2/10)) starts a CIFAR ResNet at a loss several
    times ln 10. Drawn from the global RNG (seeded by the caller)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_unique_parameters(modules: list[nn.Module]) -> int:
    """Parameters of several modules counted once each, however many of them share a part
    (branches on one trunk); for separate models it is the sum of their counts."""
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())
