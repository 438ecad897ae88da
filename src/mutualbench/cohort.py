"""Cohort training for mutual learning: picks the stage that trains a cohort.

The fused path (K same-architecture students as stacked parameters: one forward, one
backward, one optimizer step) is selected here when available; until then every cohort
uses the plain ``MutualStage``."""

from __future__ import annotations

from torch import nn

from .methods.base import BuildContext, Stage
from .methods.stages import MutualStage


def make_mutual_stage(members: dict[str, nn.Module], ctx: BuildContext) -> Stage:
    cfg = ctx.config
    return MutualStage(members, cfg["train"], cfg["mutual"], ctx.reduction, ctx.device)
