"""``okddip``: OKDDip, Online Knowledge Distillation with Diverse Peers (Chen et al., AAAI
2020, arXiv 1912.00350): peers that learn from their own attention-weighted aggregates of
the peers' logits, and a group leader that learns from the peers' mean.

A cohort of K >= 3 separate networks of one architecture (``--cohort K``): the auxiliary
peers ``peer1..peer(K-1)`` and the group leader ``leader`` (the model meant for inference),
each from its own initialisation, all updated together. With z_j the peers' logits, h_j
their penultimate features (``methods.features``) and two shared projections without bias,
L_q and L_k (D -> D / ``okddip.factor``), peer i's target is

    t_i = sum_j a_ij z_j,  a_ij = softmax_j((L_q h_i) . (L_k h_j))     (j over the peers, i included)

and the leader's is the peers' mean logits, t_l = (1 / (K-1)) sum_j z_j. The losses, at
T = ``okddip.temperature``:

    peer i:  CE(z_i, y) + w(e) T^2 KL(softmax(t_i / T) || softmax(z_i / T))
    leader:  CE(z_l, y) + w(e) T^2 KL(softmax(t_l / T) || softmax(z_l / T))

with w(e) = ``okddip.weight`` * exp(-5 (1 - min(e, R) / R)^2) at epoch e (0-based; R =
``okddip.rampup_epochs``, 0: no ramp), the ramp-up of the authors' code.

As in the authors' released code (train_GL.py, and utils.KL_Loss for the KL), neither
target is detached: the projections learn through the peers' KL terms (they would get no
gradient otherwise), and the peers get the gradient of the leader's term through its
target. Implemented from the paper and that code: two-level distillation, the attention
(projections without bias, factor 8), T = 3, weight 1, an 80-epoch ramp-up; separate
networks, as the code's ``MulStu`` variant has them (the paper's main setting is branches on
a shared trunk). Not implemented: the code's 1e-7 added to the target probabilities. The
attention's projections are the loss's own parameters (drawn from their own seed, kept in
the stage's checkpoint). Terms per model: ``ce`` and ``kl`` (weighted). The record's
ensemble is the mean softmax of all K networks.

A study compares OKDDip on its group leader alone (``compared_members``): the paper's
abstract calls it "the model used for inference", and the auxiliary peers exist to teach it;
the peers are reported beside it but not averaged in.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.config import KeyType, register_section
from ..core.errors import UserError
from ..core.evaluation import widen
from .base import BuildContext, CohortMethod, cohort_size, register_method
from .cohort import PATH_DEFAULTS, PATH_TYPES, CohortPath, make_cohort_stage
from .cohort_loss import CohortBatch, CohortLoss, CohortLosses, ramp_up
from .features import check_features, feature_width
from .losses import _reduce, cross_entropy, kl_divergence
from .mutual import build_cohort

OKDDIP_SECTION = register_section(
    "okddip",
    {"temperature": 3.0, "weight": 1.0, "rampup_epochs": 80, "factor": 8, **PATH_DEFAULTS},
    {"temperature": KeyType("number", lo=0, lo_open=True), "weight": KeyType("number", lo=0),
     "rampup_epochs": KeyType("int", lo=0), "factor": KeyType("int", lo=1), **PATH_TYPES},
)


def okddip_names(k: int) -> list[str]:
    """``peer1..peer(K-1)`` and ``leader``."""
    return [*(f"peer{i + 1}" for i in range(k - 1)), "leader"]


class PeerAttention(nn.Module):
    """The peers' aggregation weights from their features: a_ij = softmax_j((L_q h_i) . (L_k h_j))."""

    def __init__(self, width: int, factor: int) -> None:
        super().__init__()
        inner = max(1, width // factor)
        self.query = nn.Linear(width, inner, bias=False)
        self.key = nn.Linear(width, inner, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[m, B, D]`` features of m peers -> ``[B, m, m]`` weights, each row summing to 1."""
        energy = torch.einsum("ibd,jbd->bij", self.query(features), self.key(features))
        return energy.softmax(-1)


class OkddipLoss(CohortLoss):
    """The peers' and the leader's losses (module docstring); the last member is the leader."""

    uses_features = True

    def __init__(self, attention: PeerAttention, temperature: float, weight: float, rampup_epochs: int,
                 reduction: str) -> None:
        self.parts = attention
        self.temperature, self.weight, self.rampup_epochs, self.reduction = temperature, weight, rampup_epochs, reduction

    def distillation_weight(self) -> float:
        """w(e) at this epoch."""
        return self.weight * ramp_up(self.epoch, self.rampup_epochs)

    def targets(self, logits: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the peers' targets ``[K-1, B, C]``, the leader's ``[B, C]``), with their gradients."""
        peers = logits[:-1]
        weights = widen(self.parts(features[:-1]))  # [B, m, m]
        return torch.einsum("bij,jbc->ibc", weights, peers), peers.mean(0)

    def __call__(self, batch: CohortBatch) -> CohortLosses:
        logits, features, t, red = widen(batch.logits), widen(batch.features), self.temperature, self.reduction
        peer_targets, leader_target = self.targets(logits, features)
        ce = cross_entropy(logits, batch.target, red)  # [K]
        kl_peers = _reduce(kl_divergence(peer_targets, logits[:-1], t), red)  # [K-1]
        kl_leader = _reduce(kl_divergence(leader_target, logits[-1], t), red)  # []
        kl = self.distillation_weight() * t**2 * torch.cat([kl_peers, kl_leader.unsqueeze(0)])
        return CohortLosses(ce + kl, {"ce": ce.detach(), "kl": kl.detach()})


@register_method("okddip")
class DiversePeers(CohortMethod):
    sections = ("data", "loss", "train", "okddip", "speed")
    # two peers and the leader, fused; a two-epoch ramp-up (weights exp(-5) and exp(-1.25))
    golden_cases = {"okddip": {"arch": ["seed_vgg_student"], "cohort": 3, "okddip": {"rampup_epochs": 2}}}

    def check(self, config: dict) -> None:
        if len(config["arch"]) != 1 or config["cohort"] < 3:
            raise UserError("okddip trains K - 1 peers and a group leader of one architecture: give one --arch and "
                            "--cohort K (K >= 3)")
        check_features(config["arch"], "okddip")

    def member_names(self, config: dict) -> list[str]:
        return okddip_names(cohort_size(config))

    def compared_members(self, config: dict) -> list[str]:
        """The group leader, the model deployed (module docstring)."""
        return ["leader"]

    def build(self, ctx: BuildContext):
        slots = build_cohort(ctx, okddip_names(ctx.config["cohort"]))
        cfg = ctx.config["okddip"]
        width = feature_width(next(iter(slots.values())).module)
        attention = ctx.new_module(lambda: PeerAttention(width, cfg["factor"]), "attention", 0)
        loss = OkddipLoss(attention, cfg["temperature"], cfg["weight"], cfg["rampup_epochs"], ctx.reduction)
        stage = make_cohort_stage({n: s.module for n, s in slots.items()}, ctx, loss,
                                  CohortPath.from_config(ctx.config, "okddip"))
        return slots, [stage]
