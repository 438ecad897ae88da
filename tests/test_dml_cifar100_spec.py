"""The DML paper's CIFAR-100 study: its published numbers (Table 2, as quoted by secondary
sources), its claims, and that it loads and expands into runs (no CIFAR-100 run here)."""

from pathlib import Path

import pytest

from mutualbench.studies.spec import expand, load_spec
from mutualbench.training.run import resolve

SPEC = Path(__file__).resolve().parents[1] / "replication" / "dml_cifar100.toml"


def test_the_cifar100_spec_states_table_2_and_the_papers_recipe():
    spec = load_spec(SPEC)
    assert spec.data == "cifar100"
    published = {a["name"]: a["published"] for a in spec.arms}
    assert published == {"resnet32": {"model": 68.99}, "dml_resnet32": {"student1": 71.19, "student2": 70.75},
                         "mobilenet": {"model": 73.65}, "dml_mobilenet": {"student1": 76.21, "student2": 76.10},
                         "wrn_28_10": {"model": 78.69}, "dml_wrn_28_10": {"student1": 80.28, "student2": 80.08}}
    assert [c["comparison"] for c in spec.raw["claims"]] == [
        "dml_resnet32 vs resnet32", "dml_mobilenet vs mobilenet", "dml_wrn_28_10 vs wrn_28_10"]


@pytest.mark.parametrize("profile,epochs", [("full", 200), ("smoke", 2)])
def test_the_cifar100_spec_expands_into_runs(profile, epochs):
    spec = load_spec(SPEC)
    plan = expand(spec, profile, [0, 1, 2], "cifar100")
    assert len(plan) == 6 * 3
    assert {(p.arm, tuple(p.config["arch"]), p.config["cohort"]) for p in plan} == {
        ("resnet32", ("resnet32",), 1), ("dml_resnet32", ("resnet32",), 2),
        ("mobilenet", ("timm:mobilenetv1_100",), 1), ("dml_mobilenet", ("timm:mobilenetv1_100",), 2),
        ("wrn_28_10", ("wrn_28_10",), 1), ("dml_wrn_28_10", ("wrn_28_10",), 2)}
    for p in plan:
        r = resolve(p.config)
        assert r["train"]["epochs"] == epochs and r["data"]["batch_size"] == 64
        assert r["train"]["optimizer"]["name"] == "sgd" and r["train"]["optimizer"]["nesterov"] is True
        assert r["data"]["source"] == "cifar100"
