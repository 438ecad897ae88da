"""A cohort method is its loss: what the cohort stages minimise, given as a ``CohortLoss``.

The cohort stages (``stages.CohortStage``, the plain paths, and ``cohort.FusedCohortStage``,
the fused step) run the K members on a batch and update them; what they minimise is the
method's ``CohortLoss``, so that every cohort method (DML, KDCL, OKDDip, PCL) has both paths
and the fused = plain tests cover each. One step of a loss:

- it is given a ``CohortBatch``: the members' logits ``[K, B, C]``, the labels ``[B]``, and
  what it asked the stage for: the members' penultimate features ``[K, B, D]``
  (``uses_features``), and the logits ``[K, B, C]`` of the members' temporal means (``means``:
  ``MeanTeachers``, which the stage runs without gradient and moves towards the members
  after every update);
- it returns ``CohortLosses``: every member's loss ``[K]`` and its named terms (``[K]``
  each, weights applied, adding up to the loss), and the losses of trained parts of the run
  that are not members (PCL's ensemble teacher, a model of the run named in ``others``).

A loss may own trained parameters (``parts``: OKDDip's attention projections, PCL's
ensemble classifier): the stage updates them with the members, by the same optimizer, and
keeps them in its checkpoint. ``begin_epoch`` tells the loss the epoch (0-based, within the
stage) for ramped weights. One backward of ``CohortLosses.objective()`` (the members' losses
and the others', summed) updates everything at once; a loss whose member k's loss can be
taken alone against its peers' current predictions (DML) is ``sequential``, which allows
DML's Algorithm 1 (members updated in turn).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .base import loss_terms


@dataclass
class CohortBatch:
    """What a cohort loss sees of one step."""

    logits: torch.Tensor  # [K, B, C], the members in their order
    target: torch.Tensor  # [B]
    features: torch.Tensor | None = None  # [K, B, D]: penultimate features, when the loss uses_features
    mean_logits: torch.Tensor | None = None  # [K, B, C], no gradient: the members' temporal means, when it has means


@dataclass
class CohortLosses:
    """One step's losses: ``totals`` ``[K]`` (member k's loss), ``terms`` (name -> ``[K]``,
    the parts of each total, weights applied), and ``others``: name -> (loss, terms) of the
    trained parts of the run that are not members (each the name of a model of the run)."""

    totals: torch.Tensor
    terms: dict[str, torch.Tensor]
    others: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = field(default_factory=dict)

    def objective(self) -> torch.Tensor:
        """What one backward differentiates: sum_k L_k, plus the others' losses."""
        total = self.totals.sum()
        for value, _ in self.others.values():
            total = total + value
        return total

    def recorded(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The losses as a stage returns them (``loss_terms``), the members under ``names``."""
        out = {}
        for k, name in enumerate(names):
            out.update(loss_terms(name, self.totals[k], {t: v[k] for t, v in self.terms.items()}))
        for name, (value, terms) in self.others.items():
            out.update(loss_terms(name, value, terms))
        return out


@dataclass
class MeanTeachers:
    """Temporal means of the members (Tarvainen and Valpola's Mean Teacher): one module per
    member, of the member's architecture and starting from its weights, whose parameters
    follow the member's as an exponential moving average, theta' <- d * theta' + (1 - d) *
    theta after every update (d = ``decay``). The stage runs them in train mode without
    gradient, as Mean Teacher does (their BatchNorm statistics are their own, from those
    passes), and gives their logits to the loss. They are models of the run (``modules``,
    named, in the members' order), evaluated and checkpointed as any other."""

    modules: dict[str, nn.Module]
    decay: float


class CohortLoss:
    """The loss of a cohort method (see the module docstring). Subclasses implement
    ``__call__`` and set what they need of the stage."""

    uses_features: bool = False  # the batch carries the members' penultimate features
    sequential: bool = False  # member k's loss alone against its peers' current predictions is defined
    means: MeanTeachers | None = None  # the members' temporal means, run and updated by the stage
    parts: nn.Module | None = None  # the loss's own trained parameters
    others: tuple[str, ...] = ()  # models of the run with their own losses in CohortLosses.others
    epoch: int = 0  # the epoch being trained, 0-based within the stage (begin_epoch)

    def __call__(self, batch: CohortBatch) -> CohortLosses:
        raise NotImplementedError

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def part_parameters(self) -> list[nn.Parameter]:
        return list(self.parts.parameters()) if self.parts is not None else []


def ramp_up(epoch: int, length: float) -> float:
    """The sigmoid-shaped ramp-up of Laine and Aila's temporal ensembling (used by Mean
    Teacher, OKDDip and PCL for their distillation weights): exp(-5 (1 - t)^2) with
    t = min(epoch, length) / length, so exp(-5) at the first epoch and 1 from ``length`` on;
    1 throughout when ``length`` is 0."""
    if length <= 0:
        return 1.0
    t = min(max(epoch, 0), length) / length
    return math.exp(-5.0 * (1.0 - t) ** 2)
