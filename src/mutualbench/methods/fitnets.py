"""``fitnets``: FitNets (Romero et al., ICLR 2015, arXiv 1412.6550). Stage 1 (hints): the
student's layers up to its hint tap plus a conv regressor learn to match the frozen teacher's
guided tap; stage 2: the whole student trained by KD from the same teacher."""

from __future__ import annotations

from ..core.config import CONSTANT, KeyType, adam, optimizer_keys, register_section
from .base import BuildContext, Method, ModelSlot, check_single_model, register_method, resolve_tap
from .kd import kd_stage
from .stages import HintStage

HINT_SECTION = register_section(
    "hint",
    {
        "epochs": 10,
        "optimizer": adam(1e-3),
        "schedule": dict(CONSTANT),
        "student_tap": None,  # None: the student's only tap (H for seed_vgg_student)
        "teacher_tap": None,  # None: the teacher's only tap (G for seed_vgg_teacher)
        "regressor_kernel": 1,
    },
    {
        **{k.split(".", 1)[1]: kt for k, kt in optimizer_keys("hint").items()},
        "student_tap": KeyType("str", nullable=True),
        "teacher_tap": KeyType("str", nullable=True),
        "regressor_kernel": KeyType("int", lo=1, odd=True),
    },
)


def check_hint_taps(config: dict) -> None:
    """Before any training: every student architecture and the teacher have the hint taps
    (the configured ones, or exactly one each). That the two maps have the same spatial size
    is checked when the hint stage is built."""
    from ..archs import create_arch

    hint = config["hint"]
    teacher = create_arch(config["teacher"]["arch"])
    resolve_tap(teacher, hint["teacher_tap"], "teacher tap")
    for arch in config["arch"]:
        resolve_tap(create_arch(arch), hint["student_tap"], "student tap")


def hint_stage(ctx: BuildContext, students: dict) -> HintStage:
    cfg = ctx.config["hint"]
    first = next(iter(students.values()))
    s_tap = resolve_tap(first, cfg["student_tap"], "student tap")
    t_tap = resolve_tap(ctx.teacher, cfg["teacher_tap"], "teacher tap")
    return HintStage(students, ctx.teacher, s_tap, t_tap, cfg, ctx.reduction, ctx.config["seed"], ctx.device,
                     bf16=ctx.bf16, channels_last=ctx.channels_last)


@register_method("fitnets")
class FitNets(Method):
    sections = ("data", "loss", "train", "kd", "hint", "teacher")
    needs_teacher = True

    def check(self, config: dict) -> None:
        check_single_model(config, self.name, "one student")
        check_hint_taps(config)

    def member_names(self, config: dict) -> list[str]:
        return ["student"]

    def build(self, ctx: BuildContext):
        arch = ctx.config["arch"][0]
        student = ctx.new_model(arch, index=0)
        stages = [hint_stage(ctx, {"student": student}), kd_stage(ctx, student)]
        return {"student": ModelSlot("student", "student", arch, student)}, stages
