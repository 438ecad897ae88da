"""The online-distillation cohort methods (KDCL, OKDDip, PCL) end to end on the shared CIFAR-10
copy, as a user runs them (`mutualbench run`), test-sized: 256 training images, 200 test
images, one epoch, a cohort of three ResNet-20s (the suite's smallest CIFAR ResNet; OKDDip
needs three: two peers and the leader). Each record is complete, lists the models its method
declares, and holds accuracies in percent and every trained model's loss terms. Skipped
when the copy is absent."""

import pytest

from conftest import SHARED_CIFAR
from mutualbench.cli import main
from mutualbench.methods import get_method
from mutualbench.storage.records import read_record

pytestmark = pytest.mark.cifar

# the loss terms each trained model records (the methods' docstrings); PCL's temporal means
# are not trained by gradient, so they have none
TERMS = {
    "kdcl": {"student1": {"ce", "kl"}, "student2": {"ce", "kl"}, "student3": {"ce", "kl"}},
    "okddip": {"peer1": {"ce", "kl"}, "peer2": {"ce", "kl"}, "leader": {"ce", "kl"}},
    "pcl": {"peer1": {"ce", "pe", "pm"}, "peer2": {"ce", "pe", "pm"}, "peer3": {"ce", "pe", "pm"},
            "ensemble_teacher": {"ce"}},
}


@pytest.fixture(scope="module")
def cifar_root(shared_cifar):
    """The data root the shared copy was decoded into (its cache), so no run decodes it again."""
    return shared_cifar.cache_path.parent.parent


@pytest.mark.parametrize("method", list(TERMS))
def test_online_kd_method_end_to_end_on_cifar(cifar_root, tmp_path, method, capsys):
    code = main(["run", "--method", method, "--arch", "resnet20", "--cohort", "3", "--seed", "0",
                 "--data", str(SHARED_CIFAR), "--data-root", str(cifar_root), "--train-subset", "256",
                 "--epochs", "1", "--set", "data.test_subset=200", "--device", "cpu", "--out", str(tmp_path),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    (path,) = tmp_path.glob(f"{method}-*.json")
    record = read_record(path)  # checked against the record schema as it is read
    assert record["status"] == "complete" and record["data"]["name"] == "cifar10-jpeg75"
    assert record["data"]["train_used"] == 256 and record["data"]["test_used"] == 200
    config = record["config"]
    assert (config["method"], config["arch"], config["cohort"]) == (method, ["resnet20"], 3)
    assert record["timings"]["train_s"] > 0

    # the models the method declares, in its order; the ones a study compares it on among them
    declared = get_method(method)
    assert sorted(record["models"]) == sorted(declared.member_names(config))  # a record keeps its keys sorted
    assert set(declared.compared_members(config)) <= set(record["models"])

    (epoch,) = record["curves"]
    assert list(epoch["test_acc"]) == list(record["models"])
    for name, model in record["models"].items():
        assert model["arch"] == "resnet20" and model["params"] > 0
        assert 0.0 <= model["final_test_acc"] <= 100.0  # percent, as every record keeps them
        assert model["final_test_acc"] == epoch["test_acc"][name]
    ensemble = record["ensemble"]  # the mean softmax of the networks trained as cohort members
    assert sorted(ensemble["members"]) == sorted(n for n, m in record["models"].items() if m["role"] == "cohort member")
    assert 0.0 <= ensemble["final_test_acc"] <= 100.0

    terms = epoch["train_loss_terms"]
    assert {name: set(t) for name, t in terms.items()} == TERMS[method]
    for name, parts in terms.items():  # a model's terms add up to its loss
        assert sum(parts.values()) == pytest.approx(epoch["train_loss"][name], rel=1e-4, abs=1e-6)
