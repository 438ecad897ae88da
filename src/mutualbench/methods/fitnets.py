"""``fitnets``: Romero et al. 2015. Stage 1 (hints): the student's layers up to its hint tap
plus a conv regressor learn to match the frozen teacher's guided tap; stage 2: the whole
student trained by KD from the same teacher."""

from __future__ import annotations

from .base import BuildContext, Method, ModelSlot, check_single_model, register_method, resolve_tap
from .kd import kd_stage
from .stages import HintStage


def hint_stage(ctx: BuildContext, students: dict) -> HintStage:
    cfg = ctx.config["hint"]
    first = next(iter(students.values()))
    s_tap = resolve_tap(first, cfg["student_tap"], "student tap")
    t_tap = resolve_tap(ctx.teacher, cfg["teacher_tap"], "teacher tap")
    return HintStage(students, ctx.teacher, s_tap, t_tap, cfg, ctx.reduction, ctx.config["seed"], ctx.device,
                     bf16=ctx.bf16)


@register_method("fitnets")
class FitNets(Method):
    sections = ("data", "loss", "train", "kd", "hint", "teacher")
    needs_teacher = True
    needs_taps = True

    def check(self, config: dict) -> None:
        check_single_model(config, self.name, "one student")

    def build(self, ctx: BuildContext):
        arch = ctx.config["arch"][0]
        student = ctx.new_model(arch, index=0)
        stages = [hint_stage(ctx, {"student": student}), kd_stage(ctx, student)]
        return {"student": ModelSlot("student", "student", arch, student)}, stages
