"""The second study spec, the DML paper on CIFAR-10: what it states, and that it plans."""

from pathlib import Path

import pytest

from conftest import SHARED_CIFAR
from mutualbench.cli import main
from mutualbench.studies.spec import expand, load_spec
from mutualbench.training.run import resolve

SPEC = Path(__file__).resolve().parents[1] / "replication" / "dml_cifar10.toml"


@pytest.mark.parametrize("profile,epochs,milestones,lr", [("full", 200, [60, 120, 180], 0.1), ("cpu", 10, [5, 8], 0.1),
                                                          ("smoke", 2, [1], 0.02)])
def test_every_run_states_the_papers_recipe(profile, epochs, milestones, lr):
    spec = load_spec(SPEC)
    assert spec.data == "cifar10" and not any(arm.get("published") for arm in spec.arms)
    plan = expand(spec, profile, [0, 1, 2], str(SHARED_CIFAR))
    assert {(p.arm, p.config["method"], tuple(p.config["arch"]), p.config["cohort"]) for p in plan} == {
        ("resnet32", "individual", ("resnet32",), 1), ("dml", "mutual", ("resnet32",), 2)}
    for p in plan:
        r = resolve(p.config)
        assert r["train"]["optimizer"] == {"name": "sgd", "lr": lr, "betas": [0.9, 0.999], "weight_decay": 5e-4,
                                           "momentum": 0.9, "nesterov": True}
        assert r["train"]["schedule"] == {"name": "step", "milestones": milestones, "gamma": 0.1}
        assert r["train"]["epochs"] == epochs and r["data"]["batch_size"] == (16 if profile == "smoke" else 64) and r["loss"]["reduction"] == "mean"
        assert r["data"]["flip"] and r["data"]["crop_padding"] == 4


@pytest.mark.cifar
def test_the_smoke_profile_plans_on_the_shared_copy(shared_cifar, tmp_path, capsys):
    root = shared_cifar.cache_path.parent.parent
    code = main(["replicate", str(SPEC), "--profile", "smoke", "--dry-run", "--data", str(SHARED_CIFAR),
                 "--data-root", str(root), "--seeds", "2", "--out", str(tmp_path / "out"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "0 runs complete, 4 to run" in out and "individual-" in out and "mutual-" in out
    assert not (tmp_path / "out").exists()
