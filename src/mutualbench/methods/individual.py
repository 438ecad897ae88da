"""``individual``: one model trained alone with cross-entropy."""

from __future__ import annotations

from .base import BuildContext, Method, ModelSlot, check_single_model, register_method
from .losses import cross_entropy
from .stages import SupervisedStage


@register_method("individual")
class Individual(Method):
    sections = ("data", "loss", "train")

    def check(self, config: dict) -> None:
        check_single_model(config, self.name, "one model")

    def member_names(self, config: dict) -> list[str]:
        return ["model"]

    def build(self, ctx: BuildContext):
        arch = ctx.config["arch"][0]
        model = ctx.new_model(arch, index=0)
        red = ctx.reduction
        def loss_fn(x, y):
            ce = cross_entropy(model(x), y, red)
            return ce, {"ce": ce}

        stage = SupervisedStage("train", "model", model, loss_fn, ctx.config["train"], ctx.device, bf16=ctx.bf16,
                                channels_last=ctx.channels_last)
        return {"model": ModelSlot("model", "individual", arch, model)}, [stage]
