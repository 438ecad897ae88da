"""``mutual``: Deep Mutual Learning (Zhang et al. 2018) of a cohort of K >= 2 students, each
from its own initialisation; update order ``sequential`` (Algorithm 1) or ``simultaneous``.

The method is its cohort loss, ``MutualLoss``: for every member k,
CE(p_k, y) + w * sum_{l != k} KL(p_l || p_k), peers detached (``losses.mutual_loss_terms``),
with w = 1/(K-1) (``peer_weight = "mean"``, the paper) or 1 (``"sum"``, the official code).
The paper's loss weighs the KL terms fully from the first step (``rampup_epochs = 0``, the
default); ``rampup_epochs = R`` multiplies them by the sigmoid ramp-up exp(-5 (1 - e/R)^2) in
epoch e (``cohort_loss.ramp_up``), as OKDDip's and PCL's losses and the OKDDip authors' ONE
baseline have it (their DML baseline has none): not DML's method, an ablation of it.
The cohort stages run it on the plain or the fused path (``cohort.make_cohort_stage``)."""

from __future__ import annotations

from ..core.config import KeyType, register_section
from ..core.errors import UserError
from .base import BuildContext, CohortMethod, ModelSlot, Stage, cohort_archs, register_method
from .cohort import CohortPath, make_cohort_stage
from .cohort_loss import CohortBatch, CohortLoss, CohortLosses, ramp_up
from .losses import mutual_loss_terms

MUTUAL_SECTION = register_section(
    "mutual",
    {
        "peer_weight": "mean",  # 1/(K-1) per peer (the paper), or "sum" (the official code)
        "update_order": "simultaneous",  # or "sequential" (the paper's Algorithm 1)
        "fuse": True,  # the fused cohort step for simultaneous updates of same-arch cohorts
        "fused_impl": "auto",  # vmap on CUDA, unbind on the CPU (see methods/cohort.py)
        "rampup_epochs": 0,  # the paper: the KL terms at full weight from the first step
    },
    {
        "peer_weight": KeyType("choice", choices=("mean", "sum")),
        "update_order": KeyType("choice", choices=("sequential", "simultaneous")),
        "fuse": KeyType("bool"),
        "fused_impl": KeyType("choice", choices=("auto", "vmap", "unbind")),
        "rampup_epochs": KeyType("int", lo=0),
    },
)


class MutualLoss(CohortLoss):
    """DML's loss of every member at once (``losses.mutual_loss_terms``): terms ``ce`` and
    ``kl`` (the weighted peer KL, ramped up over ``rampup_epochs`` when that is not 0). Member
    k's loss needs only its peers' predictions, so the members can also be updated in turn
    (Algorithm 1)."""

    sequential = True

    def __init__(self, peer_weight: str, reduction: str, rampup_epochs: int = 0) -> None:
        self.peer_weight, self.reduction, self.rampup_epochs = peer_weight, reduction, rampup_epochs

    def __call__(self, batch: CohortBatch) -> CohortLosses:
        totals, terms = mutual_loss_terms(batch.logits, batch.target, self.peer_weight, self.reduction,
                                          kl_weight=ramp_up(self.epoch, self.rampup_epochs))
        return CohortLosses(totals, terms)


def check_cohort(config: dict, method: str) -> None:
    if config["cohort"] < 2 and len(config["arch"]) < 2:
        raise UserError(f"{method} needs a cohort of at least 2 students: add --cohort 2 (or list two --arch names)")
    cohort_archs(config)


def build_cohort(ctx: BuildContext, names: list[str] | None = None, role: str = "cohort member") -> dict[str, ModelSlot]:
    """The cohort's members, model k from its own initialisation (``ctx.new_model``), named
    ``student1..K`` unless ``names`` are given."""
    archs = cohort_archs(ctx.config)
    names = names or [f"student{k + 1}" for k in range(len(archs))]
    return {name: ModelSlot(name, role, arch, ctx.new_model(arch, index=k))
            for k, (name, arch) in enumerate(zip(names, archs, strict=True))}


def make_mutual_stage(members: dict, ctx: BuildContext) -> Stage:
    """DML's stage for ``members`` (name -> module) as the ``mutual`` section says."""
    section = ctx.config["mutual"]
    loss = MutualLoss(section["peer_weight"], ctx.reduction, section["rampup_epochs"])
    return make_cohort_stage(members, ctx, loss, CohortPath.from_config(ctx.config, "mutual"), name="mutual")


def mutual_stage(ctx: BuildContext, slots: dict[str, ModelSlot]) -> Stage:
    return make_mutual_stage({n: s.module for n, s in slots.items()}, ctx)


@register_method("mutual")
class MutualLearning(CohortMethod):
    sections = ("data", "loss", "train", "mutual", "speed")

    def check(self, config: dict) -> None:
        check_cohort(config, "mutual")

    def build(self, ctx: BuildContext):
        slots = build_cohort(ctx)
        return slots, [mutual_stage(ctx, slots)]
