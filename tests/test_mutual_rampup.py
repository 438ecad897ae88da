"""DML's optional ramp-up (``mutual.rampup_epochs``): the KL weight against a hand computation,
the stage's KL terms epoch by epoch on both cohort paths, and run ids that stay what they were
at the default (no ramp-up, the paper's loss)."""

from __future__ import annotations

import math

import pytest
import torch

from mutualbench.core.config import run_id
from mutualbench.methods import BuildContext, get_method
from mutualbench.methods.base import hashed_config
from mutualbench.methods.losses import mutual_loss_terms
from mutualbench.training import golden
from mutualbench.training.run import resolve

CPU = torch.device("cpu")


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_a_kl_weight_scales_the_peer_kl_only():
    # two members, one image, two classes: z1 = [0, 0], z2 = [ln 3, 0], label 0
    logits = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), 0.0]]], dtype=torch.float64)
    y = torch.tensor([0])
    p1, p2 = [0.5, 0.5], [0.75, 0.25]
    total, terms = mutual_loss_terms(logits, y, "mean", "sum")
    assert terms["kl"].tolist() == pytest.approx([kl(p2, p1), kl(p1, p2)], abs=1e-12)
    total_w, terms_w = mutual_loss_terms(logits, y, "mean", "sum", kl_weight=0.25)
    assert terms_w["kl"].tolist() == pytest.approx([0.25 * kl(p2, p1), 0.25 * kl(p1, p2)], abs=1e-12)
    assert terms_w["ce"].tolist() == terms["ce"].tolist() == pytest.approx([math.log(2), -math.log(0.75)], abs=1e-12)
    assert total_w.tolist() == pytest.approx([math.log(2) + 0.25 * kl(p2, p1), -math.log(0.75) + 0.25 * kl(p1, p2)],
                                             abs=1e-12)
    # weight 1 is the paper's loss, bit for bit
    same, _ = mutual_loss_terms(logits, y, "mean", "sum", kl_weight=1.0)
    assert torch.equal(same, total)


def _stage(rampup_epochs: int, fuse: bool):
    config = golden.case_config("mutual_fused")
    config["cohort"] = 3
    config["mutual"] = dict(config["mutual"], rampup_epochs=rampup_epochs, fuse=fuse)
    ctx = BuildContext(hashed_config(resolve(config), "mutual"), CPU, 10)
    slots, (stage,) = get_method("mutual").build(ctx)
    return slots, stage


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "plain"])
@pytest.mark.parametrize("epoch", [0, 1, 2, 5])
def test_the_stage_ramps_the_kl_terms_up_over_mutual_rampup_epochs(epoch, fuse):
    """With ``mutual.rampup_epochs = 2`` a step of epoch e weighs the KL terms by
    exp(-5 (1 - e/2)^2) (exp(-5), exp(-1.25), then 1) and leaves the CE terms alone: the
    step's terms against ``mutual_loss_terms`` of the same forward pass at weight 1."""
    slots, stage = _stage(2, fuse)
    stage.begin()
    stage.begin_epoch(epoch, epoch)
    stage.train_mode()
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        logits = torch.stack([slots[f"student{k + 1}"].module(x) for k in range(3)])
    _, plain = mutual_loss_terms(logits, y, "mean", stage.loss.reduction)
    weight = math.exp(-5 * (1 - min(epoch, 2) / 2) ** 2)
    out = stage.step(x, y)
    for k in range(3):
        assert out[f"student{k + 1}/kl"].item() == pytest.approx(weight * plain["kl"][k].item(), rel=1e-4)
        assert out[f"student{k + 1}/ce"].item() == pytest.approx(plain["ce"][k].item(), rel=1e-4)


def test_the_default_keeps_every_stored_dml_run_id():
    """A config at ``mutual.rampup_epochs = 0`` hashes as one made before the key existed;
    another length is another run."""
    config = resolve(golden.case_config("mutual_fused"))
    assert config["mutual"]["rampup_epochs"] == 0
    before = dict(config, mutual={k: v for k, v in config["mutual"].items() if k != "rampup_epochs"})
    assert run_id(config, "0" * 64) == run_id(before, "0" * 64)
    ramped = dict(config, mutual=dict(config["mutual"], rampup_epochs=4))
    assert run_id(ramped, "0" * 64) != run_id(config, "0" * 64)
