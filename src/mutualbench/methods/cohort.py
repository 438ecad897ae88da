"""The fused cohort step for K same-architecture members, for any cohort method's loss.

The K members' parameters are held stacked (``torch.func.stack_module_state``: one
``[K, ...]`` tensor per parameter). One call gives the ``[K, B, C]`` logits of the whole
cohort on the shared batch (and, for a loss that uses them, the ``[K, B, D]`` penultimate
features), the method's ``CohortLoss`` gives every member's loss in one pass, one backward of
their sum (and of the losses of the loss's other models) fills the stacked gradients, and one
optimizer steps the stacked tensors with the loss's own parts. The gradient of that sum with
respect to member k's weights is what the plain simultaneous step computes, and Adam/SGD act
element-wise, so the two paths update alike (tests check it to float tolerance, for every
cohort method). Temporal means of the members (``MeanTeachers``) are held stacked too, run
in one call and moved towards the members after each update.

Two ways to run the K forwards over the stacked weights:

- ``vmap``: ``torch.func.vmap`` over ``functional_call``: the convolutions become grouped
  convolutions over all members at once (few, large kernels: the GPU path);
- ``unbind``: a loop of ``functional_call`` over per-member views of the stacked tensors (the
  same kernels as separate models: on a 2-core CPU, grouped convolutions, through vmap or
  written by hand for the VGGs, measured slower than separate ones at K = 2 and 4).

``channels_last`` lays out the input and each member's conv weights channels-last (oneDNN
and cuDNN kernels prefer it).

``impl="auto"`` takes ``vmap`` on CUDA and ``unbind`` on the CPU. Models with BatchNorm, and
mixed architectures, use the plain loop (``stages.CohortStage``): running statistics under
vmap are not supported here. On a GPU, bf16 autocast, channels_last and ``torch.compile``
are options of the step. ``make_cohort_stage`` picks the path for a method.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..core.config import KeyType
from .base import BuildContext, Stage
from .cohort_loss import CohortBatch, CohortLoss
from .features import WithFeatures
from .stages import CohortStage, CohortStageBase

IMPLS = ("auto", "vmap", "unbind")


def fusable(members: dict[str, nn.Module]) -> tuple[bool, str]:
    """Whether the cohort can be fused, and why not."""
    models = list(members.values())
    if len({type(m) for m in models}) != 1 or len({getattr(m, "arch_name", None) for m in models}) != 1:
        return False, "mixed architectures"
    if any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in models[0].modules()):
        return False, "BatchNorm running statistics"
    shapes = [[tuple(p.shape) for p in m.parameters()] for m in models]
    if any(s != shapes[0] for s in shapes):
        return False, "different parameter shapes"
    return True, ""


class StackedCohort(nn.Module):
    """K same-architecture models as stacked tensors; ``forward(x)`` gives ``[K, B, C]``, or
    with ``features`` the pair (``[K, B, C]`` logits, ``[K, B, D]`` penultimate features)."""

    def __init__(self, models: list[nn.Module], impl: str = "auto", channels_last: bool = False,
                 features: bool = False) -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}")
        params, buffers = stack_module_state(models)
        self.names = list(params)
        self.channels_last = channels_last
        self.params = nn.ParameterDict({n.replace(".", "__"): nn.Parameter(self._layout(p.detach()))
                                        for n, p in params.items()})
        self.buffer_names = list(buffers)
        for n, b in buffers.items():
            self.register_buffer(n.replace(".", "__"), b.clone())
        self.k = len(models)
        base = copy.deepcopy(models[0]).to("meta")
        # a template only: not a submodule, no state; with features its parameters are under "model."
        object.__setattr__(self, "base", WithFeatures(base) if features else base)
        self.features, self.prefix = features, "model." if features else ""
        device_type = next(iter(params.values())).device.type
        self.impl = ("vmap" if device_type == "cuda" else "unbind") if impl == "auto" else impl

    def _layout(self, stacked: torch.Tensor) -> torch.Tensor:
        """A copy of a stacked tensor; with channels_last, stacked conv weights [K, O, I, kh, kw]
        are laid out so that every member's slice is a channels-last 4-D weight."""
        if self.channels_last and stacked.ndim == 5:
            out = torch.empty_like(stacked.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
            return out.copy_(stacked)
        return stacked.clone()

    def stacked(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = {n: self.params[n.replace(".", "__")] for n in self.names}
        buffers = {n: getattr(self, n.replace(".", "__")) for n in self.buffer_names}
        return params, buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        self.base.train(self.training)
        params, buffers = self.stacked()
        if self.prefix:
            params = {self.prefix + n: v for n, v in params.items()}
            buffers = {self.prefix + n: v for n, v in buffers.items()}
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.impl == "vmap":
            def call(p, b, xx):
                return functional_call(self.base, (p, b), (xx,))

            return vmap(call, in_dims=(0, 0, None), randomness="different")(params, buffers, x)
        per_param = {n: p.unbind(0) for n, p in params.items()}
        per_buffer = {n: b.unbind(0) for n, b in buffers.items()}
        outs = [functional_call(self.base, ({n: v[k] for n, v in per_param.items()},
                                            {n: v[k] for n, v in per_buffer.items()}), (x,))
                for k in range(self.k)]
        if self.features:
            return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])
        return torch.stack(outs)

    @torch.no_grad()
    def write_back(self, models: list[nn.Module]) -> None:
        """Copy the stacked weights into ordinary modules (for evaluation, checkpoints, export)."""
        params, buffers = self.stacked()
        for k, model in enumerate(models):
            for name, tensor in model.named_parameters():
                tensor.copy_(params[name][k])
            for name, tensor in model.named_buffers():
                if name in buffers:
                    tensor.copy_(buffers[name][k])


class FusedCohortStage(CohortStageBase):
    """Simultaneous updates of a same-architecture cohort on its method's loss in one forward,
    one backward and one optimizer step (see the module docstring). ``speed``: the config's
    ``speed`` section (bf16 autocast of the forwards, channels_last, compile), recorded as is."""

    def __init__(self, members: dict[str, nn.Module], loss: CohortLoss, train_cfg: dict, device: torch.device,
                 speed: dict | None = None, impl: str = "auto", name: str = "mutual") -> None:
        super().__init__(name, members, loss, train_cfg, device, speed)
        self.impl = impl
        self.cohort: StackedCohort | None = None
        self.mean_cohort: StackedCohort | None = None

    def _stacked(self, models: list[nn.Module], features: bool = False) -> StackedCohort:
        return StackedCohort(models, self.impl, channels_last=bool(self.speed.get("channels_last")),
                             features=features).to(self.device)

    def _compiled(self, module: nn.Module) -> nn.Module:
        if self.speed.get("compile"):
            return torch.compile(module, mode=self.speed.get("compile_mode") or None)
        return module

    def begin(self) -> None:
        self.cohort = self._stacked(list(self.members.values()), features=self.loss.uses_features)
        self.new_cohort_optimizer(self.cohort.parameters())
        self._forward = self._compiled(self.cohort)
        if self.loss.means is not None:
            self.mean_cohort = self._stacked(list(self.loss.means.modules.values())).requires_grad_(False)
            self._mean_forward = self._compiled(self.mean_cohort)

    def describe(self) -> dict:
        impl = self.cohort.impl if self.cohort is not None else self.impl
        return {"cohort_path": "fused", "update_order": "simultaneous", "fused_impl": impl, **self.speed}

    def train_mode(self) -> None:
        self.cohort.train()
        if self.mean_cohort is not None:
            self.mean_cohort.train()
        if self.loss.parts is not None:
            self.loss.parts.train()

    def _autocast(self):
        if self.speed.get("bf16"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self, x, y):
        mean_logits = None
        with self._autocast():
            out = self._forward(x)
            if self.mean_cohort is not None:
                with torch.no_grad():
                    mean_logits = self._mean_forward(x)
        logits, features = out if self.loss.uses_features else (out, None)
        losses = self.loss(CohortBatch(logits, y, features, mean_logits))  # widened to float32 there
        self.optimizers["cohort"].step(losses.objective())
        if self.mean_cohort is not None:
            self._follow()
        return losses.recorded(list(self.members))

    @torch.no_grad()
    def _follow(self) -> None:
        """The temporal means' stacked parameters towards the members' (as ``stages.follow``)."""
        means, _ = self.mean_cohort.stacked()
        members, _ = self.cohort.stacked()
        for name in self.cohort.names:
            means[name].lerp_(members[name], 1.0 - self.loss.means.decay)

    def sync(self) -> None:
        self.cohort.write_back(list(self.members.values()))
        if self.mean_cohort is not None:
            self.mean_cohort.write_back(list(self.loss.means.modules.values()))


# The keys of a cohort method's section that choose its path (``mutual`` has them, and
# ``update_order``); a new method's section takes them as they are.
PATH_DEFAULTS = {"fuse": True, "fused_impl": "auto"}  # fused_impl: vmap on CUDA, unbind on the CPU
PATH_TYPES = {"fuse": KeyType("bool"), "fused_impl": KeyType("choice", choices=IMPLS)}


@dataclass(frozen=True)
class CohortPath:
    """How a cohort is stepped: ``fuse`` (the fused step, where the cohort allows it),
    ``fused_impl`` (vmap, unbind or auto) and ``order`` (simultaneous, or DML's sequential
    Algorithm 1), as the method's config section ``section`` says (``from_config``)."""

    section: str
    fuse: bool = True
    fused_impl: str = "auto"
    order: str = "simultaneous"

    @classmethod
    def from_config(cls, config: dict, section: str) -> CohortPath:
        keys = config[section]
        return cls(section, keys["fuse"], keys["fused_impl"], keys.get("update_order", "simultaneous"))


def make_cohort_stage(members: dict[str, nn.Module], ctx: BuildContext, loss: CohortLoss, path: CohortPath,
                      name: str = "train") -> Stage:
    """The fused stage for simultaneous updates of a fusable cohort when ``path.fuse`` is on;
    the plain ``CohortStage`` otherwise (sequential order, mixed architectures, BatchNorm),
    with every reason it runs plain, for the record."""
    speed = ctx.config.get("speed")
    ok, why = fusable(members)
    if path.fuse and path.order == "simultaneous" and ok:
        return FusedCohortStage(members, loss, ctx.config["train"], ctx.device, speed, impl=path.fused_impl, name=name)
    # every reason the cohort runs plain (e.g. a BatchNorm ResNet pair updated in turn)
    why = "; ".join([r for r, applies in ((f"{path.section}.fuse is off", not path.fuse),
                                          ("sequential update order", path.order != "simultaneous"),
                                          (why, not ok)) if applies])
    return CohortStage(members, loss, ctx.config["train"], ctx.device, speed, order=path.order, why_plain=why,
                       name=name)
