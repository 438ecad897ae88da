"""Any timm model as ``timm:<name>`` (randomly initialised; nothing is downloaded).

Taps are the modules timm lists in the model's ``feature_info`` (e.g. ``layer1`` ...
``layer4`` for ResNets), captured with forward hooks."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch

from ..core.errors import UserError
from .base import FeatureModel
from .registry import register_pattern


class TimmModel(FeatureModel):
    def __init__(self, name: str, num_classes: int = 10) -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
            raise UserError(
                f"unknown timm model {name!r}.{hint} List them with python -c "
                "\"import timm; print(timm.list_models())\"."
            )
        self.arch_name = f"timm:{name}"
        self.net = timm.create_model(name, pretrained=False, num_classes=num_classes)
        info = getattr(self.net, "feature_info", None) or []
        self._taps = tuple(i["module"] for i in info if isinstance(i, dict) and i.get("module"))
        self._captured: dict[str, torch.Tensor] = {}
        modules = dict(self.net.named_modules())
        for tap in self._taps:
            modules[tap].register_forward_hook(self._hook(tap))

    def _hook(self, tap: str):
        def hook(_module, _inputs, output):
            self._captured[tap] = output

        return hook

    @property
    def tap_names(self) -> tuple[str, ...]:
        return self._taps

    def forward(self, x: torch.Tensor, taps: Sequence[str] = ()):
        for tap in taps:
            self.check_tap(tap)
        self._captured = {}
        logits = self.net(x)
        if not taps:
            self._captured = {}
            return logits
        feats = {t: self._captured[t] for t in taps}
        self._captured = {}
        return logits, feats


@register_pattern(r"timm:(.+)", "timm:<any timm model name>")
def _timm_from_name(match, num_classes: int = 10) -> TimmModel:
    return TimmModel(match.group(1), num_classes)
