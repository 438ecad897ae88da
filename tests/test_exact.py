"""``compare`` of a float64 study (mutualbench.analysis.exact): run by run, accuracies exactly, losses
within a relative 1e-9, only the seeds both sides hold; one line when it matches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mutualbench.analysis.exact import compare_exact, is_exact
from mutualbench.analysis.results import load_study
from mutualbench.cli import main

STORED = Path(__file__).resolve().parents[1] / "results" / "seed_blog" / "smoke"


@pytest.fixture
def copy(tmp_path):
    out = tmp_path / "rerun"
    shutil.copytree(STORED, out)
    return out


def _edit(folder: Path, arm: str, seed: int, edit, ablation=None, value=None):
    manifest = json.loads((folder / "study.json").read_text())
    (rid,) = {e["run_id"] for e in manifest["runs"] if e["arm"] == arm and e["seed"] == seed
              and e["ablation"] == ablation and e["value"] == value}
    path = folder / "runs" / f"{rid}.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    return rid


def test_the_stored_smoke_sets_are_float64_and_reproduce_themselves(capsys):
    stored = load_study(STORED)
    assert is_exact(stored)
    result = compare_exact(stored, stored)
    assert result.ok and result.seeds == [0, 1] and result.runs == len(stored.records) == 28
    assert main(["compare", str(STORED), "--against", str(STORED)]) == 0
    assert capsys.readouterr().out == "reproduced exactly: 28 runs (seeds 0, 1)\n"
    assert not is_exact(load_study(STORED.parents[1] / "seed_blog" / "cpu"))


def test_the_stored_blog_smoke_set_trains_off_chance():
    """Its accuracies say something: every main arm's members (and the cohorts' ensembles)
    end above chance (10% of the 100 balanced test images) on average over the seeds, and most
    runs leave it; only the init ablation's PyTorch-default value stays exactly at chance."""
    runs = load_study(STORED).runs
    main_arms = runs[runs["ablation"] == "main"]
    means = main_arms.groupby(["arm", "member"])["final_acc"].mean()
    assert len(means) == 10 and (means > 10.0).all(), means
    off = runs[~((runs["ablation"] == "init") & (runs["value"] == "pytorch_default"))]
    assert (off["final_acc"] != 10.0).mean() > 0.8
    default_init = runs[(runs["ablation"] == "init") & (runs["value"] == "pytorch_default")]
    assert len(default_init) == 8 and (default_init["final_acc"] == 10.0).all()


def test_a_loss_off_by_1e8_fails_and_1e12_passes(copy, capsys):
    def scale(factor):
        def edit(record):
            record["curves"][1]["train_loss"]["student1"] *= factor
        return edit

    rid = _edit(copy, "dml", 1, scale(1 + 1e-12))
    assert main(["compare", str(copy), "--against", str(STORED)]) == 0
    capsys.readouterr()
    _edit(copy, "dml", 1, scale(1 + 1e-8))
    assert main(["compare", str(copy), "--against", str(STORED)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("not reproduced exactly: 1 of 28 runs differ (seeds 0, 1; accuracies must be equal")
    assert out[1].startswith(f"  dml seed 1 ({rid}): epoch 2: student1 training loss ")
    assert "relative difference 1.0e-08" in out[1] and len(out) == 2


def test_any_accuracy_change_fails(copy, capsys):
    def edit(record):
        record["curves"][0]["test_acc"]["model"] += 1.0

    rid = _edit(copy, "student", 0, edit, ablation="augmentation", value="off")
    assert main(["compare", str(copy), "--against", str(STORED)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(f"  student seed 0 [augmentation=off] ({rid}): epoch 1: model test accuracy ")

    def ensemble(record):
        record["ensemble"]["final_test_acc"] += 1.0

    shutil.copy(STORED / "runs" / f"{rid}.json", copy / "runs" / f"{rid}.json")
    _edit(copy, "hint_dml", 0, ensemble)
    assert main(["compare", str(copy), "--against", str(STORED)]) == 1
    assert "ensemble final accuracy" in capsys.readouterr().out


def test_only_the_seeds_both_hold_are_compared_and_named(copy, capsys):
    manifest = json.loads((copy / "study.json").read_text())
    for e in manifest["runs"]:
        if e["seed"] == 1:
            (copy / "runs" / f"{e['run_id']}.json").unlink(missing_ok=True)
    assert main(["compare", str(copy), "--against", str(STORED)]) == 0
    assert capsys.readouterr().out == ("reproduced exactly: 14 runs (seed 0); seed 1 is on one side only, "
                                       "not compared\n")


def test_runs_made_with_other_settings_are_named_as_such(copy, capsys):
    manifest = json.loads((copy / "study.json").read_text())
    for e in manifest["runs"]:  # another valid id for every run (its last hex digit changed)
        new_id = e["run_id"][:-1] + ("0" if e["run_id"][-1] != "0" else "1")
        old = copy / "runs" / f"{e['run_id']}.json"
        if old.exists():
            rec = json.loads(old.read_text())
            rec["run_id"] = new_id
            (copy / "runs" / f"{new_id}.json").write_text(json.dumps(rec))
            old.unlink()
        e["run_id"] = new_id
    (copy / "study.json").write_text(json.dumps(manifest))
    assert main(["compare", str(copy), "--against", str(STORED)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("not reproduced exactly: none of the 28 stored runs of seeds 0, 1 is here")
    assert len(out.splitlines()) == 1


DML_STORED = STORED.parents[1] / "dml_cifar10" / "smoke"


def test_a_profile_may_loosen_the_loss_tolerance_but_never_the_accuracies(tmp_path, capsys):
    """The DML paper's smoke profile says ``loss_rtol = 1e-3`` (its chaotic pair moves losses
    across instruction sets, never accuracies): a loss 1e-5 off passes under it and fails at
    the default 1e-9; an accuracy off by one test image fails under it."""
    out = tmp_path / "rerun"
    shutil.copytree(DML_STORED, out)
    manifest = json.loads((out / "study.json").read_text())
    manifest["spec"]["profiles"]["smoke"]["loss_rtol"] = 1e-3  # the rerun's spec, as replication/ says now

    def loss(record):
        curve = record["curves"][-1]["train_loss"]
        name = sorted(curve)[0]
        curve[name] *= 1 + 1e-5

    (out / "study.json").write_text(json.dumps(manifest))
    _edit(out, "dml", 1, loss)
    assert main(["compare", str(out), "--against", str(DML_STORED)]) == 0
    assert capsys.readouterr().out == (
        "reproduced exactly: 4 runs (seeds 0, 1; losses within a relative 0.001, the profile's loss_rtol)\n")
    result = compare_exact(load_study(out), load_study(DML_STORED), rtol=1e-9)
    assert not result.ok and "relative 1e-09" in result.lines()[0] and "training loss" in result.lines()[1]

    def accuracy(record):
        member = sorted(record["models"])[0]
        record["curves"][-1]["test_acc"][member] += 1.0
        record["models"][member]["final_test_acc"] += 1.0
        best = record["models"][member]["best_test_acc_test_selected"]
        if best < record["models"][member]["final_test_acc"]:
            record["models"][member]["best_test_acc_test_selected"] = record["models"][member]["final_test_acc"]
            record["models"][member]["best_epoch_test_selected"] = record["curves"][-1]["epoch"]

    _edit(out, "dml", 0, accuracy)
    assert main(["compare", str(out), "--against", str(DML_STORED)]) == 1
    assert "losses within a relative 0.001" in capsys.readouterr().out
