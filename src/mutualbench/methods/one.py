"""``one``: On-the-fly Native Ensemble (Lan, Zhu and Gong, NeurIPS 2018, arXiv 1806.04606).

One network with shared low layers (the trunk) and K branches (the higher layers and the
classifier, one copy per branch; ``--cohort K``). A gate on the trunk's features (global
average pooling, a linear layer to K scores, batch normalisation, ReLU, softmax) weighs
the branches' logits into the ensemble's logits z_e = sum_k g_k z_k, the teacher that is
trained with them on the fly. The loss of one batch is

    L = sum_k CE(z_k, y) + CE(z_e, y) + T^2 sum_k KL(softmax(z_e / T) || softmax(z_k / T))

with T = ``one.temperature`` (3 in the paper), the KL terms weighted by w(epoch): 1 in the
paper's equation (``one.rampup_epochs = 0``, the default), or the sigmoid ramp-up
exp(-5 (1 - t)^2), t = epoch / ``one.rampup_epochs`` (``cohort_loss.ramp_up``), with which the
OKDDip authors' code trains its ONE baseline (80 epochs of 300, weight 1): early in training
the gated ensemble is no better than its branches, and a full-weight pull towards it lets the
whole network settle on one uniform prediction (CE ln C, KL 0). The ensemble's distribution
is a target in the KL terms (detached, as a teacher's is in KD): the branches learn from it,
and it learns from the labels (its CE) and through the branches it is made of.

The models of a run are ``branch1`` ... ``branchK`` (each the trunk with its own branch: a
network one can deploy alone, counted with the trunk) and ``ensemble`` (the whole network
with its gate). Branch k is initialised as model k of the run would be (``new_parts``), the
trunk as model 0's; the gate from its own seed. Per model, the record keeps the terms
``ce`` and ``kl`` (branches) and ``ce`` (the ensemble): they add up to the batch's loss.

A study compares ONE on its branches (``compared_members``): each is one network of the
cohort's size, as DML's students are; the gated ensemble runs all K branches and is the
branches' teacher, so it is reported beside them but not averaged in.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.config import KeyType, register_section
from ..core.errors import UserError
from .base import BuildContext, Method, ModelSlot, OptimizingStage, loss_terms, register_method
from .cohort_loss import ramp_up
from .losses import _reduce, cross_entropy, kl_divergence
from .stages import autocast_bf16, channels_last_input, layout_description, to_channels_last

ONE_SECTION = register_section(
    "one",
    # split_at None: branch off before the architecture's last stage; rampup_epochs 0: no ramp-up
    {"temperature": 3.0, "split_at": None, "rampup_epochs": 0},
    {"temperature": KeyType("number", lo=0, lo_open=True), "split_at": KeyType("str", nullable=True),
     "rampup_epochs": KeyType("int", lo=0)},
)


class Gate(nn.Module):
    """The branches' weights per image from the trunk's features: pool, linear, BN, ReLU, softmax."""

    def __init__(self, channels: int, branches: int) -> None:
        super().__init__()
        self.pool, self.fc, self.bn = nn.AdaptiveAvgPool2d(1), nn.Linear(channels, branches), nn.BatchNorm1d(branches)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.fc(self.pool(h).flatten(1)))).softmax(-1)  # [B, K]


class Branch(nn.Module):
    """Branch k as a network of its own: the shared trunk, then the branch."""

    def __init__(self, trunk: nn.Module, branch: nn.Module) -> None:
        super().__init__()
        self.trunk, self.branch = trunk, branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(self.trunk(x))


class OneNetwork(nn.Module):
    """The trunk, the K branches and the gate; ``forward`` gives the ensemble's logits."""

    def __init__(self, trunk: nn.Module, branches: list[nn.Module], gate: Gate) -> None:
        super().__init__()
        self.trunk, self.branches, self.gate = trunk, nn.ModuleList(branches), gate

    def all_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the branches' logits [K, B, C], the ensemble's logits [B, C])."""
        h = self.trunk(x)
        logits = torch.stack([b(h) for b in self.branches])
        weights = self.gate(h).to(logits.dtype)  # [B, K]
        return logits, torch.einsum("bk,kbc->bc", weights, logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_logits(x)[1]


def one_loss_terms(logits: torch.Tensor, ensemble: torch.Tensor, target: torch.Tensor, temperature: float,
                   reduction: str = "sum", kl_weight: float = 1.0,
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """ONE's loss of a batch from the branches' ``[K, B, C]`` and the ensemble's ``[B, C]``
    logits: (the total, the ensemble's CE, the branches' terms ``ce`` and ``kl``, ``[K]``
    each, the KL weighted by ``kl_weight`` T^2); total = sum of the branches' terms + the
    ensemble's CE."""
    ce = cross_entropy(logits, target, reduction)  # [K]
    kl = _reduce(kl_divergence(ensemble.detach().expand_as(logits), logits, temperature), reduction)
    kl = kl_weight * temperature**2 * kl
    ce_e = cross_entropy(ensemble, target, reduction)
    return ce.sum() + ce_e + kl.sum(), ce_e, {"ce": ce, "kl": kl}


class OneStage(OptimizingStage):
    """Every part of the network (trunk, branches, gate) updated by one optimizer on ONE's loss
    (the whole network and every batch channels-last with ``speed.channels_last``)."""

    name = "train"

    def __init__(self, network: OneNetwork, names: list[str], ctx: BuildContext) -> None:
        self.network, self.names, self.device, self.bf16 = network, names, ctx.device, ctx.bf16
        self.channels_last = ctx.channels_last
        self.cfg, self.reduction = ctx.config["train"], ctx.reduction
        self.temperature, self.rampup_epochs = ctx.config["one"]["temperature"], ctx.config["one"]["rampup_epochs"]
        self.epochs = self.cfg["epochs"]
        self.eval_names = (*names, "ensemble")

    def begin(self) -> None:
        if self.channels_last:
            to_channels_last(self.network)
        self.optimizers = {"network": self.new_optimizer(self.network.parameters(), self.cfg, self.device)}

    def train_mode(self) -> None:
        self.network.train()

    def describe(self) -> dict:
        return layout_description(self.channels_last, self.bf16)

    def step(self, x, y):
        x = channels_last_input(x, self.channels_last)
        with autocast_bf16(self.device, self.bf16):
            logits, ensemble = self.network.all_logits(x)
        total, ce_e, terms = one_loss_terms(logits, ensemble, y, self.temperature, self.reduction,
                                            ramp_up(self.epoch, self.rampup_epochs))
        self.optimizers["network"].step(total)
        with torch.no_grad():
            out = loss_terms("ensemble", ce_e, {"ce": ce_e})
            for k, name in enumerate(self.names):
                out.update(loss_terms(name, terms["ce"][k] + terms["kl"][k], {t: v[k] for t, v in terms.items()}))
        return out


def branch_names(k: int) -> list[str]:
    return [f"branch{i + 1}" for i in range(k)]


def split_point(ctx: BuildContext, arch: str) -> str:
    """``one.split_at``, or the architecture's stage before its last."""
    chosen = ctx.config["one"]["split_at"]
    if chosen is not None:
        return chosen
    stages = list(getattr(ctx.new_model(arch, 0), "stages", {}))
    if len(stages) < 2:
        raise UserError(f"one: architecture {arch!r} has no stage to branch off after; give --set one.split_at=STAGE "
                        "or pick one of the suite's CIFAR architectures")
    return stages[-2]


@torch.no_grad()
def _channels(trunk: nn.Module) -> int:
    """The channels of the trunk's output (measured in eval mode: no BatchNorm statistic moves)."""
    p = next(trunk.parameters())
    trunk.eval()
    try:
        return trunk(torch.zeros(1, 3, 32, 32, device=p.device, dtype=p.dtype)).shape[1]
    finally:
        trunk.train()


@register_method("one")
class OnTheFlyNativeEnsemble(Method):
    sections = ("data", "loss", "train", "one")
    golden_cases = {"one": {"arch": ["wrn_10_1"], "cohort": 3, "one": {"temperature": 2.0}}}

    def check(self, config: dict) -> None:
        if len(config["arch"]) != 1 or config["cohort"] < 2:
            raise UserError("one trains K branches of one network: give one --arch and --cohort K (K >= 2)")
        if config.get("pretrain", "none") != "none":
            raise UserError("one does not take pretrain = \"hints\" (its branches share a trunk); remove it")

    def member_names(self, config: dict) -> list[str]:
        return [*branch_names(config["cohort"]), "ensemble"]

    def compared_members(self, config: dict) -> list[str]:
        """The branches, not the gated ensemble (module docstring)."""
        return branch_names(config["cohort"])

    def build(self, ctx: BuildContext):
        arch, k = ctx.config["arch"][0], ctx.config["cohort"]
        at = split_point(ctx, arch)
        trunk, _ = ctx.new_parts(arch, 0, at)
        branches = [ctx.new_parts(arch, i, at)[1] for i in range(k)]
        channels = _channels(trunk)
        gate = ctx.new_module(lambda: Gate(channels, k), "gate", 0)
        network = OneNetwork(trunk, branches, gate)
        names = branch_names(k)
        slots = {name: ModelSlot(name, "branch", arch, Branch(trunk, b)) for name, b in zip(names, branches, strict=True)}
        slots["ensemble"] = ModelSlot("ensemble", "gated ensemble", arch, network)
        return slots, [OneStage(network, names, ctx)]

