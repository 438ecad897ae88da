"""Stored records and manifests are untrusted input (``mutualbench.storage.stored_schema``): a copy of
the stored smoke study with one field tampered is a one-line ``error:`` naming the file and
the key path (exit 2) in every command that reads it, never a traceback or a table computed on
what the files cannot say; and ``compare`` of a folder made by a ``replicate`` of selected
arms compares what that replicate asked for, as the replicate's own comparison does.

Each case fails on the code before the schema: a traceback, an exit 0 over dropped or
impossible rows, or "reproduced exactly" of a record of another data set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mutualbench.cli import main

STORED = Path(__file__).resolve().parents[1] / "results" / "seed_blog" / "smoke"
STUDENT_0 = "individual-81a1496af283"  # the student at seed 0: 3 epochs (9, 9, 19%), final 19%
HINT_DML_0 = "hint_mutual-907103072aff"  # hint+DML at seed 0: members student1, student2 and their ensemble


def one_line_error(err: str) -> str:
    """The single ``error: ...`` line of stderr (warnings and log lines may come before it)."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err
    return errors[0]


@pytest.fixture
def study(tmp_path):
    """A copy of the stored smoke study (records and manifest; no plots)."""
    out = tmp_path / "study"
    shutil.copytree(STORED, out, ignore=shutil.ignore_patterns("*.png", "*.pt"))
    return out


def edit_record(folder: Path, rid: str, edit) -> Path:
    path = folder / "runs" / f"{rid}.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    return path


def edit_manifest(folder: Path, edit) -> Path:
    path = folder / "study.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return path


def args(command: str, folder: Path) -> list[str]:
    if command == "compare":
        return ["compare", str(folder), "--against", str(STORED)]
    return [command, str(folder)]


def refused(capsys, command: str, folder: Path, path: Path, *parts: str) -> str:
    """``command`` on ``folder`` exits 2 with one error line naming ``path`` and ``parts``."""
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert main(args(command, folder)) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {path}: "), line
    for part in parts:
        assert part in line, (part, line)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # nothing written
    return line


READERS = ["table", "claims", "compare"]  # the commands that read records (status reports a bad one as failed)
MANIFEST_READERS = READERS + ["status"]


# ----------------------------------------------------------------------------- impossible stored data


@pytest.mark.parametrize("command", READERS)
def test_a_complete_record_without_models_is_refused(study, capsys, command):
    """``models = {}`` used to drop the arm's seed silently (n = 1 where two seeds ran)."""
    path = edit_record(study, STUDENT_0, lambda r: r.update(models={}))
    refused(capsys, command, study, path, "impossible run record (models = {}: a complete run records at least one model")


@pytest.mark.parametrize("field, value, message", [
    ("arm", None, "runs[7].arm is null, not a string"),
    ("seed", "zero", 'runs[7].seed = "zero" is a string, not an integer >= 0'),
    ("seed", -1, "runs[7].seed = -1 is below 0"),
    ("seed", True, "runs[7].seed = true is a boolean, not an integer >= 0"),
])
@pytest.mark.parametrize("command", MANIFEST_READERS)
def test_a_manifest_entry_without_an_arm_or_seed_is_refused(study, capsys, command, field, value, message):
    """An entry whose arm is null or seed is not a seed used to be dropped from the tables
    (teacher vs student on n = 1: +7.00 where both seeds give +3.00), or crash ``status``."""
    def edit(m):
        assert (m["runs"][7]["arm"], m["runs"][7]["seed"]) == ("student", 1)
        m["runs"][7][field] = value

    path = edit_manifest(study, edit)
    line = refused(capsys, command, study, path, f"malformed study manifest ({message}")
    assert line.endswith(f"restore it from version control (git checkout -- {path}), or move the folder aside and "
                         "rerun `mutualbench replicate`")


def _longer(record):
    """8 epochs at 99% in a 3-epoch run whose final accuracy is 19% (its last-5 mean would be 99)."""
    record["curves"] = [dict(record["curves"][0], epoch=e, stage_epoch=e, test_acc={"model": 99.0})
                        for e in range(1, 9)]


def _longer_with_stages(record):
    _longer(record)
    record["stages"][0]["epochs"] = 8


def _last_point(record):
    record["curves"][-1]["test_acc"]["model"] = 99.0


def _renumbered(record):
    record["curves"][1]["epoch"] = 7


def _another_model(record):
    record["curves"][0]["test_acc"]["student9"] = 50.0


def _missing_model(record):
    del record["curves"][1]["test_acc"]["model"]


@pytest.mark.parametrize("edit, message", [
    (_longer, "curves has 8 epochs, but the run's stages (train 3) have 3"),
    (_longer_with_stages, "models.model.final_test_acc = 19.0, but its last epoch says curves[7].test_acc.model = 99.0"),
    (_last_point, "models.model.final_test_acc = 19.0, but its last epoch says curves[2].test_acc.model = 99.0"),
    (_renumbered, "curves[1].epoch = 7, but it is the run's epoch 2"),
    (_another_model, "curves[0].test_acc.student9 is not one of the run's models (model)"),
    (_missing_model, "models.model has a test accuracy at 2 of the run's 3 epochs (none at curves[1])"),
])
@pytest.mark.parametrize("command", READERS)
def test_curves_that_are_not_the_runs_epochs_are_refused(study, capsys, command, edit, message):
    path = edit_record(study, STUDENT_0, edit)
    refused(capsys, command, study, path, f"impossible run record ({message})")


@pytest.mark.parametrize("command", READERS)
def test_a_record_of_another_data_set_is_refused(study, capsys, command):
    """compare used to say "reproduced exactly" of it: the data set is no part of a run's numbers
    it compares."""
    def other(record):
        record["data"].update(name="cifar100", sha256="ab" * 32)

    path = edit_record(study, STUDENT_0, other)
    refused(capsys, command, study, path, 'impossible run record (data.sha256 = "abababab',
            "is not the study's data set (cifar10-jpeg75, sha256 c39db14690feee23...)")


@pytest.mark.parametrize("command", ["table", "claims"])
def test_contrast_weights_that_do_not_sum_to_zero_are_refused(study, capsys, command):
    """1e-10 - 2e-10 is not 0: the sum is checked relative to the largest weight, not within an
    absolute 1e-9 (the spec file itself is checked the same way by ``spec.load_spec``)."""
    contrasts = json.loads((study / "study.json").read_text())["spec"]["contrasts"]
    path = edit_manifest(study, lambda m: m["spec"]["contrasts"].append(
        {"name": "tiny", "weights": {"student": 1e-10, "dml": -2e-10}}))
    refused(capsys, command, study, path,
            f"malformed study manifest (spec.contrasts[{len(contrasts)}].weights sum to -1e-10, not 0")


# ----------------------------------------------------------------------------- tampered, not a traceback


def _set(*keys, value):
    def edit(doc):
        node = doc
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit


@pytest.mark.parametrize("rid, edit, message", [
    (STUDENT_0, _set("curves", 1, "test_acc", "model", value="abc"),
     'malformed run record (curves[1].test_acc.model = "abc" is a string, not an accuracy in percent'),
    (STUDENT_0, _set("curves", value=[1, 2, 3]), "malformed run record (curves[0] = 1 is an integer, not an object)"),
    (STUDENT_0, _set("curves", 0, "stage", value=None), "malformed run record (curves[0].stage is null, not a string)"),
    (HINT_DML_0, _set("ensemble", "members", value=["student1", "student3"]),
     'impossible run record (ensemble.members[1] = "student3" is not one of the run\'s models (student1, student2))'),
    (STUDENT_0, _set("env", "cpu", value="AMD EPYC"), 'malformed run record (env.cpu = "AMD EPYC" is a string, not an object)'),
    (STUDENT_0, _set("error", value=5), "malformed run record (error = 5 is an integer, not a string or null)"),
])
@pytest.mark.parametrize("command", READERS)
def test_a_tampered_record_is_one_line_naming_the_key(study, capsys, command, rid, edit, message):
    path = edit_record(study, rid, edit)
    refused(capsys, command, study, path, message, "restore that file (e.g. from version control)")


@pytest.mark.parametrize("edit, message", [
    (_set("spec", value="seed_blog"), 'spec = "seed_blog" is a string, not an object'),
    (lambda m: m["spec"].pop("study"), "spec.study is missing"),
    (_set("spec", "study", value={"seeds": 2}), "spec.study.name is missing"),
    (_set("spec", "profiles", "smoke", "tolerance", value="0.5"), 'spec.profiles.smoke.tolerance = "0.5" is a string'),
    (_set("profile", value="huge"), 'profile = "huge" is not one of spec.profiles (cpu, full, smoke)'),
    (_set("runs", 0, value=7), "runs[0] = 7 is an integer, not an object"),
    (_set("runs", 0, "seed", value=9), "runs[0].seed = 9 is not one of the study's seeds [0, 1]"),
    (lambda m: m["runs"].append(dict(m["runs"][0], run_id="individual-000000000000")),
     "runs[44] repeats runs[0] (arm teacher, seed 0)"),
    (_set("data", "sha256", value=None), "data.sha256 is null, not a string"),
    (_set("spec", "claims", 0, "expect", value="up"), "spec: [[claims]] teacher_beats_student: expect = 'up' is not allowed"),
    (_set("asked", value={"seeds": [0], "ablations": "none"}), 'asked.ablations = "none" is a string, not a list'),
])
@pytest.mark.parametrize("command", MANIFEST_READERS)
def test_a_tampered_manifest_is_one_line_naming_the_key(study, capsys, command, edit, message):
    path = edit_manifest(study, edit)
    refused(capsys, command, study, path, f"malformed study manifest ({message}")


def test_every_stored_record_and_manifest_passes_the_schema():
    """The stored results are right: the checks refuse none of them (and each record agrees
    with the manifest that lists it)."""
    from mutualbench.analysis.results import load_manifest, load_records
    from mutualbench.storage.records import read_record

    results = Path(__file__).resolve().parents[1] / "results"
    manifests = sorted(results.rglob("study.json"))
    records = sorted(p for p in results.rglob("runs/*.json"))
    assert manifests and records
    for path in manifests:
        load_records(path.parent, load_manifest(path.parent))
    for path in records:
        read_record(path)


# ----------------------------------------------------------------------------- compare: what was asked


def test_compare_of_a_selected_arms_folder_compares_what_its_replicate_asked_for(tmp_path, capsys):
    """A folder made by ``replicate --arms student --seeds 1 --no-ablations``: its replicate said
    "reproduced exactly", and so does compare (it used to say 13 of 14 runs differ, exit 1),
    naming the arms and ablations it did not compare."""
    new = tmp_path / "new"
    shutil.copytree(STORED, new, ignore=shutil.ignore_patterns("*.png", "*.csv", "*.md"))

    def asked_student(m):
        m["runs"] = [e for e in m["runs"] if e["seed"] == 0 and e["ablation"] is None]
        m["seeds"] = [0]
        m["asked"] = {"seeds": [0], "ablations": [], "arms": ["student"]}

    edit_manifest(new, asked_student)
    for path in (new / "runs").glob("*.json"):
        if path.stem != STUDENT_0:
            path.unlink()
    assert main(["compare", str(new), "--against", str(STORED)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "reproduced exactly: 1 run (seed 0); seed 1 is on one side only, not compared",
        f"not compared: the arms teacher, student_dml_optimizer, dml, hint_dml, kd; the ablations augmentation, init "
        f"of {STORED} (the replicate that made {new} did not ask for them)",
    ]
    # a run of an arm it asked for that is missing still fails
    (new / "runs" / f"{STUDENT_0}.json").unlink()
    edit_manifest(new, lambda m: m["asked"].update(arms=["student", "teacher"]))
    (new / "runs" / "individual-7bbe711ff9e6.json").write_bytes(
        (STORED / "runs" / "individual-7bbe711ff9e6.json").read_bytes())  # the teacher at seed 0
    assert main(["compare", str(new), "--against", str(STORED)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("not reproduced exactly: 1 of 2 runs differ (seeds 0; seed 1 is on one side only")
    assert f"student seed 0 ({STUDENT_0}): no complete run of this id in {new}" in out


def _fake_study(folder: Path, arms: dict[str, list[float]], asked: dict | None = None) -> Path:
    """A float32 study folder: one complete one-model record per arm and seed."""
    (folder / "runs").mkdir(parents=True)
    runs = []
    for arm, accs in arms.items():
        for seed, acc in enumerate(accs):
            rid = f"individual-{arm}{seed:04d}"
            runs.append({"arm": arm, "seed": seed, "ablation": None, "value": None, "run_id": rid,
                         "method": "individual"})
            record = {"schema": 1, "run_id": rid, "status": "complete", "seed": seed, "data": {},
                      "curves": [{"epoch": 1, "stage": "train", "test_acc": {"model": acc}}],
                      "config": {"method": "individual", "seed": seed}, "timings": {"train_s": 1.0},
                      "env": {"device": "cpu"},
                      "models": {"model": {"role": "individual", "arch": "seed_vgg_student", "params": 1,
                                           "final_test_acc": acc, "best_test_acc_test_selected": acc}}}
            (folder / "runs" / f"{rid}.json").write_text(json.dumps(record))
    spec = {"study": {"name": "f"}, "arms": [{"name": "a"}, {"name": "b"}], "profiles": {"cpu": {"tolerance": 1.0}}}
    manifest = {"schema": 1, "spec": spec, "profile": "cpu", "seeds": [0, 1], "runs": runs,
                "data": {"name": "d", "sha256": "0" * 64}}
    if asked is not None:
        manifest["asked"] = asked
    (folder / "study.json").write_text(json.dumps(manifest))
    return folder


def test_statistical_compare_of_a_selected_arms_folder_names_what_it_did_not_compare(tmp_path, capsys):
    stored = _fake_study(tmp_path / "stored", {"a": [40.0, 42.0], "b": [50.0, 52.0]})
    new = _fake_study(tmp_path / "new", {"a": [40.5, 41.5]}, asked={"seeds": [0, 1], "ablations": [], "arms": ["a"]})
    assert main(["compare", str(new), "--against", str(stored)]) == 0
    out = capsys.readouterr().out
    assert "consistent: 1 of 1 arm/member rows consistent with the stored seeds" in out
    assert "not in this study" not in out  # not missing: not asked for
    assert out.splitlines()[-1] == (f"not compared: the arm b of {stored} (the replicate that made {new} did not "
                                    "ask for them)")


def test_replicate_of_selected_arms_records_them_in_the_manifest(tmp_path, tiny_cifar):
    """``asked.arms``: what ``compare`` of the folder reads (absent without --arms, as before)."""
    from mutualbench.studies.request import StudyRequest
    from mutualbench.studies.study import plan_study

    data, root = tiny_cifar
    spec = tmp_path / "s.toml"
    spec.write_text('[study]\nname = "s"\ndata = "tiny3"\nclasses = ["ant", "bee", "cow"]\nseeds = 1\n\n'
                    '[defaults]\n"data.batch_size" = 16\n"train.epochs" = 1\n\n'
                    '[[arms]]\nname = "a"\nmethod = "individual"\narch = "seed_vgg_student"\n\n'
                    '[[arms]]\nname = "b"\nmethod = "individual"\narch = "seed_vgg_student"\n'
                    'set = { "train.optimizer.lr" = 1e-4 }\n\n[profiles.smoke]\ntolerance = 0.5\n')
    for arms, asked in ((["b"], {"seeds": [0], "ablations": [], "arms": ["b"]}), (None, {"seeds": [0], "ablations": []})):
        request = StudyRequest(spec, "smoke", tmp_path / "out", data=str(data), data_root=root, device="cpu",
                               arms=arms)
        _, _, manifest, pending = plan_study(request)
        assert manifest["asked"] == asked and len(pending) == (1 if arms else 2)
