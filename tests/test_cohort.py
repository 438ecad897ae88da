import copy

import pytest
import torch

from mutualbench.archs import create_arch
from mutualbench.core.config import apply_overrides, default_config
from mutualbench.methods.base import BuildContext
from mutualbench.methods.cohort import FusedCohortStage, StackedCohort, fusable
from mutualbench.methods.mutual import MutualLoss, make_mutual_stage
from mutualbench.methods.stages import CohortStage

CPU = torch.device("cpu")


def cohort(k, arch="seed_vgg_student"):
    out = {}
    for i in range(k):
        torch.manual_seed(10 + i)
        out[f"student{i + 1}"] = create_arch(arch)
    return out


def rel_diff(a: dict, b: dict) -> float:
    num = sum(((pa - pb) ** 2).sum() for ma, mb in zip(a.values(), b.values(), strict=True)
              for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True))
    den = sum((pb**2).sum() for mb in b.values() for pb in mb.parameters())
    return float((num / den).sqrt().detach())


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("impl,channels_last", [("unbind", False), ("unbind", True), ("vmap", False)])
def test_fused_step_equals_plain_simultaneous_after_5_steps(k, impl, channels_last):
    cfg = default_config()
    cfg["train"]["optimizer"].update(lr=3e-4, betas=[0.5, 0.99])
    fused_models = cohort(k)
    plain_models = copy.deepcopy(fused_models)
    loss = MutualLoss(cfg["mutual"]["peer_weight"], "sum")
    fused = FusedCohortStage(fused_models, loss, cfg["train"], CPU, {"channels_last": channels_last}, impl=impl)
    plain = CohortStage(plain_models, loss, cfg["train"], CPU, {"channels_last": channels_last})
    for stage in (fused, plain):
        stage.begin()
        stage.train_mode()
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
        lf, lp = fused.step(x, y), plain.step(x, y)
        assert set(lf) == set(lp) == {f"student{i + 1}{t}" for i in range(k) for t in ("", "/ce", "/kl")}
        # totals and terms alike, to 1e-4 of the member's total (a KL term near 0 has no relative scale)
        assert all(torch.allclose(lf[n], lp[n], rtol=1e-4, atol=1e-4 * float(lp[n.split("/")[0]])) for n in lf), \
            {n: (float(lf[n]), float(lp[n])) for n in lf}
    fused.sync()
    assert rel_diff(fused_models, plain_models) < 1e-5
    assert fused.describe()["fused_impl"] == impl


def flat(models: dict) -> list[torch.Tensor]:
    return [p.detach().double().clone() for m in models.values() for p in m.parameters()]


def update_diff(a: list, b: list, start: list) -> float:
    """Relative difference of two weight updates (a - start vs b - start)."""
    num = sum(((x - y) ** 2).sum() for x, y in zip(a, b, strict=True))
    return float((num / sum(((y - s0) ** 2).sum() for y, s0 in zip(b, start, strict=True))).sqrt())


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("impl,channels_last", [("unbind", False), ("unbind", True), ("vmap", False), ("vmap", True)])
def test_fused_updates_match_a_float64_reference_as_closely_as_the_plain_path(k, impl, channels_last):
    """Every fused way, channels-last included, against plain float64 (5 SGD steps: an
    update linear in the gradient). With Adam the vmap + channels-last pair can land ~1e-3
    apart: Adam's first steps are ~lr * sign(g), and in this BatchNorm-free VGG the early
    layers' gradients are ~1e-6 of the head's, so float32 rounding flips a few near-zero
    signs; both paths are then equally far from float64 (benchmarks/gpu_check.py)."""
    cfg = apply_overrides(default_config(), ["train.optimizer.name=sgd", "train.optimizer.lr=0.01"])
    loss = MutualLoss(cfg["mutual"]["peer_weight"], "sum")
    fused_models = cohort(k)
    plain_models, ref_models = copy.deepcopy(fused_models), copy.deepcopy(fused_models)
    for m in ref_models.values():
        m.double()
    start = flat(ref_models)
    stages = [FusedCohortStage(fused_models, loss, cfg["train"], CPU, {"channels_last": channels_last}, impl=impl),
              CohortStage(plain_models, loss, cfg["train"], CPU, {"channels_last": channels_last}),
              CohortStage(ref_models, loss, cfg["train"], CPU)]
    for stage in stages:
        stage.begin()
        stage.train_mode()
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
        stages[0].step(x, y)
        stages[1].step(x, y)
        stages[2].step(x.double(), y)
    stages[0].sync()
    fused, plain, ref = flat(fused_models), flat(plain_models), flat(ref_models)
    assert update_diff(fused, plain, start) < 1e-4
    assert update_diff(fused, ref, start) <= max(2 * update_diff(plain, ref, start), 1e-5)


def test_stacked_cohort_logits_match_members_and_unstack():
    models = cohort(3)
    stacked = StackedCohort(list(models.values()), "unbind", channels_last=True)
    x = torch.randn(4, 3, 32, 32)
    expected = torch.stack([m(x) for m in models.values()])
    assert torch.allclose(stacked(x), expected, atol=1e-5)
    fresh = cohort(3)
    for m in fresh.values():
        for p in m.parameters():
            p.data.zero_()
    stacked.write_back(list(fresh.values()))
    for a, b in zip(models.values(), fresh.values(), strict=True):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_which_cohorts_fuse():
    assert fusable(cohort(2)) == (True, "")
    assert fusable({"a": create_arch("resnet20"), "b": create_arch("resnet20")})[1] == "BatchNorm running statistics"
    assert fusable({"a": create_arch("seed_vgg_student"), "b": create_arch("seed_vgg_teacher")})[1] == "mixed architectures"


@pytest.mark.parametrize(
    "overrides,path,why",
    [
        ([], "fused", None),
        (["mutual.fuse=false"], "plain", "mutual.fuse is off"),
        (["mutual.update_order=sequential"], "plain", "sequential update order"),
        (["mutual.update_order=sequential", "mutual.fuse=false"], "plain",
         "mutual.fuse is off; sequential update order"),
    ],
)
def test_stage_selection(overrides, path, why):
    cfg = apply_overrides(default_config(), overrides)
    stage = make_mutual_stage(cohort(2), BuildContext(cfg, CPU, 10))
    stage.begin()
    info = stage.describe()
    assert info["cohort_path"] == path and info.get("why_plain", None) in (why, "")


def test_a_batchnorm_pair_updated_in_turn_names_both_reasons():
    cfg = apply_overrides(default_config(), ["mutual.update_order=sequential"])
    members = {"student1": create_arch("resnet20"), "student2": create_arch("resnet20")}
    info = make_mutual_stage(members, BuildContext(cfg, CPU, 10)).describe()
    assert info["cohort_path"] == "plain"
    assert info["why_plain"] == "sequential update order; BatchNorm running statistics"
