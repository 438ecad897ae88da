"""Hand-written PyTorch training steps: the baseline each of the suite's stages is measured
against in the epoch benchmark, so that the ratio of the two is what the suite's machinery
(stages, optimizer wrapper, loss terms, the fused cohort) costs or saves over the loop a user
would write: ``opt.zero_grad(); loss.backward(); opt.step()`` with ``torch.optim.Adam``
(lr 1e-3, PyTorch's default implementation), ``F.cross_entropy`` and ``F.kl_div``.

Each loop trains deep copies of the run's own models (taken before the suite's stage lays
them out), in the way it is compared with: the models and every batch channels-last or NCHW,
the forward passes under bf16 autocast or not; losses in float32, as the suite computes them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from epoch_runs import BenchRun, Way

LR = 1e-3
Step = Callable[[torch.Tensor, torch.Tensor], None]


def _autocast(way: Way):
    return torch.autocast("cpu", dtype=torch.bfloat16) if way.bf16 else contextlib.nullcontext()


def _layout(way: Way, *modules: nn.Module) -> None:
    if way.channels_last:
        for m in modules:
            m.to(memory_format=torch.channels_last)


def _input(x: torch.Tensor, way: Way) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if way.channels_last else x


def _kl(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(target / T) || softmax(logits / T)), the batch's mean."""
    return F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(target_logits.detach() / temperature, -1),
                    log_target=True, reduction="batchmean")


def _update(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad()
    loss.backward()
    opt.step()


def individual(b: BenchRun, way: Way) -> Step:
    model = copy.deepcopy(b.run.models["model"]).train()
    _layout(way, model)
    opt = torch.optim.Adam(model.parameters(), lr=LR)

    def step(x, y):
        with _autocast(way):
            logits = model(_input(x, way))
        _update(opt, F.cross_entropy(logits.float(), y))

    return step


def kd(b: BenchRun, way: Way) -> Step:
    student = copy.deepcopy(b.run.models["student"]).train()
    teacher = copy.deepcopy(b.teacher).eval()
    _layout(way, student, teacher)
    opt = torch.optim.Adam(student.parameters(), lr=LR)
    t, alpha = b.resolved["kd"]["temperature"], b.resolved["kd"]["alpha"]

    def step(x, y):
        x = _input(x, way)
        with _autocast(way):
            with torch.no_grad():
                target = teacher(x)
            logits = student(x)
        logits, target = logits.float(), target.float()
        _update(opt, F.cross_entropy(logits, y) + alpha * t * t * _kl(target, logits, t))

    return step


def dml(b: BenchRun, way: Way) -> Step:
    """Simultaneous DML: every member's CE and mean KL from its detached peers, one backward."""
    members = [copy.deepcopy(b.run.models[name]).train() for name in b.stage.members]
    _layout(way, *members)
    opt = torch.optim.Adam([p for m in members for p in m.parameters()], lr=LR)

    def step(x, y):
        x = _input(x, way)
        with _autocast(way):
            outs = [m(x) for m in members]
        outs = [o.float() for o in outs]
        loss = 0.0
        for k, logits in enumerate(outs):
            peers = [p for j, p in enumerate(outs) if j != k]
            loss = loss + F.cross_entropy(logits, y) + sum(_kl(p, logits) for p in peers) / len(peers)
        _update(opt, loss)

    return step


def hint(b: BenchRun, way: Way) -> Step:
    """FitNets stage 1: the student up to its hint tap and a regressor matched to the frozen
    teacher's guided tap, 1/2 ||G - r(H)||^2 per image."""
    stage = b.stage
    student = copy.deepcopy(b.run.models["student"]).train()
    regressor = copy.deepcopy(stage.regressors["student"]).train()
    teacher = copy.deepcopy(b.teacher).eval()
    _layout(way, student, regressor, teacher)
    opt = torch.optim.Adam([*student.parameters_up_to(stage.student_tap), *regressor.parameters()], lr=LR)

    def step(x, y):
        x = _input(x, way)
        with _autocast(way):
            with torch.no_grad():
                guided = teacher.forward_to(x, stage.teacher_tap)
            regressed = regressor(student.forward_to(x, stage.student_tap))
        diff = guided.float() - regressed.float()
        _update(opt, 0.5 * diff.pow(2).flatten(1).sum(1).mean())

    return step


def one(b: BenchRun, way: Way) -> Step:
    """ONE: every branch's CE and KL from the gated ensemble (detached), and the ensemble's CE."""
    network = copy.deepcopy(b.run.models["ensemble"]).train()
    _layout(way, network)
    opt = torch.optim.Adam(network.parameters(), lr=LR)
    t = b.resolved["one"]["temperature"]

    def step(x, y):
        with _autocast(way):
            logits, ensemble = network.all_logits(_input(x, way))
        logits, ensemble = logits.float(), ensemble.float()
        loss = F.cross_entropy(ensemble, y)
        for branch in logits:
            loss = loss + F.cross_entropy(branch, y) + t * t * _kl(ensemble, branch, t)
        _update(opt, loss)

    return step


PLAIN: dict[str, Callable[[BenchRun, Way], Step]] = {
    "individual": individual, "kd": kd, "dml": dml, "hint": hint, "one": one,
}
