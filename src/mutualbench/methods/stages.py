"""The stages methods are made of: supervised training of one model (CE or KD), FitNets hint
pretraining, and mutual learning of a cohort (plain paths; the fused cohort step lives in
``mutualbench.methods.cohort``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ..archs import FeatureModel
from ..core.config import derive_seed
from ..core.errors import UserError
from .base import OptimizingStage, default_dtype, loss_terms
from .losses import hint_loss, mutual_loss_terms


def autocast_bf16(device: torch.device, on: bool):
    """bfloat16 autocast of the forward passes (``speed.bf16``); weights, optimizer state and
    losses stay float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


class SupervisedStage(OptimizingStage):
    """Train one model with ``loss_fn(x, y)``, which returns ``(total, {term: value})`` (or
    the total alone, recorded without terms);
    ``frozen`` modules (a teacher) stay in eval mode. With ``bf16`` the loss is computed
    under bfloat16 autocast."""

    def __init__(self, name: str, model_name: str, model: nn.Module, loss_fn: Callable, train_cfg: dict,
                 device: torch.device, frozen: tuple[nn.Module, ...] = (), bf16: bool = False) -> None:
        self.name, self.model_name, self.model, self.loss_fn = name, model_name, model, loss_fn
        self.cfg, self.device, self.frozen, self.bf16 = train_cfg, device, frozen, bf16
        self.epochs = train_cfg["epochs"]
        self.eval_names = (model_name,)

    def begin(self) -> None:
        self.optimizers = {self.model_name: self.new_optimizer(self.model.parameters(), self.cfg, self.device)}

    def train_mode(self) -> None:
        self.model.train()
        for m in self.frozen:
            m.eval()

    def describe(self) -> dict:
        return {"bf16": self.bf16} if self.bf16 else {}

    def step(self, x, y):
        with autocast_bf16(self.device, self.bf16):
            out = self.loss_fn(x, y)
        loss, terms = (out, {}) if isinstance(out, torch.Tensor) else out
        self.optimizers[self.model_name].step(loss)
        return loss_terms(self.model_name, loss, terms)


class HintStage(OptimizingStage):
    """FitNets stage 1 for every student: its layers up to ``student_tap`` plus a conv
    regressor are trained to minimise 1/2 ||G - r(H)||^2 against the frozen teacher's
    ``teacher_tap``; nothing else moves. Each student has its own regressor and optimizer."""

    name = "hint"

    def __init__(self, students: dict[str, FeatureModel], teacher: FeatureModel, student_tap: str,
                 teacher_tap: str, hint_cfg: dict, reduction: str, seed: int, device: torch.device,
                 bf16: bool = False) -> None:
        self.students, self.teacher, self.bf16 = students, teacher, bf16
        self.student_tap, self.teacher_tap = student_tap, teacher_tap
        self.cfg, self.reduction, self.seed, self.device = hint_cfg, reduction, seed, device
        self.epochs = hint_cfg["epochs"]
        self.eval_names = tuple(students)
        g_shape = teacher.tap_shape(teacher_tap)
        self.regressors = nn.ModuleDict()
        for index, (name, student) in enumerate(students.items()):
            h_shape = student.tap_shape(student_tap)
            if h_shape[1:] != g_shape[1:]:
                raise UserError(
                    f"hint tap {student_tap!r} of {student.arch_name} is {h_shape[1]}x{h_shape[2]} but the "
                    f"teacher's {teacher_tap!r} is {g_shape[1]}x{g_shape[2]}; choose taps of the same spatial size"
                )
            k = hint_cfg["regressor_kernel"]
            dtype = next(student.parameters()).dtype  # the run's dtype (speed.dtype)
            with torch.random.fork_rng(devices=[]), default_dtype(dtype):
                torch.manual_seed(derive_seed(seed, "regressor", index))
                self.regressors[name] = nn.Conv2d(h_shape[0], g_shape[0], k, padding=k // 2).to(device)

    def hinted_parameters(self, name: str) -> list[nn.Parameter]:
        return list(self.students[name].parameters_up_to(self.student_tap)) + list(self.regressors[name].parameters())

    def begin(self) -> None:
        self.optimizers = {name: self.new_optimizer(self.hinted_parameters(name), self.cfg, self.device)
                           for name in self.students}

    def train_mode(self) -> None:
        self.teacher.eval()
        for s in self.students.values():
            s.train()
        self.regressors.train()

    def describe(self) -> dict:
        return {"bf16": self.bf16} if self.bf16 else {}

    def step(self, x, y):
        with torch.no_grad(), autocast_bf16(self.device, self.bf16):
            guided = self.teacher.forward_to(x, self.teacher_tap)
        losses = {}
        for name, student in self.students.items():
            with autocast_bf16(self.device, self.bf16):
                hint = student.forward_to(x, self.student_tap)
                loss = hint_loss(guided, self.regressors[name](hint), self.reduction)
            self.optimizers[name].step(loss)
            losses.update(loss_terms(name, loss, {"hint": loss}))
        return losses

    def extra_state(self) -> dict:
        return {"regressors": self.regressors.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.regressors.load_state_dict(state["regressors"])


class MutualStage(OptimizingStage):
    """Deep mutual learning of a cohort, plain paths.

    ``channels_last`` converts the members and the input to channels-last memory format;
    ``bf16`` runs the forward passes under bfloat16 autocast; ``compile_mode`` (not None)
    runs each member through ``torch.compile`` with that mode.

    ``sequential``: the paper's Algorithm 1. For each member k in turn: its loss against the
    peers' current predictions, an update, then its predictions are recomputed for the
    members after it. ``simultaneous``: one set of predictions, every member updated
    together (one backward of sum_k L_k, peers detached; one optimizer over all members is
    exactly K optimizers since Adam and SGD act element-wise).
    """

    name = "mutual"

    def __init__(self, members: dict[str, nn.Module], train_cfg: dict, mutual_cfg: dict, reduction: str,
                 device: torch.device, why_plain: str = "", channels_last: bool = False, bf16: bool = False,
                 compile_mode: str | None = None) -> None:
        self.members, self.cfg, self.device = members, train_cfg, device
        self.why_plain, self.channels_last = why_plain, channels_last
        self.bf16, self.compile_mode = bf16, compile_mode
        self.order, self.peer_weight = mutual_cfg["update_order"], mutual_cfg["peer_weight"]
        self.reduction = reduction
        self.epochs = train_cfg["epochs"]
        self.eval_names = tuple(members)

    def describe(self) -> dict:
        return {"cohort_path": "plain", "update_order": self.order, "why_plain": self.why_plain,
                "channels_last": self.channels_last, "bf16": self.bf16, "compile": self.compile_mode is not None,
                "compile_mode": self.compile_mode}

    def begin(self) -> None:
        if self.channels_last:
            for m in self.members.values():
                m.to(memory_format=torch.channels_last)
        if self.order == "sequential":
            self.optimizers = {n: self.new_optimizer(m.parameters(), self.cfg, self.device) for n, m in self.members.items()}
        else:
            params = [p for m in self.members.values() for p in m.parameters()]
            self.optimizers = {"cohort": self.new_optimizer(params, self.cfg, self.device)}
        models = list(self.members.values())
        self._forwards = [torch.compile(m, mode=self.compile_mode) for m in models] if self.compile_mode else models

    def train_mode(self) -> None:
        for m in self.members.values():
            m.train()

    def step(self, x, y):
        with autocast_bf16(self.device, self.bf16):
            return self._step(x, y)

    def _step(self, x, y):
        names, models = list(self.members), self._forwards
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.order == "simultaneous":
            losses, terms = mutual_loss_terms(torch.stack([m(x) for m in models]), y, self.peer_weight, self.reduction)
            self.optimizers["cohort"].step(losses.sum())
            return cohort_losses(names, losses, terms)
        # sequential (Algorithm 1)
        with torch.no_grad():
            current = [None] + [m(x) for m in models[1:]]
        out = {}
        for k, model in enumerate(models):
            logits = model(x)
            stacked = torch.stack([logits if j == k else current[j] for j in range(len(models))])
            losses, terms = mutual_loss_terms(stacked, y, self.peer_weight, self.reduction)
            self.optimizers[names[k]].step(losses[k])
            out.update(loss_terms(names[k], losses[k], {t: v[k] for t, v in terms.items()}))
            if k < len(models) - 1:
                with torch.no_grad():
                    current[k] = model(x)
        return out


def cohort_losses(names: list[str], losses: torch.Tensor, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A stage's losses from the ``[K]`` totals and terms of ``mutual_loss_terms``."""
    out = {}
    for k, name in enumerate(names):
        out.update(loss_terms(name, losses[k], {t: v[k] for t, v in terms.items()}))
    return out
