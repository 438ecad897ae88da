"""``pcl``: PCL, Peer Collaborative Learning for Online Knowledge Distillation (Wu and Gong,
AAAI 2021, arXiv 2006.04147): peers taught by a peer ensemble teacher (a classifier on all
the peers' features) and by the temporal means of the other peers.

A cohort of K >= 2 separate networks of one architecture (``--cohort K``), the peers
``peer1..peerK``, each from its own initialisation. With z_k the peers' logits and h_k their
penultimate features (``methods.features``):

- the peer ensemble teacher, ``ensemble_teacher``, is a linear classifier on the peers'
  concatenated features, z_e = W [h_1, ..., h_K] + b, trained with CE(z_e, y); its gradient
  reaches the peers through their features;
- each peer's peer mean teacher, ``peer<k>_mean``, is the temporal mean of its weights (an
  exponential moving average with decay d = ``pcl.ema_decay`` after every update,
  ``cohort_loss.MeanTeachers``), run without gradient; z'_l are their logits.

Peer k's loss, at T = ``pcl.temperature`` and with w(e) = exp(-5 (1 - min(e, R) / R)^2) at
epoch e (0-based; R = ``pcl.rampup_epochs``, 0: no ramp):

    CE(z_k, y) + w(e) T^2 [ KL(softmax(z_e / T) || softmax(z_k / T))                     (pe)
                          + 1/(K-1) sum_{l != k} KL(softmax(z'_l / T) || softmax(z_k / T)) ]  (pm)

with the ensemble teacher detached in its KL, and the ensemble teacher's own loss CE(z_e, y)
added to the objective. Terms per peer: ``ce``, ``pe``, ``pm`` (weighted); the ensemble
teacher's: ``ce``.

Implemented from the paper: the peer ensemble teacher on concatenated features, the peer
mean teachers, both distillation terms with the ramped weight; separate networks instead of
the paper's branches on a shared trunk (so each peer's temporal mean is a network of its
own). Not implemented: the paper's differently augmented input per peer (every peer sees
the same augmented batch, as in DML). Assumed where we could not confirm the paper's
values: T = 3 (ONE's, which PCL builds on), decay 0.999 held constant from the first step
(Mean Teacher's usual value, without its warm-up), an 80-epoch ramp-up (OKDDip's, on the same
300-epoch schedule); the mean teachers run in train mode, their BatchNorm statistics their
own, as in Mean Teacher. The paper, as we read it, deploys a peer's temporal mean; the
record keeps every peer, every temporal mean, the ensemble teacher and the peers'
mean-softmax ensemble. A study compares PCL on its peers (``compared_members``), the
networks trained by gradient as every other cohort's members are: the ensemble teacher runs
all K peers, and a temporal mean is a second copy of each peer's weights; averaged in, either
would lift the arm against cohorts that have neither. An arm that is to be compared on the
temporal means, the paper's deployed models, names them with ``compare`` in its spec.
``pretrain = "hints"`` is refused (the temporal means start from the peers' initial weights).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..core.config import KeyType, register_section
from ..core.errors import UserError
from ..core.evaluation import widen
from .base import BuildContext, CohortMethod, ModelSlot, cohort_size, register_method
from .cohort import PATH_DEFAULTS, PATH_TYPES, CohortPath, make_cohort_stage
from .cohort_loss import CohortBatch, CohortLoss, CohortLosses, MeanTeachers, ramp_up
from .features import check_features, feature_width, logits_and_features
from .losses import _reduce, cross_entropy, kl_divergence
from .mutual import build_cohort

PCL_SECTION = register_section(
    "pcl",
    {"temperature": 3.0, "ema_decay": 0.999, "rampup_epochs": 80, **PATH_DEFAULTS},
    {"temperature": KeyType("number", lo=0, lo_open=True), "ema_decay": KeyType("number", lo=0, hi=1),
     "rampup_epochs": KeyType("int", lo=0), **PATH_TYPES},
)

TEACHER = "ensemble_teacher"


def peer_names(k: int) -> list[str]:
    return [f"peer{i + 1}" for i in range(k)]


def mean_names(k: int) -> list[str]:
    return [f"{name}_mean" for name in peer_names(k)]


class PeerEnsembleTeacher(nn.Module):
    """The peer ensemble teacher as a model of its own: the peers' penultimate features,
    concatenated in the peers' order, then the classifier."""

    def __init__(self, peers: list[nn.Module], classifier: nn.Linear) -> None:
        super().__init__()
        self.peers, self.classifier = nn.ModuleList(peers), classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([logits_and_features(p, x)[1] for p in self.peers], -1))


def peer_mean_kl(mean_logits: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[K, B]``: for peer k, (1/(K-1)) sum_{l != k} KL(softmax(z'_l / T) || softmax(z_k / T))."""
    k = logits.shape[0]
    pairs = kl_divergence(mean_logits.unsqueeze(1), logits.unsqueeze(0), temperature)  # [l, k, B]
    others = ~torch.eye(k, dtype=torch.bool, device=logits.device)  # l != k
    return (pairs * others.unsqueeze(-1)).sum(0) / (k - 1)


class PclLoss(CohortLoss):
    """The peers' losses and the ensemble teacher's (module docstring)."""

    uses_features = True
    others = (TEACHER,)

    def __init__(self, classifier: nn.Linear, means: MeanTeachers, temperature: float, rampup_epochs: int,
                 reduction: str) -> None:
        self.parts, self.means = classifier, means
        self.temperature, self.rampup_epochs, self.reduction = temperature, rampup_epochs, reduction

    def __call__(self, batch: CohortBatch) -> CohortLosses:
        logits, features, t, red = widen(batch.logits), widen(batch.features), self.temperature, self.reduction
        ensemble = widen(self.parts(torch.cat(list(features.unbind(0)), -1)))  # [B, C]
        w = ramp_up(self.epoch, self.rampup_epochs) * t**2
        ce = cross_entropy(logits, batch.target, red)  # [K]
        pe = w * _reduce(kl_divergence(ensemble.detach().expand_as(logits), logits, t), red)
        pm = w * _reduce(peer_mean_kl(widen(batch.mean_logits), logits, t), red)
        ce_e = cross_entropy(ensemble, batch.target, red)
        return CohortLosses(ce + pe + pm, {"ce": ce.detach(), "pe": pe.detach(), "pm": pm.detach()},
                            others={TEACHER: (ce_e, {"ce": ce_e.detach()})})


@register_method("pcl")
class PeerCollaborativeLearning(CohortMethod):
    sections = ("data", "loss", "train", "pcl", "speed")
    golden_cases = {
        # fused (BatchNorm-free pair); a fast-moving temporal mean and a two-epoch ramp-up, so that both terms weigh in
        "pcl": {"arch": ["seed_vgg_student"], "cohort": 2, "pcl": {"ema_decay": 0.5, "rampup_epochs": 2}},
        # plain: BatchNorm peers and temporal means, K = 3 (each peer averages two mean teachers)
        "pcl_plain_bn": {"arch": ["wrn_10_1"], "cohort": 3, "pcl": {"ema_decay": 0.9, "rampup_epochs": 0}},
    }

    def check(self, config: dict) -> None:
        if len(config["arch"]) != 1 or config["cohort"] < 2:
            raise UserError("pcl trains K peers of one architecture: give one --arch and --cohort K (K >= 2)")
        if config.get("pretrain", "none") != "none":
            raise UserError("pcl does not take pretrain = \"hints\" (its temporal means start from the peers' "
                            "initial weights); remove it")
        check_features(config["arch"], "pcl")

    def member_names(self, config: dict) -> list[str]:
        k = cohort_size(config)
        return [*peer_names(k), *mean_names(k), TEACHER]

    def compared_members(self, config: dict) -> list[str]:
        """The peers, not their temporal means or the ensemble teacher (module docstring)."""
        return peer_names(cohort_size(config))

    def build(self, ctx: BuildContext):
        k, arch = ctx.config["cohort"], ctx.config["arch"][0]
        peers = build_cohort(ctx, peer_names(k))
        members = {n: s.module for n, s in peers.items()}
        means = {}
        for name, member in zip(mean_names(k), members.values(), strict=True):
            means[name] = copy.deepcopy(member).requires_grad_(False)  # starts from the peer's weights
        width = k * feature_width(next(iter(members.values())))
        classifier = ctx.new_module(lambda: nn.Linear(width, ctx.num_classes), "ensemble_classifier", 0)
        cfg = ctx.config["pcl"]
        loss = PclLoss(classifier, MeanTeachers(means, cfg["ema_decay"]), cfg["temperature"], cfg["rampup_epochs"],
                       ctx.reduction)
        slots = dict(peers)
        slots.update({n: ModelSlot(n, "temporal mean", arch, m, trained=False) for n, m in means.items()})
        slots[TEACHER] = ModelSlot(TEACHER, "ensemble teacher", arch, PeerEnsembleTeacher(list(members.values()),
                                                                                         classifier))
        return slots, [make_cohort_stage(members, ctx, loss, CohortPath.from_config(ctx.config, "pcl"))]
