import copy

import pytest
import torch

from mutualbench.archs import create_arch
from mutualbench.core.config import default_config
from mutualbench.methods.losses import cross_entropy, kd_loss, mutual_losses
from mutualbench.methods.mutual import MutualLoss
from mutualbench.methods.stages import CohortStage, HintStage, SupervisedStage

CPU = torch.device("cpu")


def adam_cfg(lr=1e-3):
    cfg = default_config()["train"]
    cfg["optimizer"]["lr"] = lr
    return cfg


def batches(n=3, b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, 10, (b,), generator=g)) for _ in range(n)]


def cohort(k, arch="resnet20"):
    models = []
    for i in range(k):
        torch.manual_seed(100 + i)
        models.append(create_arch(arch))
    return models


def params(models):
    return [p.detach().clone() for m in models for p in m.parameters()]


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("peer_weight", ["mean", "sum"])
def test_sequential_equals_hand_written_algorithm_1(k, peer_weight):
    models = cohort(k)
    ref_models = copy.deepcopy(models)
    stage = CohortStage({f"s{i}": m for i, m in enumerate(models)}, MutualLoss(peer_weight, "sum"), adam_cfg(), CPU,
                        order="sequential")
    stage.begin()
    stage.train_mode()
    ref_opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in ref_models]
    for m in ref_models:
        m.train()
    for x, y in batches():
        stage.step(x, y)
        # Algorithm 1, literally: for each student in turn, fresh predictions of every
        # student, its loss against the (detached) others, then update it alone.
        # (The loss formula itself is checked against pairwise KL in test_losses.)
        for i in range(k):
            logits = torch.stack([m(x) if j == i else m(x).detach() for j, m in enumerate(ref_models)])
            loss = mutual_losses(logits, y, peer_weight, "sum")[i]
            ref_opts[i].zero_grad()
            loss.backward()
            ref_opts[i].step()
    for a, b in zip(params(models), params(ref_models), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_simultaneous_equals_separate_optimizers():
    models = cohort(2)
    ref = copy.deepcopy(models)
    stage = CohortStage({"a": models[0], "b": models[1]}, MutualLoss("mean", "sum"), adam_cfg(), CPU)
    stage.begin()
    stage.train_mode()
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in ref]
    for x, y in batches():
        stage.step(x, y)
        losses = mutual_losses(torch.stack([m(x) for m in ref]), y, "mean", "sum")
        for opt in opts:
            opt.zero_grad()
        losses.sum().backward()
        for opt in opts:
            opt.step()
    for a, b in zip(params(models), params(ref), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_hint_stage_moves_only_layers_up_to_the_tap_and_the_regressor():
    torch.manual_seed(0)
    teacher, student = create_arch("seed_vgg_teacher").eval(), create_arch("seed_vgg_student")
    t_before = copy.deepcopy(teacher.state_dict())
    s_before = copy.deepcopy(student.state_dict())
    stage = HintStage({"student": student}, teacher, "H", "G", {**adam_cfg(), "regressor_kernel": 1}, "sum", 0, CPU)
    stage.begin()
    r_before = copy.deepcopy(stage.regressors.state_dict())
    stage.train_mode()
    for x, y in batches(2):
        stage.step(x, y)
    assert not teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_before.items())
    for key, before in s_before.items():
        changed = not torch.equal(before, student.state_dict()[key])
        assert changed == key.startswith("stages.H."), key
    assert all(not torch.equal(v, stage.regressors.state_dict()[k]) for k, v in r_before.items())


def test_kd_teacher_never_changes_and_stays_in_eval_mode():
    torch.manual_seed(0)
    teacher = create_arch("resnet20")  # has BatchNorm: train mode would move its statistics
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    before = copy.deepcopy(teacher.state_dict())
    student = create_arch("resnet20")
    seen_modes = []

    def loss_fn(x, y):
        seen_modes.append(teacher.training)
        with torch.no_grad():
            t = teacher(x)
        return kd_loss(student(x), t, y, 4.0, 0.9, "sum")

    stage = SupervisedStage("train", "student", student, loss_fn, adam_cfg(), CPU, frozen=(teacher,))
    stage.begin()
    stage.train_mode()
    for x, y in batches():
        stage.step(x, y)
    assert seen_modes == [False] * 3 and not teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


def test_supervised_stage_state_round_trip():
    model = create_arch("resnet20")
    stage = SupervisedStage("train", "m", model, lambda x, y: cross_entropy(model(x), y), adam_cfg(), CPU)
    stage.begin()
    stage.train_mode()
    x, y = batches(1)[0]
    stage.step(x, y)
    state = stage.state_dict()
    other = SupervisedStage("train", "m", model, lambda x, y: cross_entropy(model(x), y), adam_cfg(), CPU)
    other.begin()
    other.load_state_dict(state)
    assert other.optimizers["m"].optimizer.state_dict()["state"][0]["step"] == 1
