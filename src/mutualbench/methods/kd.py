"""``kd``: Hinton et al. 2015. A frozen teacher (eval mode) and a student trained with
CE(s, y) + alpha * T^2 * KL(softmax(t/T) ‖ softmax(s/T))."""

from __future__ import annotations

import torch

from ..core.config import KeyType, register_section
from .base import BuildContext, Method, ModelSlot, check_single_model, register_method
from .losses import kd_loss_terms
from .stages import SupervisedStage

KD_SECTION = register_section(
    "kd",
    {"temperature": 4.0, "alpha": 1.0},  # T = 4: the usual CIFAR choice (the blog's plain KL is T = 1)
    {"temperature": KeyType("number", lo=0, lo_open=True), "alpha": KeyType("number", lo=0)},
)


def kd_stage(ctx: BuildContext, student, name: str = "train") -> SupervisedStage:
    teacher, kd, red = ctx.teacher, ctx.config["kd"], ctx.reduction

    def loss_fn(x, y):
        with torch.no_grad():
            t = teacher(x)
        return kd_loss_terms(student(x), t, y, kd["temperature"], kd["alpha"], red)

    return SupervisedStage(name, "student", student, loss_fn, ctx.config["train"], ctx.device, frozen=(teacher,),
                           bf16=ctx.bf16, channels_last=ctx.channels_last)


@register_method("kd")
class KnowledgeDistillation(Method):
    sections = ("data", "loss", "train", "kd", "teacher")
    needs_teacher = True

    def check(self, config: dict) -> None:
        check_single_model(config, self.name, "one student")

    def member_names(self, config: dict) -> list[str]:
        return ["student"]

    def build(self, ctx: BuildContext):
        arch = ctx.config["arch"][0]
        student = ctx.new_model(arch, index=0)
        return {"student": ModelSlot("student", "student", arch, student)}, [kd_stage(ctx, student)]
