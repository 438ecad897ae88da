"""``mutual``: Deep Mutual Learning (Zhang et al. 2018) of a cohort of K >= 2 students, each
from its own initialisation; update order ``sequential`` (Algorithm 1) or ``simultaneous``."""

from __future__ import annotations

from ..core.config import KeyType, register_section
from ..core.errors import UserError
from .base import BuildContext, CohortMethod, ModelSlot, cohort_archs, register_method
from .cohort import make_mutual_stage

MUTUAL_SECTION = register_section(
    "mutual",
    {
        "peer_weight": "mean",  # 1/(K-1) per peer (the paper), or "sum" (the official code)
        "update_order": "simultaneous",  # or "sequential" (the paper's Algorithm 1)
        "fuse": True,  # the fused cohort step for simultaneous updates of same-arch cohorts
        "fused_impl": "auto",  # vmap on CUDA, unbind on the CPU (see methods/cohort.py)
    },
    {
        "peer_weight": KeyType("choice", choices=("mean", "sum")),
        "update_order": KeyType("choice", choices=("sequential", "simultaneous")),
        "fuse": KeyType("bool"),
        "fused_impl": KeyType("choice", choices=("auto", "vmap", "unbind")),
    },
)


def check_cohort(config: dict, method: str) -> None:
    if config["cohort"] < 2 and len(config["arch"]) < 2:
        raise UserError(f"{method} needs a cohort of at least 2 students: add --cohort 2 (or list two --arch names)")
    cohort_archs(config)


def build_cohort(ctx: BuildContext) -> dict[str, ModelSlot]:
    slots = {}
    for k, arch in enumerate(cohort_archs(ctx.config)):
        name = f"student{k + 1}"
        slots[name] = ModelSlot(name, "cohort member", arch, ctx.new_model(arch, index=k))
    return slots


def mutual_stage(ctx: BuildContext, slots: dict[str, ModelSlot]):
    return make_mutual_stage({n: s.module for n, s in slots.items()}, ctx)


@register_method("mutual")
class MutualLearning(CohortMethod):
    sections = ("data", "loss", "train", "mutual", "speed")

    def check(self, config: dict) -> None:
        check_cohort(config, "mutual")

    def build(self, ctx: BuildContext):
        slots = build_cohort(ctx)
        return slots, [mutual_stage(ctx, slots)]
