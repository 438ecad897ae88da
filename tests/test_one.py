"""ONE (On-the-fly Native Ensemble): its loss against a hand computation, its parts and their
initialisation, its parameter counts, and whole runs on synthetic data and the shared copy."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import run_config
from mutualbench.archs import count_parameters, create_arch
from mutualbench.cli import main
from mutualbench.core.errors import UserError
from mutualbench.methods import BuildContext, get_method
from mutualbench.methods.base import hashed_config
from mutualbench.methods.one import Gate, one_loss_terms
from mutualbench.storage.records import read_record
from mutualbench.training import golden
from mutualbench.training.run import Runner, resolve

CPU = torch.device("cpu")


def test_one_loss_is_hand_computed():
    # two branches, one image, two classes, T = 1: z1 = [0, 0], z2 = [ln 3, 0], z_e = [ln 3 / 2, 0]
    logits = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), 0.0]]], dtype=torch.float64)
    ensemble = torch.tensor([[math.log(3.0) / 2, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    pe = [math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)]
    p1, p2 = [0.5, 0.5], [0.75, 0.25]

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))

    total, ce_e, terms = one_loss_terms(logits, ensemble, y, 1.0, "sum")
    assert terms["ce"].tolist() == pytest.approx([math.log(2), -math.log(0.75)], abs=1e-12)
    assert terms["kl"].tolist() == pytest.approx([kl(pe, p1), kl(pe, p2)], abs=1e-12)
    assert ce_e.item() == pytest.approx(-math.log(pe[0]), abs=1e-12)
    assert total.item() == pytest.approx(math.log(2) - math.log(0.75) - math.log(pe[0]) + kl(pe, p1) + kl(pe, p2),
                                         abs=1e-12)
    # at T = 2 the KL terms are KL at T, times T^2
    _, _, t2 = one_loss_terms(logits, ensemble, y, 2.0, "sum")
    soft = [[math.exp(v / 2) for v in row] for row in ([0.0, 0.0], [math.log(3.0), 0.0], [math.log(3.0) / 2, 0.0])]
    soft = [[v / sum(row) for v in row] for row in soft]
    assert t2["kl"].tolist() == pytest.approx([4 * kl(soft[2], soft[0]), 4 * kl(soft[2], soft[1])], abs=1e-12)
    # a KL weight (the ramp-up's) scales the KL terms only, and the total with them
    total_w, ce_w, half = one_loss_terms(logits, ensemble, y, 1.0, "sum", kl_weight=0.25)
    assert half["kl"].tolist() == pytest.approx([0.25 * kl(pe, p1), 0.25 * kl(pe, p2)], abs=1e-12)
    assert half["ce"].tolist() == terms["ce"].tolist() and ce_w.item() == ce_e.item()
    assert total_w.item() == pytest.approx(total.item() - 0.75 * (kl(pe, p1) + kl(pe, p2)), abs=1e-12)


def test_the_ensemble_is_a_detached_target_of_the_branches():
    logits = torch.randn(3, 4, 5, requires_grad=True)
    ensemble = torch.randn(4, 5, requires_grad=True)
    _, _, terms = one_loss_terms(logits, ensemble, torch.tensor([0, 1, 2, 3]), 3.0)
    terms["kl"].sum().backward()
    assert ensemble.grad is None and logits.grad is not None


def test_the_gate_weighs_the_branches_per_image():
    torch.manual_seed(0)
    gate = Gate(8, 3)
    weights = gate(torch.randn(5, 8, 4, 4))
    assert weights.shape == (5, 3) and torch.allclose(weights.sum(-1), torch.ones(5))


def _built(arch="wrn_10_1", k=3, rampup_epochs=0):
    config = golden.case_config("one")
    config.update(arch=[arch], cohort=k)
    config["one"] = dict(config["one"], rampup_epochs=rampup_epochs)
    resolved = resolve(config)
    method = get_method("one")
    ctx = BuildContext(hashed_config(resolved, "one"), CPU, 10)
    return ctx, method.build(ctx), method


@pytest.mark.parametrize("epoch", [0, 1, 2, 5])
def test_the_kl_terms_ramp_up_over_one_rampup_epochs_as_the_okddip_authors_one_baseline_does(epoch):
    """With ``one.rampup_epochs = 2`` a step of epoch e weighs the KL terms by exp(-5 (1 - e/2)^2)
    (exp(-5), exp(-1.25), then 1): the step's terms against ``one_loss_terms`` of the same
    forward pass at weight 1; the CE terms are not weighed."""
    ctx, (slots, (stage,)), _ = _built(rampup_epochs=2)
    stage.begin()
    stage.begin_epoch(epoch, epoch)
    stage.train_mode()
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        logits, ensemble = slots["ensemble"].module.all_logits(x)
    _, _, plain = one_loss_terms(logits, ensemble, y, stage.temperature, stage.reduction)
    weight = math.exp(-5 * (1 - min(epoch, 2) / 2) ** 2)
    out = stage.step(x, y)
    for k in range(3):
        assert out[f"branch{k + 1}/kl"].item() == pytest.approx(weight * plain["kl"][k].item(), rel=1e-5)
        assert out[f"branch{k + 1}/ce"].item() == pytest.approx(plain["ce"][k].item(), rel=1e-5)


def test_parts_start_as_the_same_index_would_and_share_one_trunk():
    ctx, (slots, stages), _ = _built()
    whole0, whole1 = ctx.new_model("wrn_10_1", 0), ctx.new_model("wrn_10_1", 1)
    x = torch.randn(2, 3, 32, 32)
    for m in (whole0, whole1, *(s.module for s in slots.values())):
        m.eval()
    with torch.no_grad():
        assert torch.equal(slots["branch1"].module(x), whole0(x))  # branch 1 is model 0 whole
        trunk = slots["branch1"].module.trunk
        assert slots["branch2"].module.trunk is trunk and slots["ensemble"].module.trunk is trunk
        assert torch.equal(slots["branch2"].module.branch(trunk(x)), whole1.head(whole1.stages["layer3"](trunk(x))))
    assert list(slots) == ["branch1", "branch2", "branch3", "ensemble"]
    assert stages[0].eval_names == ("branch1", "branch2", "branch3", "ensemble")


def test_parameters_count_the_trunk_once_per_model_and_once_in_the_ensemble():
    _, (slots, _), method = _built()
    counts = method.parameter_counts(slots)
    trunk = count_parameters(slots["branch1"].module.trunk)
    head = count_parameters(slots["branch1"].module.branch)
    gate = count_parameters(slots["ensemble"].module.gate)
    assert counts["branch1"] == counts["branch3"] == trunk + head == count_parameters(create_arch("wrn_10_1", 10))
    assert counts["ensemble"] == trunk + 3 * head + gate
    assert gate == 32 * 3 + 3 + 2 * 3  # layer2 of wrn_10_1 has 32 channels: linear 32 -> 3 with bias, BatchNorm1d(3) weight and bias


@pytest.mark.parametrize("overrides,message", [
    ({"cohort": 1}, "one trains K branches of one network: give one --arch and --cohort K"),
    ({"arch": ["wrn_10_1", "resnet20"], "cohort": 2}, "give one --arch and --cohort K"),
    ({"pretrain": "hints"}, "one does not take pretrain"),
])
def test_wrong_configs_are_one_line_errors(overrides, message):
    config = golden.case_config("one")
    config.update(overrides)
    with pytest.raises(UserError, match=message):
        resolve(config)


def test_a_split_after_the_last_stage_is_refused():
    config = golden.case_config("one")
    config["one"]["split_at"] = "layer3"
    ctx = BuildContext(hashed_config(resolve(config), "one"), CPU, 10)
    with pytest.raises(UserError, match="cannot be split after 'layer3': give one of its stages that has another "
                                        "after it"):
        get_method("one").build(ctx)


def test_a_run_records_every_branch_the_ensemble_and_their_terms(tiny_cifar, tmp_path):
    data, root = tiny_cifar
    config = run_config("one", data, arch=["seed_vgg_student"], **{"train.epochs": 2})
    config["cohort"] = 2
    record = Runner(tmp_path / "out", data_root=root, device="cpu").run(config)
    assert set(record["models"]) == {"branch1", "branch2", "ensemble"}
    assert record["models"]["ensemble"]["role"] == "gated ensemble"
    for entry in record["curves"]:
        terms = entry["train_loss_terms"]
        assert set(terms["branch1"]) == {"ce", "kl"} and set(terms["ensemble"]) == {"ce"}
        for name, parts in terms.items():
            assert sum(parts.values()) == pytest.approx(entry["train_loss"][name], rel=1e-5)
    weights = torch.load(tmp_path / "out" / record["run_id"] / "final.pt", weights_only=True)
    assert set(weights["models"]) == {"branch1", "branch2", "ensemble"}


def test_one_runs_end_to_end_on_the_shared_cifar_copy(shared_cifar, tmp_path, capsys):
    from conftest import SHARED_CIFAR

    out = tmp_path / "out"
    code = main(["run", "--method", "one", "--cohort", "2", "--arch", "resnet20", "--seed", "0",
                 "--data", str(SHARED_CIFAR), "--data-root", str(shared_cifar.cache_path.parent.parent),
                 "--train-subset", "500", "--epochs", "1", "--set", "data.test_subset=500", "--device", "cpu",
                 "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    (path,) = out.glob("one-*.json")
    record = read_record(path)
    assert record["status"] == "complete" and record["data"]["name"] == "cifar10-jpeg75"
    assert record["data"]["test_used"] == 500 and set(record["models"]) == {"branch1", "branch2", "ensemble"}
    resnet20 = count_parameters(create_arch("resnet20", 10))
    assert record["models"]["branch1"]["params"] == resnet20
    assert all(0 <= m["final_test_acc"] <= 100 for m in record["models"].values())
