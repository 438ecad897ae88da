"""Pretraining any method can be preceded by: ``pretrain = "hints"`` puts FitNets hint
pretraining (the ``hint`` section: the students' layers up to their hint tap plus a
regressor, matched to the frozen teacher's guided tap) before the method's own stages, for
every model the method trains. So "hints, then the student alone" is ``individual`` with
``pretrain = "hints"``; ``fitnets`` and ``hint_mutual`` are kd and mutual with it built in."""

from __future__ import annotations

from ..core.errors import UserError
from .base import BuildContext, Method, ModelSlot, Stage
from .fitnets import check_hint_taps, hint_stage

BUILT_IN_HINTS = ("fitnets", "hint_mutual")


def pretrains_with_hints(config: dict) -> bool:
    return config.get("pretrain", "none") == "hints"


def uses_teacher(method: Method | type[Method], config: dict) -> bool:
    """Whether a run of ``method`` with ``config`` needs a teacher (its own, or the hints')."""
    return bool(method.needs_teacher) or pretrains_with_hints(config)


def pretrain_sections(config: dict) -> tuple[str, ...]:
    """The config sections pretraining adds to the run's result (and run id)."""
    return ("hint", "teacher") if pretrains_with_hints(config) else ()


def check_pretrain(method: Method, config: dict) -> None:
    if not pretrains_with_hints(config):
        return
    if method.name in BUILT_IN_HINTS:
        raise UserError(f"method {method.name!r} already starts with hint pretraining; remove pretrain = \"hints\" "
                        "(or use kd / mutual with it)")
    check_hint_taps(config)


def build_run(method: Method, ctx: BuildContext) -> tuple[dict[str, ModelSlot], list[Stage]]:
    """The method's models and stages, with hint pretraining first when the config asks."""
    slots, stages = method.build(ctx)
    if pretrains_with_hints(ctx.config):
        students = {n: s.module for n, s in slots.items() if s.trained}
        stages = [hint_stage(ctx, students), *stages]
    return slots, stages
