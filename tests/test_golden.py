"""Golden trajectories (mutualbench.training.golden): the stored float64 trajectories of every method
are reproduced by the current code, and a change of what is computed is reported with the
case and the step where it first shows."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from mutualbench.methods import METHODS, BuildContext, Method, get_method, losses
from mutualbench.methods import kd as kd_module
from mutualbench.training import golden
from mutualbench.training.assembly import loaders
from mutualbench.training.run import resolve

STORED = Path(__file__).resolve().parent / "golden" / "trajectories.json"


@pytest.fixture(scope="module")
def runner():
    return golden.GoldenRunner()


@pytest.fixture(scope="module")
def stored():
    return golden.load(STORED)


@pytest.fixture(scope="module")
def now(runner):
    """Every case recomputed once (this also trains and keeps the teachers)."""
    return golden.compute(runner=runner)


def test_every_registered_method_has_a_golden_case(stored):
    assert golden.missing_methods() == []
    assert golden.coverage_problems(stored) == []
    assert set(stored["cases"]) == set(golden.all_cases())


def test_a_new_method_without_a_golden_case_fails_the_check(monkeypatch, stored):
    monkeypatch.setitem(METHODS._items, "brand_new", type("BrandNew", (Method,), {"name": "brand_new"}))
    problems = golden.coverage_problems(stored)
    assert len(problems) == 1
    assert "brand_new have no golden case: give each method class a golden_cases" in problems[0]
    assert golden.WRITE_COMMAND in problems[0]
    assert golden.main(["--write", "/nonexistent/never-written.json"]) == 2


def test_unchanged_code_reproduces_the_stored_trajectories(stored, now):
    problems, worst = golden.compare(stored, now)
    assert problems == []
    assert worst <= golden.RTOL
    # every loss of every stage at every step is compared, and every method is covered
    assert {c["method"] for c in now["cases"].values()} == set(METHODS.names())
    for name, case in now["cases"].items():
        assert len(case["steps"]) == len(stored["cases"][name]["steps"]) > 0
    assert torch.get_default_dtype() == torch.float32


def test_the_golden_cases_cover_both_update_orders_both_cohort_paths_and_kd_at_t_not_1(runner):
    kinds = set()
    for name in golden.all_cases():
        config = golden.case_config(name)
        if config["method"] not in ("mutual", "hint_mutual"):
            continue
        with golden.float64():
            teacher = runner._teacher(config) if config["method"] == "hint_mutual" else None
            ctx = BuildContext(resolve(config), torch.device("cpu"), golden.NUM_CLASSES, teacher)
            _, stages = get_method(config["method"]).build(ctx)
        described = stages[-1].describe()
        kinds.add((described["cohort_path"], described["update_order"]))
    assert kinds == {("fused", "simultaneous"), ("plain", "simultaneous"), ("plain", "sequential")}
    assert golden.case_config("kd_t4")["kd"]["temperature"] != 1


def test_default_paths_stay_float32():
    ds = golden.synthetic_dataset()
    config = golden.case_config("individual")
    train, test = loaders(resolve(config), ds, torch.device("cpu"))
    x, _ = next(iter(train.epoch_batches(0)))
    assert x.dtype == torch.float32 and next(iter(test.epoch_batches(0)))[0].dtype == torch.float32
    with golden.float64():
        assert torch.get_default_dtype() == torch.float64
    assert torch.get_default_dtype() == torch.float32


def _first_problem(problems, case):
    mine = [p for p in problems if p.startswith(f"{case}: ")]
    assert mine, problems
    return mine[0]


def test_a_changed_kd_temperature_is_reported_at_the_first_step(monkeypatch, runner, stored, now):
    real = losses.kd_loss_terms
    monkeypatch.setattr(kd_module, "kd_loss_terms",
                        lambda s, t, y, temperature, alpha, red: real(s, t, y, 1.0, alpha, red))
    changed = golden.compute(["kd_t4"], runner=runner)
    problems, _ = golden.compare(stored, changed)
    first = _first_problem(problems, "kd_t4")
    assert "kd_t4: step 1 (stage train, epoch 1, batch 1): loss of student" in first
    assert "relative difference" in first


def test_a_changed_loss_reduction_is_reported(monkeypatch, runner, stored, now):
    real = losses._reduce
    monkeypatch.setattr(losses, "_reduce", lambda t, reduction: real(t, "sum" if reduction == "mean" else "mean"))
    problems, _ = golden.compare(stored, golden.compute(["individual_vgg_sgd_mean"], runner=runner))
    assert "individual_vgg_sgd_mean: step 1 (stage train, epoch 1, batch 1): loss of model" in problems[0]
    assert any("final weights of model" in p for p in problems)


def test_a_changed_peer_weight_is_reported(monkeypatch, runner, stored, now):
    monkeypatch.setattr(losses, "peer_weight_value", lambda peer_weight, k: 1.0)  # "mean" taken as "sum"
    problems, _ = golden.compare(stored, golden.compute(["mutual_plain_k3"], runner=runner))
    assert "mutual_plain_k3: step 1 (stage mutual, epoch 1, batch 1): loss of student1" in _first_problem(
        problems, "mutual_plain_k3")


def test_a_changed_data_order_is_reported(monkeypatch, runner, stored, now):
    from mutualbench.data import loader

    monkeypatch.setattr(loader, "_EPOCH_STREAM", 7)  # other seeded order, flips and crops
    problems, _ = golden.compare(stored, golden.compute(["individual_vgg_sgd_mean"], runner=runner))
    assert "individual_vgg_sgd_mean: step 1 (stage train, epoch 1, batch 1)" in problems[0]


def test_check_command_names_the_case_and_step_and_exits_1(tmp_path, capsys, stored):
    tampered = copy.deepcopy(stored)
    step = tampered["cases"]["individual_vgg_sgd_mean"]["steps"][1]
    step["losses"]["model"] *= 1 + 1e-6
    path = tmp_path / "golden.json"
    path.write_text(json.dumps(tampered))
    assert golden.main(["--check", str(path), "--case", "individual_vgg_sgd_mean"]) == 1
    out = capsys.readouterr().out
    assert "individual_vgg_sgd_mean: step 2 (stage train, epoch 1, batch 2): loss of model" in out
    # a difference within the tolerance passes
    step["losses"]["model"] = stored["cases"]["individual_vgg_sgd_mean"]["steps"][1]["losses"]["model"] * (1 + 1e-12)
    path.write_text(json.dumps(tampered))
    assert golden.main(["--check", str(path), "--case", "individual_vgg_sgd_mean"]) == 0
    assert "golden trajectories match" in capsys.readouterr().out


def test_check_command_without_a_stored_file_is_a_one_line_error(tmp_path, capsys):
    assert golden.main(["--check", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no stored golden trajectories" in err and golden.WRITE_COMMAND in err
    assert len(err.splitlines()) == 1
    assert golden.main(["--check", str(STORED), "--case", "nope"]) == 2
    assert "unknown golden case 'nope'" in capsys.readouterr().err


def test_mutual_after_hint_pretraining_is_hint_mutual_step_for_step():
    """Composable pretraining: ``mutual`` with ``pretrain = "hints"`` computes exactly what the
    built-in ``hint_mutual`` does (every loss of every step, the final weights)."""
    recorder = golden.GoldenRunner()
    built_in = golden.case_config("hint_mutual")
    composed = dict(golden.case_config("hint_mutual"), method="mutual", pretrain="hints")
    a, a_states = recorder.run_config(built_in)
    b, b_states = recorder.run_config(composed)
    assert a["steps"] == b["steps"] and a["test_acc"] == b["test_acc"]
    for name in a_states:
        for key, tensor in a_states[name].items():
            assert torch.equal(tensor, b_states[name][key]), (name, key)
