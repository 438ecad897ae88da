"""``hint_mutual`` (the blog's proposal): FitNets hint pretraining for every cohort member
from its own initialisation, then deep mutual learning from those weights."""

from __future__ import annotations

from .base import BuildContext, CohortMethod, register_method
from .fitnets import check_hint_taps, hint_stage
from .mutual import build_cohort, check_cohort, mutual_stage


@register_method("hint_mutual")
class HintMutual(CohortMethod):
    sections = ("data", "loss", "train", "mutual", "speed", "hint", "teacher")
    needs_teacher = True

    def check(self, config: dict) -> None:
        check_cohort(config, "hint_mutual")
        check_hint_taps(config)

    def build(self, ctx: BuildContext):
        slots = build_cohort(ctx)
        students = {n: s.module for n, s in slots.items()}
        return slots, [hint_stage(ctx, students), mutual_stage(ctx, slots)]
