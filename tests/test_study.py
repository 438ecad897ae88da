import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from mutualbench.cli import main

SPEC = """
[study]
name = "tiny"
data = "tiny3"
classes = ["ant", "bee", "cow"]
seeds = 2

[defaults]
"teacher.arch" = "seed_vgg_teacher"
"loss.reduction" = "sum"
"kd.temperature" = 1.0
"data.batch_size" = 16
"train.epochs" = 1
"teacher.train.epochs" = 1
"hint.epochs" = 1

[[arms]]
name = "student"
method = "individual"
arch = "seed_vgg_student"
published = { model = 50.0 }

[[arms]]
name = "kd"
method = "kd"
arch = "seed_vgg_student"

[[arms]]
name = "dml"
method = "mutual"
arch = "seed_vgg_student"
cohort = 2
set = { "train.optimizer.lr" = 3e-4 }

[[comparisons]]
a = "dml"
b = "student"

[[ablations]]
name = "update_order"
arms = ["dml"]
values = { simultaneous = {}, sequential = { "mutual.update_order" = "sequential" } }

[profiles.smoke]
tolerance = 0.5
set = { "train.epochs" = 2 }
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(SPEC)
    return path


def replicate(spec, data, root, out, *extra, env=None):
    args = ["replicate", str(spec), "--profile", "smoke", "--data", str(data), "--data-root", str(root),
            "--out", str(out), "--device", "cpu", *extra]
    if env:
        return subprocess.run([sys.executable, "-m", "mutualbench.cli", *args], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=600)
    return main(args)


def records(out):
    return {p.name: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}


def test_replicate_runs_everything_then_nothing(tmp_path, spec, tiny_cifar, capsys):
    data, root = tiny_cifar
    out = tmp_path / "study"
    assert replicate(spec, data, root, out) == 0
    recs = records(out)
    # 2 seeds x (student, kd, dml, dml-sequential) + the teacher trained for kd, per seed
    assert len(recs) == 10 and all(r["status"] == "complete" for r in recs.values())
    for name in ("table.md", "table.csv", "comparisons.csv", "curves.png", "curves_dml.png", "study.json"):
        assert (out / name).exists(), name
    table = (out / "table.md").read_text()
    assert "| student " in table and "Ablation: update_order" in table and "dml vs student" in table
    capsys.readouterr()
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert replicate(spec, data, root, out) == 0
    assert "nothing to run" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == mtimes


def test_killed_study_completes_on_rerun_without_losing_or_repeating(tmp_path, spec, tiny_cifar):
    data, root = tiny_cifar
    out = tmp_path / "study"
    killed = replicate(spec, data, root, out, "--quiet", env={"MUTUALBENCH_FAULT_KILL_AFTER_EPOCHS": "9"})
    assert killed.returncode == -9
    before = records(out)
    assert 0 < len(before) < 10
    assert replicate(spec, data, root, out, "--quiet") == 0
    after = records(out)
    assert len(after) == 10 and all(r["status"] == "complete" for r in after.values())
    for name, rec in before.items():  # what was complete was not redone
        assert after[name]["finished_at"] == rec["finished_at"]
    manifest = json.loads((out / "study.json").read_text())
    planned = {e["run_id"] + ".json" for e in manifest["runs"]}
    teachers = {f"{r['teacher']['run_id']}.json" for r in after.values() if r.get("teacher")}
    assert planned | teachers == set(after)


def test_table_regenerates_identically_and_compare(tmp_path, spec, tiny_cifar, capsys):
    data, root = tiny_cifar
    out = tmp_path / "study"
    assert replicate(spec, data, root, out, "--quiet", "--seeds", "2") == 0
    first = (out / "table.md").read_text()
    import pandas as pd

    runs = pd.read_csv(out / "runs.csv", keep_default_na=False)  # every table row's runs, by run id
    table = pd.read_csv(out / "table.csv", keep_default_na=False)
    key = ["ablation", "value", "arm", "member"]
    for _, row in table.iterrows():
        mine = runs[(runs[key].astype(str) == row[key].astype(str).values).all(axis=1)]
        assert len(mine) == row["n"] and mine["run_id"].str.match(r"^[a-z_]+-[0-9a-f]{12}$").all()
        assert abs(mine["final_acc"].mean() - row["final_mean"]) < 1e-3
    (out / "table.md").unlink()
    assert main(["table", str(out)]) == 0
    assert (out / "table.md").read_text() == first
    stored = tmp_path / "stored"
    shutil.copytree(out, stored, ignore=shutil.ignore_patterns("*.pt"))
    capsys.readouterr()
    assert main(["compare", str(out), "--against", str(stored)]) == 0
    out_text = capsys.readouterr().out
    assert "tolerance 0.5 points = the smallest difference that matters" in out_text
    assert "consistent: " in out_text and "seeds: here 0, 1; stored 0, 1" in out_text
    # every stored student record 7 points higher: on tiny data two seeds spread so widely that a
    # 7-point shift is inside the Welch interval, and compare says so, with the interval
    for path in (stored / "runs").glob("individual-*.json"):
        rec = json.loads(path.read_text())
        if rec["models"]["model"]["arch"] != "seed_vgg_student":
            continue
        m = rec["models"]["model"]  # a record stays possible: its final accuracy at most its best
        assert m["final_test_acc"] <= 93.0
        m["final_test_acc"] += 7.0
        m["best_test_acc_test_selected"] = max(m["best_test_acc_test_selected"], m["final_test_acc"])
        rec["curves"][-1]["test_acc"]["model"] = m["final_test_acc"]  # and its last epoch says so
        path.write_text(json.dumps(rec))
    code = main(["compare", str(out), "--against", str(stored)])
    text = capsys.readouterr().out
    (row,) = [line for line in text.splitlines() if "| student/model " in line]
    assert "| -7.00 [" in row and "| 2 / 2 " in row
    assert (code == 1) == ("| differs" in row)  # exit 1 exactly when a row differs
    assert main(["compare", str(out), "--against", str(tmp_path / "nowhere")]) == 2
    (stored / "study.json").write_text("{not json")
    assert main(["compare", str(out), "--against", str(stored)]) == 2


def test_selected_arms_compare_only_their_rows(tmp_path, spec, tiny_cifar, capsys):
    """``--arms``/``--no-ablations`` against a stored study of every arm and ablation: the rows
    not selected are not reported missing."""
    data, root = tiny_cifar
    stored, out = tmp_path / "stored", tmp_path / "new"
    assert replicate(spec, data, root, stored, "--quiet", "--seeds", "1") == 0
    capsys.readouterr()
    assert replicate(spec, data, root, out, "--quiet", "--seeds", "1", "--arms", "student", "--no-ablations",
                     "--against", str(stored)) == 0
    printed = capsys.readouterr().out
    assert "not in this study" not in printed and "missing from" not in printed
    assert f"compared with {stored} (statistical" in printed
    assert "consistent: 1 of 1 arm/member rows consistent with the stored seeds" in printed


@pytest.mark.parametrize(
    "edit,message",
    [
        (("[[comparisons]]", "[[comparisons]]\nc = 1"), "unknown key(s) c in [[comparisons]] #1"),
        (('method = "kd"', 'method = "kdd"'), "unknown method 'kdd'"),
        (('"train.epochs" = 1', '"train.epoch" = 1'), "unknown config key 'train.epoch'"),
        (("[profiles.smoke]", "[profiles.quick]"), "no profile 'smoke'"),
        (('arms = ["dml"]', 'arms = ["dlm"]'), "arm 'dlm' is not defined"),
    ],
)
def test_malformed_spec_fails_before_training(tmp_path, tiny_cifar, capsys, edit, message):
    data, root = tiny_cifar
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC.replace(*edit))
    assert replicate(bad, data, root, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}") and message in err
    assert not (tmp_path / "out" / "runs").exists() or not list((tmp_path / "out" / "runs").glob("*.json"))


def test_time_budget_stops_before_a_run_that_would_not_fit(monkeypatch):
    from mutualbench.studies import launch

    clock = {"t": 0.0}
    monkeypatch.setattr(launch.time, "monotonic", lambda: clock["t"])
    durations = {"individual": 30.0, "mutual": 50.0}
    ran = []

    class FakeRunner:
        def run(self, cfg):
            ran.append((cfg["method"], cfg["seed"]))
            clock["t"] += durations[cfg["method"]]

    configs = [{"method": m, "arch": ["seed_vgg_student"], "seed": s}
               for s in range(3) for m in ("individual", "mutual")]
    messages = []
    errors, left = launch.run_local(configs, FakeRunner(), messages.append, time_budget_s=100.0)
    # seed 0 (0 -> 30 -> 80 s) runs; seed 1's individual run would end at 80 + 30 > 100: stop there
    assert ran == [("individual", 0), ("mutual", 0)]
    assert (errors, left) == ([], 4)
    assert "4 runs left" in messages[-1] and "again to continue" in messages[-1]
    # a single run left is named as one run
    clock["t"] = 0.0
    ran.clear()
    assert launch.run_local(configs, FakeRunner(), messages.append, time_budget_s=200.0) == ([], 1)
    assert "; 1 run left (run the same command" in messages[-1]
    clock["t"] = 0.0
    ran.clear()
    assert launch.run_local(configs, FakeRunner(), messages.append) == ([], 0)
    assert len(ran) == 6


def test_time_budget_cli_leaves_runs_for_a_rerun(tmp_path, spec, tiny_cifar, capsys):
    data, root = tiny_cifar
    out = tmp_path / "study"
    assert replicate(spec, data, root, out, "--time-budget", "0.001", "--no-ablations") == 0
    err = capsys.readouterr().err
    # the first run's measured estimate does not fit: nothing starts, nothing is half-written
    assert "estimated time for the 6 runs to run" in err
    assert "6 runs left" in err and "study incomplete" in err and "no table written" in err
    assert (out / "study.json").exists() and len(records(out)) == 0
    assert not (out / "table.md").exists()
    assert replicate(spec, data, root, out, "--time-budget", "3600", "--no-ablations") == 0
    assert "0 of 6 runs complete, 6 to run" in capsys.readouterr().err
    assert len(records(out)) == 8  # 2 seeds x (student, kd, its teacher, dml)
    assert replicate(spec, data, root, out, "--time-budget", "-5") == 2
    assert "--time-budget must be a positive" in capsys.readouterr().err


def test_dry_run_plans_without_training_or_writing(tmp_path, spec, tiny_cifar, capsys):
    data, root = tiny_cifar
    out = tmp_path / "study"
    assert replicate(spec, data, root, out, "--dry-run", "--no-ablations") == 0
    text = capsys.readouterr().out
    assert "dry run: nothing is trained or written" in text and not out.exists()
    assert "0 runs complete, 6 to run: about" in text  # 2 seeds x (student, kd, dml)
    assert text.count("| to run") == 6
    assert replicate(spec, data, root, out, "--no-ablations", "--seeds", "1", "--quiet") == 0
    capsys.readouterr()
    assert replicate(spec, data, root, out, "--dry-run", "--no-ablations") == 0
    text = capsys.readouterr().out
    assert "3 runs complete, 3 to run" in text
    done = json.loads((out / "study.json").read_text())["runs"]  # seed 0's three runs
    assert len(done) == 3 and all(re.search(rf"{e['run_id']}\s*\|\s*complete", text) for e in done)


def test_arms_runs_only_the_named_arms_and_plans_the_rest(tmp_path, spec, tiny_cifar, capsys):
    data, root = tiny_cifar
    out = tmp_path / "study"
    assert replicate(spec, data, root, out, "--arms", "dml", "--seeds", "1", "--quiet") == 0
    recs = records(out)
    # dml's main run and its update_order ablation run; no student, no kd, no teacher
    assert sorted(r["method"] for r in recs.values()) == ["mutual", "mutual"]
    assert len(json.loads((out / "study.json").read_text())["runs"]) == 5  # the manifest lists every run
    capsys.readouterr()
    assert replicate(spec, data, root, out, "--arms", "dml", "--seeds", "1") == 0
    assert "all 2 runs of the selected arms (dml) of " in capsys.readouterr().err  # not "all 5 runs"
    assert replicate(spec, data, root, out, "--dry-run", "--seeds", "1", "--arms", "student") == 0
    text = capsys.readouterr().out
    assert "2 runs complete, 1 to run" in text and text.count("not selected (--arms)") == 1  # kd
    # a selection of one run is named as one run
    assert replicate(spec, data, root, out, "--arms", "student", "--seeds", "1") == 0
    assert "0 of 1 run of the selected arms (student) complete, 1 to run" in capsys.readouterr().err
    assert replicate(spec, data, root, out, "--arms", "student", "--seeds", "1") == 0
    assert "the 1 run of the selected arms (student) of " in capsys.readouterr().err
    assert replicate(spec, data, root, out, "--dry-run", "--seeds", "1", "--arms", "student") == 0
    assert "3 runs complete, 0 to run" in capsys.readouterr().out


@pytest.mark.parametrize("arms, message", [
    ("nope", "has no arm 'nope'; its arms are student, kd, dml"),
    (",", "--arms names no arm"),
])
def test_arms_errors_name_the_fix(tmp_path, spec, tiny_cifar, capsys, arms, message):
    data, root = tiny_cifar
    assert replicate(spec, data, root, tmp_path / "study", "--arms", arms, "--dry-run") == 2
    assert message in capsys.readouterr().err


def test_a_profile_may_set_its_own_seed_count(tmp_path, spec, tiny_cifar):
    """[profiles.X] seeds = N runs N seeds when --seeds is not given (a smoke profile reruns
    exactly its stored set's seeds); --seeds still wins; without either, [study] seeds."""
    from mutualbench.studies.request import StudyRequest
    from mutualbench.studies.study import plan_study

    data, root = tiny_cifar

    def planned(text, seeds=None):
        path = tmp_path / "s.toml"
        path.write_text(text)
        request = StudyRequest(path, "smoke", tmp_path / "out", data=str(data), data_root=root, seeds=seeds,
                               device="cpu", ablations=False)
        _, _, manifest, pending = plan_study(request)
        return manifest["seeds"], sorted({c["seed"] for c in pending})

    assert planned(SPEC) == ([0, 1], [0, 1])  # [study] seeds = 2
    three = SPEC.replace("[profiles.smoke]\ntolerance = 0.5", "[profiles.smoke]\ntolerance = 0.5\nseeds = 3")
    assert three != SPEC
    assert planned(three) == ([0, 1, 2], [0, 1, 2])
    assert planned(three, seeds=1) == ([0], [0])


def test_a_study_continued_with_fewer_seeds_or_no_ablations_keeps_its_stored_runs(tmp_path, spec, tiny_cifar, capsys):
    """A study folder's manifest plans what it planned before as well as what is asked: a
    rerun with --seeds 1 and --no-ablations trains nothing and leaves the table of the
    two-seed study with its ablation as it was, byte for byte (and its manifest: a replicate
    that trains nothing changes no file)."""
    data, root = tiny_cifar
    out = tmp_path / "study"
    assert replicate(spec, data, root, out, "--quiet", "--seeds", "2") == 0
    table = (out / "table.md").read_bytes()
    stored = (out / "study.json").read_bytes()
    runs = json.loads(stored)["runs"]
    assert json.loads(stored)["asked"] == {"seeds": [0, 1], "ablations": ["update_order"]}
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    capsys.readouterr()
    assert replicate(spec, data, root, out, "--seeds", "1", "--no-ablations") == 0
    # the counts are of what was asked: seed 0's three main runs
    assert "all 3 runs of tiny/smoke are complete" in capsys.readouterr().err
    manifest = json.loads((out / "study.json").read_text())
    assert manifest["seeds"] == [0, 1] and manifest["runs"] == runs
    assert (out / "study.json").read_bytes() == stored  # its asked too: what the replicate that planned the runs asked
    assert (out / "table.md").read_bytes() == table and "Ablation: update_order" in table.decode()
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == mtimes
    # only the asked runs run: a third seed asked alone trains seed 2's main runs (and its
    # teacher), not its ablation run; the plan shows that run as not selected
    assert replicate(spec, data, root, out, "--dry-run", "--seeds", "3", "--no-ablations") == 0
    text = capsys.readouterr().out
    assert text.count("not selected (--ablations)") == 1 and "8 runs complete, 3 to run" in text


def test_not_asked_names_the_option_that_left_a_planned_run_out():
    """The one test of "asked" that planning, ``replicate`` and ``--dry-run`` share: a run of
    a seed not asked is left out by --seeds (even when its ablation is also not asked), an
    ablation run of an asked seed by --ablations; a manifest from before ``asked`` asks all."""
    from mutualbench.studies.study import is_asked, not_asked

    asked = {"seeds": [0, 1], "ablations": ["update_order"]}
    run = {"seed": 0, "ablation": None}
    assert not_asked(run, asked) is None
    assert not_asked({"seed": 2, "ablation": None}, asked) == "--seeds"
    assert not_asked({"seed": 2, "ablation": "temperature"}, asked) == "--seeds"
    assert not_asked({"seed": 1, "ablation": "temperature"}, asked) == "--ablations"
    assert not_asked({"seed": 1, "ablation": "update_order"}, asked) is None
    assert not_asked({"seed": 9, "ablation": "temperature"}, None) is None
    assert is_asked(run, {"asked": asked}) and not is_asked({"seed": 2, "ablation": None}, {"asked": asked})
    assert is_asked({"seed": 2, "ablation": None}, {})
