"""The fused mutual-learning step for a cohort of K same-architecture students.

The K students' parameters are held stacked (``torch.func.stack_module_state``: one
``[K, ...]`` tensor per parameter). One call gives the ``[K, B, C]`` logits of the whole
cohort on the shared batch, the mutual loss of every member comes out of one pass
(``mutual_losses``), one backward of sum_k L_k (peers detached) fills the stacked
gradients, and one optimizer steps the stacked tensors. With peers detached, the gradient
of sum_k L_k with respect to member k's weights is exactly that of L_k, and Adam/SGD act
element-wise, so this equals K separate simultaneous updates (tests check it to float
tolerance).

Two ways to run the K forwards over the stacked weights:

- ``vmap``: ``torch.func.vmap`` over ``functional_call``: the convolutions become grouped
  convolutions over all members at once (few, large kernels: the GPU path);
- ``unbind``: a loop of ``functional_call`` over per-member views of the stacked tensors (the
  same kernels as separate models: on a 2-core CPU, grouped convolutions, through vmap or
  written by hand for the VGGs, measured slower than separate ones at K = 2 and 4).

``channels_last`` lays out the input and each member's conv weights channels-last (oneDNN
and cuDNN kernels prefer it).

``impl="auto"`` takes ``vmap`` on CUDA and ``unbind`` on the CPU. Models with BatchNorm, and
mixed architectures, use the plain loop (``MutualStage``): running statistics under vmap
are not supported here. On a GPU, bf16 autocast, channels_last and ``torch.compile`` are
options of the step.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .base import BuildContext, OptimizingStage, Stage
from .losses import mutual_loss_terms
from .stages import MutualStage, cohort_losses

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
    """K same-architecture models as stacked tensors; ``forward(x)`` gives ``[K, B, C]``."""

    def __init__(self, models: list[nn.Module], impl: str = "auto", channels_last: bool = False) -> None:
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
        object.__setattr__(self, "base", base)  # a template only: not a submodule, no state
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.base.train(self.training)
        params, buffers = self.stacked()
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.impl == "vmap":
            def call(p, b, xx):
                return functional_call(self.base, (p, b), (xx,))

            return vmap(call, in_dims=(0, 0, None), randomness="different")(params, buffers, x)
        per_param = {n: p.unbind(0) for n, p in params.items()}
        per_buffer = {n: b.unbind(0) for n, b in buffers.items()}
        return torch.stack([
            functional_call(self.base, ({n: v[k] for n, v in per_param.items()},
                                        {n: v[k] for n, v in per_buffer.items()}), (x,))
            for k in range(self.k)
        ])

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


class FusedMutualStage(OptimizingStage):
    """Simultaneous mutual learning of a same-architecture cohort in one forward, one
    backward and one optimizer step (see the module docstring)."""

    name = "mutual"

    def __init__(self, members: dict[str, nn.Module], train_cfg: dict, mutual_cfg: dict, reduction: str,
                 device: torch.device, speed: dict | None = None) -> None:
        self.members, self.cfg, self.device = members, train_cfg, device
        self.peer_weight, self.reduction = mutual_cfg["peer_weight"], reduction
        self.impl = mutual_cfg.get("fused_impl", "auto")
        self.speed = speed or {}
        self.epochs = train_cfg["epochs"]
        self.eval_names = tuple(members)
        self.cohort: StackedCohort | None = None

    def begin(self) -> None:
        self.cohort = StackedCohort(list(self.members.values()), self.impl,
                                    channels_last=bool(self.speed.get("channels_last"))).to(self.device)
        self.optimizers = {"cohort": self.new_optimizer(self.cohort.parameters(), self.cfg, self.device)}
        forward = self.cohort
        if self.speed.get("compile"):
            forward = torch.compile(self.cohort, mode=self.speed.get("compile_mode") or None)
        self._forward = forward

    def describe(self) -> dict:
        impl = self.cohort.impl if self.cohort is not None else self.impl
        return {"cohort_path": "fused", "update_order": "simultaneous", "fused_impl": impl, **self.speed}

    def train_mode(self) -> None:
        self.cohort.train()

    def _autocast(self):
        if self.speed.get("bf16"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self, x, y):
        with self._autocast():
            logits = self._forward(x)
        losses, terms = mutual_loss_terms(logits, y, self.peer_weight, self.reduction)  # widened to float32 there
        self.optimizers["cohort"].step(losses.sum())
        return cohort_losses(list(self.members), losses, terms)

    def sync(self) -> None:
        self.cohort.write_back(list(self.members.values()))


def make_mutual_stage(members: dict[str, nn.Module], ctx: BuildContext) -> Stage:
    """The fused stage for simultaneous updates of a fusable cohort when ``mutual.fuse`` is
    on; the plain ``MutualStage`` otherwise (sequential order, mixed architectures, BatchNorm)."""
    cfg = ctx.config
    mutual = cfg["mutual"]
    ok, why = fusable(members)
    if mutual["fuse"] and mutual["update_order"] == "simultaneous" and ok:
        return FusedMutualStage(members, cfg["train"], mutual, ctx.reduction, ctx.device, cfg.get("speed"))
    # every reason the cohort runs plain, for the record (e.g. a BatchNorm ResNet pair updated in turn)
    why = "; ".join([r for r, applies in (("mutual.fuse is off", not mutual["fuse"]),
                                          ("sequential update order", mutual["update_order"] != "simultaneous"),
                                          (why, not ok)) if applies])
    speed = cfg.get("speed") or {}
    return MutualStage(members, cfg["train"], mutual, ctx.reduction, ctx.device, why_plain=why,
                       channels_last=bool(speed.get("channels_last")), bf16=bool(speed.get("bf16")),
                       compile_mode=(speed.get("compile_mode") or "default") if speed.get("compile") else None)
