"""A cohort member's place in the cohort is only a name: on the plain path (the one BatchNorm
models take), training the same models listed in another order trains each model exactly as
before: DML's loss, a cohort of three with BatchNorm, updated together, in float64. A member's
index may set its initial weights (``BuildContext.new_model``), nothing else."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mutualbench.methods.mutual import MutualLoss
from mutualbench.methods.stages import CohortStage

F64 = torch.float64
TRAIN = {"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
         "schedule": {"name": "constant"}}


def bn_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 5)).to(F64)


def trained(models: dict[str, nn.Module], steps: int = 4) -> dict[str, dict[str, torch.Tensor]]:
    stage = CohortStage(models, MutualLoss("mean", "mean"), TRAIN, torch.device("cpu"))
    stage.begin()
    stage.begin_epoch(0, 0)
    stage.train_mode()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        stage.step(torch.randn(6, 3, 8, 8, generator=g, dtype=F64), torch.randint(0, 5, (6,), generator=g))
    return {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in models.items()}


@pytest.mark.parametrize("order", [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"]])
def test_each_model_trains_the_same_wherever_it_stands_in_the_cohort(order):
    models = {name: bn_model(seed) for seed, name in enumerate("abc")}
    reference = trained(copy.deepcopy(models))
    moved = trained({name: copy.deepcopy(models[name]) for name in order})
    for name in "abc":
        for key, value in reference[name].items():
            if value.is_floating_point():
                assert torch.allclose(moved[name][key], value, rtol=1e-10, atol=1e-12), (name, key)
    # and the models did move, and apart: the check is not of untouched weights
    start = models["a"].state_dict()["0.weight"]
    assert not torch.allclose(reference["a"]["0.weight"], start)
    assert not torch.allclose(reference["a"]["0.weight"], reference["b"]["0.weight"])
