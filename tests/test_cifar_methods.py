"""Every method end to end on the shared CIFAR-10 copy, test-sized (2,000 training images,
one epoch per stage). Skipped when the copy is absent."""

import pytest

from conftest import SHARED_CIFAR
from mutualbench.cli import main
from mutualbench.storage.records import read_record

pytestmark = pytest.mark.cifar

METHODS = [
    ("individual", []),
    ("kd", ["--teacher", "seed_vgg_teacher"]),
    ("mutual", ["--cohort", "2"]),
    ("fitnets", ["--teacher", "seed_vgg_teacher"]),
    ("hint_mutual", ["--cohort", "2", "--teacher", "seed_vgg_teacher"]),
]


@pytest.fixture(scope="module")
def cifar_runs(shared_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("cifar-runs")
    root = shared_cifar.cache_path.parent.parent
    return out, root


@pytest.mark.parametrize("method,extra", METHODS, ids=[m for m, _ in METHODS])
def test_method_end_to_end_on_cifar(cifar_runs, method, extra, capsys):
    out, root = cifar_runs
    code = main(["run", "--method", method, *extra, "--seed", "0", "--data", str(SHARED_CIFAR),
                 "--data-root", str(root), "--train-subset", "2000", "--epochs", "1",
                 "--set", "data.test_subset=2000", "--device", "cpu", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    (path,) = out.glob(f"{method}-*.json")
    record = read_record(path)
    assert record["status"] == "complete" and record["data"]["name"] == "cifar10-jpeg75"
    assert record["data"]["train_used"] == 2000 and record["data"]["test_used"] == 2000
    members = 2 if "--cohort" in extra else 1
    assert len(record["models"]) == members
    for model in record["models"].values():
        assert model["params"] == 1_497_434
        assert 0.0 <= model["final_test_acc"] <= 100.0
    if method in ("kd", "fitnets", "hint_mutual"):
        assert record["teacher"]["arch"] == "seed_vgg_teacher" and record["teacher"]["params"] == 2_440_394
