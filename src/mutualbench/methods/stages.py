"""The stages methods are made of: supervised training of one model (CE or KD), FitNets hint
pretraining, and a cohort trained on its method's ``CohortLoss`` (plain paths; the fused
cohort step lives in ``mutualbench.methods.cohort``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ..archs import FeatureModel
from ..core.config import derive_seed
from ..core.errors import UserError
from .base import OptimizingStage, default_dtype, loss_terms
from .cohort_loss import CohortBatch, CohortLoss
from .features import WithFeatures
from .losses import hint_loss


def autocast_bf16(device: torch.device, on: bool):
    """bfloat16 autocast of the forward passes (``speed.bf16``); weights, optimizer state and
    losses stay float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


def to_channels_last(*modules: nn.Module | None) -> None:
    """Lay out every 4-d weight of ``modules`` channels-last (in place: the parameters stay the
    same objects, so optimizers and checkpoints see no difference)."""
    for module in modules:
        if module is not None:
            module.to(memory_format=torch.channels_last)


def channels_last_input(x: torch.Tensor, on: bool) -> torch.Tensor:
    """A batch of images in channels-last layout when ``on`` (one reorder per batch, instead of
    one per convolution); anything else as it is."""
    return x.contiguous(memory_format=torch.channels_last) if on and x.ndim == 4 else x


def layout_description(channels_last: bool, bf16: bool) -> dict:
    """A single-model stage's ``describe``: its memory layout, and bf16 where on."""
    return {"channels_last": channels_last, **({"bf16": True} if bf16 else {})}


class SupervisedStage(OptimizingStage):
    """Train one model with ``loss_fn(x, y)``, which returns ``(total, {term: value})`` (or
    the total alone, recorded without terms);
    ``frozen`` modules (a teacher) stay in eval mode. With ``bf16`` the loss is computed
    under bfloat16 autocast; with ``channels_last`` the model, the frozen modules and every
    batch are laid out channels-last (``speed.channels_last``)."""

    def __init__(self, name: str, model_name: str, model: nn.Module, loss_fn: Callable, train_cfg: dict,
                 device: torch.device, frozen: tuple[nn.Module, ...] = (), bf16: bool = False,
                 channels_last: bool = False) -> None:
        self.name, self.model_name, self.model, self.loss_fn = name, model_name, model, loss_fn
        self.cfg, self.device, self.frozen, self.bf16 = train_cfg, device, frozen, bf16
        self.channels_last = channels_last
        self.epochs = train_cfg["epochs"]
        self.eval_names = (model_name,)

    def begin(self) -> None:
        if self.channels_last:
            to_channels_last(self.model, *self.frozen)
        self.optimizers = {self.model_name: self.new_optimizer(self.model.parameters(), self.cfg, self.device)}

    def train_mode(self) -> None:
        self.model.train()
        for m in self.frozen:
            m.eval()

    def describe(self) -> dict:
        return layout_description(self.channels_last, self.bf16)

    def step(self, x, y):
        x = channels_last_input(x, self.channels_last)
        with autocast_bf16(self.device, self.bf16):
            out = self.loss_fn(x, y)
        loss, terms = (out, {}) if isinstance(out, torch.Tensor) else out
        self.optimizers[self.model_name].step(loss)
        return loss_terms(self.model_name, loss, terms)


class HintStage(OptimizingStage):
    """FitNets stage 1 for every student: its layers up to ``student_tap`` plus a conv
    regressor are trained to minimise 1/2 ||G - r(H)||^2 against the frozen teacher's
    ``teacher_tap``; nothing else moves. Each student has its own regressor and optimizer.
    With ``channels_last`` the students, the teacher, the regressors and every batch are laid
    out channels-last."""

    name = "hint"

    def __init__(self, students: dict[str, FeatureModel], teacher: FeatureModel, student_tap: str,
                 teacher_tap: str, hint_cfg: dict, reduction: str, seed: int, device: torch.device,
                 bf16: bool = False, channels_last: bool = False) -> None:
        self.students, self.teacher, self.bf16, self.channels_last = students, teacher, bf16, channels_last
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
        if self.channels_last:
            to_channels_last(*self.students.values(), self.teacher, self.regressors)
        self.optimizers = {name: self.new_optimizer(self.hinted_parameters(name), self.cfg, self.device)
                           for name in self.students}

    def train_mode(self) -> None:
        self.teacher.eval()
        for s in self.students.values():
            s.train()
        self.regressors.train()

    def describe(self) -> dict:
        return layout_description(self.channels_last, self.bf16)

    def step(self, x, y):
        x = channels_last_input(x, self.channels_last)
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


class CohortStageBase(OptimizingStage):
    """What both cohort stages share: the method's ``CohortLoss`` (told each epoch), the
    models evaluated after each epoch (the members, their temporal means, the loss's other
    models), and the loss's trained parts in the checkpoint."""

    def __init__(self, name: str, members: dict[str, nn.Module], loss: CohortLoss, train_cfg: dict,
                 device: torch.device, speed: dict | None) -> None:
        self.name, self.members, self.loss = name, members, loss
        self.cfg, self.device, self.speed = train_cfg, device, dict(speed or {})
        self.epochs = train_cfg["epochs"]
        means = tuple(loss.means.modules) if loss.means is not None else ()
        self.eval_names = (*members, *means, *loss.others)

    def begin_epoch(self, epoch: int, global_epoch: int) -> None:
        super().begin_epoch(epoch, global_epoch)
        self.loss.begin_epoch(epoch)

    def new_cohort_optimizer(self, params) -> None:
        """The one optimizer of simultaneous updates: the members' parameters (in order), then the loss's parts."""
        self.optimizers = {"cohort": self.new_optimizer([*params, *self.loss.part_parameters()], self.cfg, self.device)}

    def extra_state(self) -> dict:
        return {"loss_parts": self.loss.parts.state_dict()} if self.loss.parts is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if self.loss.parts is not None:
            self.loss.parts.load_state_dict(state["loss_parts"])


class CohortStage(CohortStageBase):
    """A cohort trained on its method's loss, plain paths: one module per member.

    ``speed`` (the config's ``speed`` section, or None): ``channels_last`` converts the
    members (and their temporal means) and the input to channels-last memory format; ``bf16``
    runs the step under bfloat16 autocast; ``compile`` runs each member through
    ``torch.compile`` (with ``compile_mode``, or "default").

    ``order="simultaneous"``: one set of predictions, every member (and the loss's parts)
    updated together: one backward of the loss's objective (sum_k L_k, and the losses of its
    other models), one optimizer over all of them, which is exactly K optimizers since Adam
    and SGD act element-wise. ``order="sequential"`` (DML's Algorithm 1, for a ``sequential``
    loss): for each member k in turn, its loss against the peers' current predictions, an
    update, then its predictions are recomputed for the members after it.
    """

    def __init__(self, members: dict[str, nn.Module], loss: CohortLoss, train_cfg: dict, device: torch.device,
                 speed: dict | None = None, order: str = "simultaneous", why_plain: str = "",
                 name: str = "mutual") -> None:
        super().__init__(name, members, loss, train_cfg, device, speed)
        if order not in ("simultaneous", "sequential"):
            raise ValueError(f"order must be simultaneous or sequential, got {order!r}")
        if order == "sequential" and not loss.sequential:
            raise ValueError("this cohort loss has no sequential form (Algorithm 1): its members update together")
        self.order, self.why_plain = order, why_plain
        self.channels_last, self.bf16 = bool(self.speed.get("channels_last")), bool(self.speed.get("bf16"))
        self.compile_mode = (self.speed.get("compile_mode") or "default") if self.speed.get("compile") else None
        self.means = dict(loss.means.modules) if loss.means is not None else {}

    def describe(self) -> dict:
        return {"cohort_path": "plain", "update_order": self.order, "why_plain": self.why_plain,
                "channels_last": self.channels_last, "bf16": self.bf16, "compile": self.compile_mode is not None,
                "compile_mode": self.compile_mode}

    def _compiled(self, module: nn.Module) -> nn.Module:
        return torch.compile(module, mode=self.compile_mode) if self.compile_mode else module

    def begin(self) -> None:
        if self.channels_last:
            to_channels_last(*self.members.values(), *self.means.values())
        if self.order == "sequential":
            self.optimizers = {n: self.new_optimizer(m.parameters(), self.cfg, self.device) for n, m in self.members.items()}
        else:
            self.new_cohort_optimizer([p for m in self.members.values() for p in m.parameters()])
        views = [WithFeatures(m) if self.loss.uses_features else m for m in self.members.values()]
        self._forwards = [self._compiled(v) for v in views]
        self._mean_forwards = [self._compiled(m) for m in self.means.values()]

    def train_mode(self) -> None:
        for m in (*self.members.values(), *self.means.values()):
            m.train()
        if self.loss.parts is not None:
            self.loss.parts.train()

    def step(self, x, y):
        with autocast_bf16(self.device, self.bf16):
            return self._step(x, y)

    def _step(self, x, y):
        names = list(self.members)
        x = channels_last_input(x, self.channels_last)
        if self.order == "sequential":
            return self._sequential(names, x, y)
        out = self.loss(self._batch(x, y))
        self.optimizers["cohort"].step(out.objective())
        if self.means:
            follow(list(self.means.values()), list(self.members.values()), self.loss.means.decay)
        return out.recorded(names)

    def _batch(self, x, y) -> CohortBatch:
        """Every member's predictions (and features) on the batch, and its temporal mean's."""
        if self.loss.uses_features:
            outs = [f(x) for f in self._forwards]
            logits, features = torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])
        else:
            logits, features = torch.stack([f(x) for f in self._forwards]), None
        mean_logits = None
        if self.means:
            with torch.no_grad():
                mean_logits = torch.stack([m(x) for m in self._mean_forwards])
        return CohortBatch(logits, y, features, mean_logits)

    def _sequential(self, names, x, y):
        """Algorithm 1: each member in turn against its peers' current predictions."""
        models = self._forwards
        with torch.no_grad():
            current = [None] + [m(x) for m in models[1:]]
        out = {}
        for k, model in enumerate(models):
            logits = model(x)
            stacked = torch.stack([logits if j == k else current[j] for j in range(len(models))])
            losses = self.loss(CohortBatch(stacked, y))
            self.optimizers[names[k]].step(losses.totals[k])
            out.update(loss_terms(names[k], losses.totals[k], {t: v[k] for t, v in losses.terms.items()}))
            if k < len(models) - 1:
                with torch.no_grad():
                    current[k] = model(x)
        return out


@torch.no_grad()
def follow(means: list[nn.Module], members: list[nn.Module], decay: float) -> None:
    """Move every temporal mean's parameters towards its member's: theta' += (1 - d)(theta - theta')."""
    for mean, member in zip(means, members, strict=True):
        for a, b in zip(mean.parameters(), member.parameters(), strict=True):
            a.lerp_(b, 1.0 - decay)
