"""Optimizers and learning-rate schedules from config dicts.

optimizer: {name: adam | sgd, lr, betas (adam), momentum and nesterov (sgd), weight_decay}
schedule:  {name: constant | step | cosine, milestones (epochs, step), gamma (step)}
Schedules advance once per epoch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .errors import UserError


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: dict, device: torch.device | None = None) -> torch.optim.Optimizer:
    params = list(params)
    name = cfg["name"]
    if name == "adam":
        kwargs = {}
        if device is not None and device.type == "cuda":
            kwargs["fused"] = True
        else:
            kwargs["foreach"] = True
        return torch.optim.Adam(params, lr=cfg["lr"], betas=tuple(cfg["betas"]),
                                weight_decay=cfg["weight_decay"], **kwargs)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                               weight_decay=cfg["weight_decay"], foreach=True)
    raise UserError(f"unknown optimizer {name!r}: use adam or sgd")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    name = cfg["name"]
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    if name == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg["milestones"]), gamma=cfg["gamma"])
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    raise UserError(f"unknown schedule {name!r}: use constant, step or cosine")


class ScheduledOptimizer:
    """One optimizer and its schedule over a set of parameters: ``step(loss)`` does
    zero_grad / backward / step; ``end_epoch()`` advances the schedule."""

    def __init__(self, params: Iterable[torch.nn.Parameter], optimizer_cfg: dict, schedule_cfg: dict,
                 epochs: int, device: torch.device | None = None) -> None:
        self.params = list(params)
        self.optimizer = build_optimizer(self.params, optimizer_cfg, device)
        self.scheduler = build_scheduler(self.optimizer, schedule_cfg, epochs)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def end_epoch(self) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for group in self.optimizer.param_groups:  # torch checks the groups' sizes, not the tensors' shapes
            for p in group["params"]:
                for key, value in self.optimizer.state.get(p, {}).items():
                    if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                        raise ValueError(f"the optimizer's {key} has shape {tuple(value.shape)} for a parameter of "
                                         f"shape {tuple(p.shape)}")
