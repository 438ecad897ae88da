"""The online-distillation cohort methods (KDCL, OKDDip, PCL): each loss against a hand
computation on a tiny case (plain numbers and math, not the code under test), what its
gradients reach, the plain and the fused cohort paths computing the same thing for each, the
temporal means, and the models each method declares and records."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mutualbench.analysis.results import ENSEMBLE
from mutualbench.core.errors import UserError
from mutualbench.methods import BuildContext, get_method
from mutualbench.methods.base import hashed_config
from mutualbench.methods.cohort_loss import CohortBatch, MeanTeachers, ramp_up
from mutualbench.methods.kdcl import KdclLoss, min_logit_ensemble, naive_ensemble
from mutualbench.methods.okddip import OkddipLoss, PeerAttention
from mutualbench.methods.pcl import PclLoss
from mutualbench.studies.spec import arm_members
from mutualbench.training import golden
from mutualbench.training.run import resolve

CPU = torch.device("cpu")
F64 = torch.float64


# ----------------------------------------------------------------------------- plain numbers
def softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def ce(row, y):
    return -math.log(softmax(row)[y])


def soft_kl(target_row, row, t):
    """KL(softmax(target / T) || softmax(row / T))."""
    return kl(softmax(target_row, t), softmax(row, t))


def tensor(rows):
    return torch.tensor(rows, dtype=F64)


# ----------------------------------------------------------------------------- KDCL
# two students, two images, three classes
KDCL_Z = [[[2.0, 0.0, 1.0], [0.0, 1.0, 1.0]],
          [[1.0, 2.0, -1.0], [1.0, -1.0, 3.0]]]
KDCL_Y = [0, 2]
# MinLogit, class by class min_k (z_k,c - z_k,y): image 0 mixes the two students
# ([0, -2, -1] and [0, 1, -2]), image 1 is student 2's ([-1, 0, 0] and [-2, -4, 0])
MIN_LOGIT = [[0.0, -2.0, -2.0], [-2.0, -4.0, 0.0]]
# naive: the student with the lower CE on each image: student 1 on image 0 (p_y 0.67 vs
# 0.26), student 2 on image 1 (p_y 0.42 vs 0.87)
NAIVE = [KDCL_Z[0][0], KDCL_Z[1][1]]


def test_kdcl_ensembles_are_the_papers():
    z, y = tensor(KDCL_Z), torch.tensor(KDCL_Y)
    assert ce(KDCL_Z[0][0], 0) < ce(KDCL_Z[1][0], 0) and ce(KDCL_Z[1][1], 2) < ce(KDCL_Z[0][1], 2)
    assert min_logit_ensemble(z, y).tolist() == MIN_LOGIT
    assert naive_ensemble(z, y).tolist() == NAIVE


@pytest.mark.parametrize("ensemble,teacher", [("min_logit", MIN_LOGIT), ("naive", NAIVE)])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_kdcl_loss_is_hand_computed(ensemble, teacher, reduction):
    t, w = 2.0, 0.5
    out = KdclLoss(ensemble, t, w, reduction)(CohortBatch(tensor(KDCL_Z), torch.tensor(KDCL_Y)))
    scale = 1.0 if reduction == "sum" else 0.5
    for k, rows in enumerate(KDCL_Z):
        ces = scale * sum(ce(row, y) for row, y in zip(rows, KDCL_Y, strict=True))
        kls = scale * w * t**2 * sum(soft_kl(tr, row, t) for tr, row in zip(teacher, rows, strict=True))
        assert out.terms["ce"][k].item() == pytest.approx(ces, abs=1e-12)
        assert out.terms["kl"][k].item() == pytest.approx(kls, abs=1e-12)
        assert out.totals[k].item() == pytest.approx(ces + kls, abs=1e-12)
    assert out.terms["kl"].min() > 0  # the teacher is neither student


def test_kdcl_teacher_is_detached():
    z = tensor(KDCL_Z).requires_grad_(True)
    out = KdclLoss("min_logit", 3.0, 1.0, "sum")(CohortBatch(z, torch.tensor(KDCL_Y)))
    (grad,) = torch.autograd.grad(out.totals[0], z)
    assert grad[1].abs().max() == 0 and grad[0].abs().max() > 0


# ----------------------------------------------------------------------------- OKDDip
# two peers and the leader, two images, three classes, features of width 2
OKD_Z = [[[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]],   # peer 1
         [[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]],   # peer 2
         [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]]   # leader
OKD_Y = [2, 0]
OKD_H = [[[1.0, 2.0], [0.0, 1.0]],
         [[3.0, -1.0], [1.0, 1.0]],
         [[5.0, 5.0], [5.0, 5.0]]]  # the leader's features take no part


def okddip_loss(weight=1.0, rampup_epochs=0, t=3.0):
    """L_q picks the first feature, L_k the second (factor 2: 2 -> 1)."""
    attention = PeerAttention(2, 2).double()
    with torch.no_grad():
        attention.query.weight.copy_(tensor([[1.0, 0.0]]))
        attention.key.weight.copy_(tensor([[0.0, 1.0]]))
    return OkddipLoss(attention, t, weight, rampup_epochs, "sum")


def test_okddip_loss_is_hand_computed():
    t = 3.0
    out = okddip_loss(t=t)(CohortBatch(tensor(OKD_Z), torch.tensor(OKD_Y), tensor(OKD_H)))
    # energy_ij = (L_q h_i)(L_k h_j) = h_i[0] * h_j[1]; a_i = softmax_j
    expected_ce, expected_kl = [], []
    for k in range(3):
        expected_ce.append(sum(ce(OKD_Z[k][b], OKD_Y[b]) for b in range(2)))
    for i in range(2):
        total = 0.0
        for b in range(2):
            a = softmax([OKD_H[i][b][0] * OKD_H[j][b][1] for j in range(2)])
            target = [a[0] * OKD_Z[0][b][c] + a[1] * OKD_Z[1][b][c] for c in range(3)]
            total += soft_kl(target, OKD_Z[i][b], t)
        expected_kl.append(t**2 * total)
    leader = sum(soft_kl([(OKD_Z[0][b][c] + OKD_Z[1][b][c]) / 2 for c in range(3)], OKD_Z[2][b], t) for b in range(2))
    expected_kl.append(t**2 * leader)
    assert out.terms["ce"].tolist() == pytest.approx(expected_ce, abs=1e-12)
    assert out.terms["kl"].tolist() == pytest.approx(expected_kl, abs=1e-12)
    assert out.totals.tolist() == pytest.approx([a + b for a, b in zip(expected_ce, expected_kl, strict=True)],
                                                abs=1e-12)
    # image 0: peer 1 weighs the peers softmax([2, -1]), peer 2 softmax([6, -3]); image 1 evenly
    assert softmax([2.0, -1.0])[0] == pytest.approx(0.9526, abs=1e-4)


def test_okddip_weight_ramps_up_over_epochs():
    batch = CohortBatch(tensor(OKD_Z), torch.tensor(OKD_Y), tensor(OKD_H))
    full = okddip_loss(weight=0.5)(batch).terms["kl"]
    ramped = okddip_loss(weight=0.5, rampup_epochs=80)
    for epoch, factor in ((0, math.exp(-5)), (40, math.exp(-1.25)), (80, 1.0), (200, 1.0)):
        ramped.begin_epoch(epoch)
        assert ramped(batch).terms["kl"].tolist() == pytest.approx((factor * full).tolist(), rel=1e-12)
    assert ramp_up(3, 0) == 1.0


def test_okddip_targets_carry_gradients_as_in_the_authors_code():
    z = tensor(OKD_Z).requires_grad_(True)
    h = tensor(OKD_H).requires_grad_(True)
    loss = okddip_loss()
    out = loss(CohortBatch(z, torch.tensor(OKD_Y), h))
    grad_z, grad_h = torch.autograd.grad(out.totals[0], (z, h))
    assert grad_z[1].abs().max() > 0  # peer 1's target is made of peer 2's logits too
    assert grad_h[0].abs().max() > 0 and grad_h[1].abs().max() > 0 and grad_h[2].abs().max() == 0
    out = loss(CohortBatch(z, torch.tensor(OKD_Y), h))
    (grad_z,) = torch.autograd.grad(out.totals[2], z)
    assert grad_z[0].abs().max() > 0 and grad_z[1].abs().max() > 0  # the leader's target: the peers' mean
    out = loss(CohortBatch(z, torch.tensor(OKD_Y), h))
    out.objective().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in loss.parts.parameters())


# ----------------------------------------------------------------------------- PCL
# three peers, two images, three classes, one feature per peer
PCL_Z = [[[1.0, 0.0, 0.0], [0.0, 1.0, 2.0]],
         [[0.0, 2.0, 0.0], [1.0, 1.0, 0.0]],
         [[0.5, 0.0, 1.0], [2.0, 0.0, 1.0]]]
PCL_MEANS = [[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
             [[1.0, 1.0, 1.0], [0.0, 0.0, 3.0]],
             [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]]
PCL_Y = [0, 2]
PCL_H = [[[1.0], [0.0]], [[0.0], [2.0]], [[1.0], [1.0]]]
PCL_BIAS = [0.0, 0.5, 0.0]


def pcl_loss(t=2.0, rampup_epochs=0):
    """The ensemble classifier: the identity on the three features, plus PCL_BIAS."""
    classifier = torch.nn.Linear(3, 3).double()
    with torch.no_grad():
        classifier.weight.copy_(torch.eye(3, dtype=F64))
        classifier.bias.copy_(tensor(PCL_BIAS))
    return PclLoss(classifier, MeanTeachers({}, 0.999), t, rampup_epochs, "sum")


def pcl_batch(**grad):
    z, h = tensor(PCL_Z).requires_grad_(grad.get("z", False)), tensor(PCL_H).requires_grad_(grad.get("h", False))
    return CohortBatch(z, torch.tensor(PCL_Y), h, tensor(PCL_MEANS))


def test_pcl_loss_is_hand_computed():
    t = 2.0
    out = pcl_loss(t)(pcl_batch())
    ensemble = [[PCL_H[0][b][0] + PCL_BIAS[0], PCL_H[1][b][0] + PCL_BIAS[1], PCL_H[2][b][0] + PCL_BIAS[2]]
                for b in range(2)]
    for k in range(3):
        ces = sum(ce(PCL_Z[k][b], PCL_Y[b]) for b in range(2))
        pe = t**2 * sum(soft_kl(ensemble[b], PCL_Z[k][b], t) for b in range(2))
        pm = t**2 * sum(soft_kl(PCL_MEANS[j][b], PCL_Z[k][b], t) for b in range(2) for j in range(3) if j != k) / 2
        assert out.terms["ce"][k].item() == pytest.approx(ces, abs=1e-12)
        assert out.terms["pe"][k].item() == pytest.approx(pe, abs=1e-12)
        assert out.terms["pm"][k].item() == pytest.approx(pm, abs=1e-12)
        assert out.totals[k].item() == pytest.approx(ces + pe + pm, abs=1e-12)
    ce_e = sum(ce(ensemble[b], PCL_Y[b]) for b in range(2))
    value, terms = out.others["ensemble_teacher"]
    assert value.item() == pytest.approx(ce_e, abs=1e-12) and terms["ce"].item() == pytest.approx(ce_e, abs=1e-12)
    assert out.objective().item() == pytest.approx(out.totals.sum().item() + ce_e, abs=1e-12)
    # the ramp scales both distillation terms, not the cross-entropies
    ramped = pcl_loss(t, rampup_epochs=80)(pcl_batch())
    for term in ("pe", "pm"):
        assert ramped.terms[term].tolist() == pytest.approx((math.exp(-5) * out.terms[term]).tolist(), rel=1e-12)
    assert ramped.terms["ce"].tolist() == out.terms["ce"].tolist()


def test_pcl_gradients_the_ensemble_teacher_is_a_detached_target_and_learns_from_the_labels():
    loss = pcl_loss()
    batch = pcl_batch(z=True, h=True)
    out = loss(batch)
    grad_z, grad_h = torch.autograd.grad(out.totals.sum(), (batch.logits, batch.features), allow_unused=True)
    assert grad_h is None  # the peers' losses reach the features only through the detached teacher: not at all
    assert grad_z.abs().max() > 0
    out = loss(batch)
    value, _ = out.others["ensemble_teacher"]
    value.backward()
    assert batch.features.grad.abs().max() > 0 and loss.parts.weight.grad.abs().max() > 0


# ----------------------------------------------------------------------------- the cohort paths
def built(case: str, **section):
    """The golden case's run, built as a run builds it (float64 weights), with ``section``
    keys set in the method's own section."""
    config = golden.case_config(case)
    config[config["method"]].update(section)
    resolved = resolve(config)
    with golden.float64():
        ctx = BuildContext(hashed_config(resolved, resolved["method"]), CPU, golden.NUM_CLASSES)
        slots, stages = get_method(resolved["method"]).build(ctx)
    return config, slots, stages[-1]


def steps(stage, n=3, seed=0):
    stage.begin()
    stage.begin_epoch(0, 0)
    stage.train_mode()
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(8, 3, 32, 32, generator=g, dtype=F64)
        out.append(stage.step(x, torch.randint(0, golden.NUM_CLASSES, (8,), generator=g)))
    stage.sync()
    return out


@pytest.mark.parametrize("impl", ["unbind", "vmap"])
@pytest.mark.parametrize("case", ["kdcl_min_logit", "okddip", "pcl"])
def test_fused_and_plain_paths_compute_the_same(case, impl):
    """3 float64 steps of the BatchNorm-free student cohort: every loss and term of every
    step, every model's final weights (temporal means and ensemble teacher included) and the
    loss's own parts agree between the two paths."""
    _, fused_slots, fused = built(case, fuse=True, fused_impl=impl)
    _, plain_slots, plain = built(case, fuse=False)
    assert fused.describe()["cohort_path"] == "fused" and fused.describe()["fused_impl"] == impl
    assert plain.describe()["cohort_path"] == "plain" and plain.describe()["why_plain"] == f"{case.split('_')[0]}.fuse is off"
    for lf, lp in zip(steps(fused), steps(plain), strict=True):
        assert set(lf) == set(lp)
        for name, value in lp.items():
            scale = abs(float(lp[name.split("/")[0]]))
            assert float(lf[name]) == pytest.approx(float(value), rel=1e-9, abs=1e-9 * scale), name
    for name, slot in plain_slots.items():
        fused_state = fused_slots[name].module.state_dict()
        for key, tensor_ in slot.module.state_dict().items():
            if tensor_.is_floating_point():
                assert torch.allclose(fused_state[key], tensor_, rtol=1e-9, atol=1e-12), (name, key)
    for a, b in zip(fused.loss.part_parameters(), plain.loss.part_parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_pcl_temporal_means_follow_their_peers():
    """After one update, each temporal mean is d * (the peer's initial weights) + (1 - d) * (its new weights)."""
    d = 0.75
    _, slots, stage = built("pcl", fuse=False, ema_decay=d)
    start = {n: copy.deepcopy(slots[n].module.state_dict()) for n in ("peer1", "peer2")}
    for name in ("peer1", "peer2"):
        assert all(torch.equal(v, slots[f"{name}_mean"].module.state_dict()[k]) for k, v in start[name].items())
    steps(stage, n=1)
    for name in ("peer1", "peer2"):
        now, mean = slots[name].module.state_dict(), slots[f"{name}_mean"].module.state_dict()
        assert not torch.equal(now["head.2.weight"], start[name]["head.2.weight"])
        for key, before in start[name].items():
            assert torch.allclose(mean[key], d * before + (1 - d) * now[key], rtol=1e-12, atol=1e-15), key
    assert stage.eval_names == ("peer1", "peer2", "peer1_mean", "peer2_mean", "ensemble_teacher")


# ----------------------------------------------------------------------------- models and configs
@pytest.mark.parametrize("case", ["kdcl_min_logit", "kdcl_naive_mixed", "okddip", "pcl", "pcl_plain_bn"])
def test_each_method_records_the_models_it_declares(case):
    config, slots, stage = built(case)
    method = get_method(config["method"])
    assert list(slots) == method.member_names(config) == list(stage.eval_names)
    assert method.records_ensemble


def test_a_study_checks_published_numbers_against_the_declared_members():
    assert arm_members({"method": "okddip", "arch": "resnet20", "cohort": 4}) == [
        "peer1", "peer2", "peer3", "leader", ENSEMBLE]
    assert arm_members({"method": "kdcl", "arch": "resnet20,wrn_16_1"}) == ["student1", "student2", ENSEMBLE]
    assert arm_members({"method": "pcl", "arch": "resnet20", "cohort": 2}) == [
        "peer1", "peer2", "peer1_mean", "peer2_mean", "ensemble_teacher", ENSEMBLE]
    assert arm_members({"method": "one", "arch": "resnet20", "cohort": 2}) == ["branch1", "branch2", "ensemble"]
    assert arm_members({"method": "mutual", "arch": "resnet20", "cohort": 2}) == ["student1", "student2", ENSEMBLE]
    assert arm_members({"method": "kd", "arch": "resnet20"}) == ["student"]


@pytest.mark.parametrize("case,overrides,message", [
    ("kdcl_min_logit", {"cohort": 1, "arch": ["resnet20"]}, "kdcl needs a cohort of at least 2 students"),
    ("okddip", {"cohort": 2}, "okddip trains K - 1 peers and a group leader of one architecture"),
    ("okddip", {"arch": ["resnet20", "wrn_10_1", "resnet20"]}, "give one --arch and --cohort K"),
    ("pcl", {"cohort": 1}, "pcl trains K peers of one architecture"),
    ("pcl", {"pretrain": "hints"}, "pcl does not take pretrain"),
])
def test_wrong_configs_are_one_line_errors(case, overrides, message):
    config = golden.case_config(case)
    config.update(overrides)
    with pytest.raises(UserError, match=message):
        resolve(config)


def test_no_fuse_turns_off_every_cohort_methods_fused_step():
    import argparse

    from mutualbench.cli import _run_settings

    args = argparse.Namespace(device="cpu", teacher=None, teacher_checkpoint=None, epochs=None, train_subset=None,
                              no_fuse=True, set=None)
    layers = dict(_run_settings(args))
    assert {"mutual.fuse", "kdcl.fuse", "okddip.fuse", "pcl.fuse"} <= set(layers["--no-fuse"])
    assert not any(layers["--no-fuse"].values())
