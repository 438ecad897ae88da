"""Nothing escapes its folder, nothing is silently repurposed or ignored, nothing "matches"
when it compared different things: each case is a one-line ``error:`` with exit 2 before any
work (or does what was asked), and leaves nothing written outside its folder."""

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import png_bytes, write_tar
from mutualbench.cli import main
from mutualbench.core.errors import UserError
from test_faults import (
    ONE_RUN_SPEC,
    _dead_pid,
    no_data_loading,
    one_line_error,
    replicate_args,
    run_args,
    run_id,
)


@pytest.fixture
def one_spec(tmp_path):
    path = tmp_path / "one.toml"
    path.write_text(ONE_RUN_SPEC)
    return path


def fake_study(folder: Path, *, name="s", profile="smoke", epochs=2, accs=(40.0, 42.0), arm="student",
               record_edit=None) -> Path:
    """A study folder with one arm and one fake complete record per seed (accuracies ``accs``);
    ``record_edit(record)`` may damage the first record."""
    (folder / "runs").mkdir(parents=True)
    runs = []
    for seed, acc in enumerate(accs):
        rid = f"individual-{name}{profile}{epochs}{seed:04d}"
        runs.append({"arm": arm, "seed": seed, "ablation": None, "value": None, "run_id": rid, "method": "individual"})
        record = {"schema": 1, "run_id": rid, "status": "complete", "seed": seed, "curves": [], "data": {},
                  "config": {"method": "individual", "seed": seed, "train": {"epochs": epochs},
                             "data": {"source": f"/copy/{seed}", "batch_size": 16}},
                  "timings": {"train_s": 1.0}, "env": {"device": "cpu"},
                  "models": {"model": {"role": "individual", "arch": "seed_vgg_student", "params": 1,
                                       "final_test_acc": acc, "best_test_acc_test_selected": acc}}}
        if record_edit is not None and seed == 0:
            record_edit(record)
        (folder / "runs" / f"{rid}.json").write_text(json.dumps(record))
    spec = {"study": {"name": name}, "arms": [{"name": arm}], "profiles": {profile: {"tolerance": 0.5}}}
    manifest = {"schema": 1, "spec": spec, "profile": profile, "seeds": list(range(len(accs))), "runs": runs,
                "data": {"name": "d", "sha256": "0" * 64, "source": "d"}}
    (folder / "study.json").write_text(json.dumps(manifest))
    return folder


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- 1. nothing escapes


def test_a_stored_study_whose_names_would_escape_is_refused(tmp_path, capsys):
    study = fake_study(tmp_path / "deep" / "study", arm="../../../rel_escaped")
    before = files_under(tmp_path)
    assert main(["table", str(study)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {study / 'study.json'}: runs[0].arm = '../../../rel_escaped' cannot name a file "
                           "(it has '/')")
    assert files_under(tmp_path) == before


def test_every_plot_resolves_inside_its_folder(tmp_path):
    from mutualbench.storage.io_utils import safe_child

    assert safe_child(tmp_path, "curves_dml.png") == tmp_path / "curves_dml.png"
    for name in ("curves_../../x.png", "../x", "a/b.png", ".."):
        with pytest.raises(UserError, match="would be written outside"):
            safe_child(tmp_path, name)
    (tmp_path / "elsewhere.png").symlink_to(tmp_path.parent / "outside.png")  # a link out of the folder
    with pytest.raises(UserError, match="would be written outside"):
        safe_child(tmp_path, "elsewhere.png")


RID = "individual-0123456789ab"
TARGETS = {"record": f"runs/{RID}.json", "checkpoint": f"runs/{RID}/checkpoint.pt", "lock": f"runs/{RID}/.lock",
           "moved aside": f"runs/{RID}/checkpoint.pt"}


def _write(kind: str, study: Path) -> None:
    """The write of ``kind`` a run of the study in ``study`` makes (``TARGETS``), confined to ``study``."""
    from mutualbench.storage.io_utils import atomic_torch_save, move_aside
    from mutualbench.storage.locks import LOCK, FolderLock
    from mutualbench.storage.records import write_record

    runs = study / "runs"
    if kind == "record":
        write_record(runs, {"run_id": RID}, root=study)
    elif kind == "checkpoint":
        atomic_torch_save(runs / RID / "checkpoint.pt", {"w": torch.zeros(2)}, root=study)
    elif kind == "lock":
        FolderLock(runs / RID / LOCK, "busy", root=study).acquire().release()
    else:
        move_aside(runs / RID / "checkpoint.pt", root=study)


@pytest.mark.parametrize("kind,where", [(kind, where) for kind in TARGETS for where in ("runs folder", "run folder", "file")
                                        if not (kind == "record" and where == "run folder")])
def test_no_write_follows_a_link_out_of_the_study_folder(tmp_path, kind, where):
    study, outside = tmp_path / "study", tmp_path / "outside"
    (outside / RID).mkdir(parents=True)
    (outside / RID / "checkpoint.pt").write_bytes(b"theirs")
    study.mkdir()
    if where == "runs folder":
        planted = study / "runs"
        planted.symlink_to(outside, target_is_directory=True)
    elif where == "run folder":
        (study / "runs").mkdir()
        planted = study / "runs" / RID
        planted.symlink_to(outside / RID, target_is_directory=True)
    else:
        (study / "runs" / RID).mkdir(parents=True)
        planted = study / TARGETS[kind]
        planted.symlink_to(outside / RID / "checkpoint.pt")
    before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=re.escape(f"{planted} is a symbolic link (to {os.readlink(planted)})")) as e:
        _write(kind, study)
    assert str(e.value).endswith(f"nothing is written through a link in {study}: remove the link and run again")
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in outside.rglob("*")) == ["checkpoint.pt", RID] and planted.is_symlink()


def _planned_run_id(spec: Path, data: Path, root: Path, out: Path) -> str:
    """The run id of the one run of ``spec`` (planning writes nothing)."""
    from mutualbench.studies.request import StudyRequest
    from mutualbench.studies.study import plan_study

    request = StudyRequest(spec, "smoke", out, data=str(data), data_root=root, device="cpu")
    _, _, manifest, _ = plan_study(request, log=lambda m: None)
    (entry,) = manifest["runs"]
    return entry["run_id"]


@pytest.mark.parametrize("where", ["run folder", "runs folder"])
def test_replicate_refuses_a_symlink_planted_in_the_study_folder(tmp_path, tiny_cifar, one_spec, capsys, where):
    data, root = tiny_cifar
    out, outside = tmp_path / "study", tmp_path / "outside"
    outside.mkdir()
    rid = _planned_run_id(one_spec, data, root, out)
    if where == "run folder":  # runs/<run id>/ replaced by a link out of the study
        (out / "runs").mkdir(parents=True)
        planted, on_the_way = out / "runs" / rid, out / "runs" / rid / ".lock"
    else:
        out.mkdir()
        planted, on_the_way = out / "runs", out / "runs" / f"{rid}.json"
    planted.symlink_to(outside, target_is_directory=True)
    assert main(replicate_args(one_spec, data, root, out, "--quiet")) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line == (f"error: {planted} is a symbolic link (to {outside}), on the way to {on_the_way}; nothing is "
                    f"written through a link in {out}: remove the link and run again")
    assert not list(outside.iterdir())  # no final.pt, checkpoint, lock or record where the link points
    assert sorted(os.listdir(out)) == ["runs"] and planted.is_symlink()  # no manifest, no lock left


def test_run_refuses_a_symlinked_checkpoint_and_leaves_its_target_alone(tmp_path, tiny_cifar, capsys):
    data, root = tiny_cifar
    out = tmp_path / "out"
    rid = run_id(data, root, **{"train.epochs": 1})
    (out / rid).mkdir(parents=True)
    victim = tmp_path / "elsewhere" / "precious.pt"
    victim.parent.mkdir()
    victim.write_bytes(b"not a checkpoint")
    ckpt = out / rid / "checkpoint.pt"
    ckpt.symlink_to(victim)
    assert main(run_args(data, root, out, "--quiet", epochs=1)) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line == (f"error: {ckpt} is a symbolic link (to {victim}); nothing is written through a link in {out}: "
                    "remove the link and run again")
    assert victim.read_bytes() == b"not a checkpoint" and os.listdir(victim.parent) == ["precious.pt"]
    assert ckpt.is_symlink() and os.listdir(out / rid) == ["checkpoint.pt"] and not (out / f"{rid}.json").exists()


def test_temporary_files_are_cleaned_only_when_ours_stale_and_in_our_folders(tmp_path, one_spec, capsys):
    out = tmp_path / "existing"  # --out at a folder that holds other programs' files too
    dead = _dead_pid()
    ours = [out / f".study.json.mutualbench-{dead}-0a1b2c3d.tmp",
            out / "runs" / f".{RID}.json.mutualbench-{dead}-k3j_h5g6.tmp",
            out / "runs" / RID / f".checkpoint.pt.mutualbench-{dead}-abcdefgh.tmp"]
    others = [out / ".x.abcd1234.tmp", out / "notes" / ".x.abcd1234.tmp", out / "runs" / ".x.abcd1234.tmp",
              out / "runs" / RID / ".final.pt.abcdefgh.tmp",
              out / "notes" / f".draft.mutualbench-{dead}-abcdefgh.tmp",  # named as ours, not in a folder of ours
              out / "runs" / RID / f".final.pt.mutualbench-{os.getpid()}-abcdefgh.tmp"]  # its writer is alive
    for p in ours + others:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    missing = tmp_path / "missing.tar.gz"  # the run then fails at its data
    assert main(replicate_args(one_spec, missing, tmp_path / "root", out)) == 2
    err = capsys.readouterr().err
    line = one_line_error(err)
    assert str(missing) in line and "not found" in line
    assert f"removed 1 temporary file(s) left by an interrupted write in {out}: {ours[0].name}" in err
    assert f"removed 2 temporary file(s) left by an interrupted write in {out / 'runs'}" in err
    assert not any(p.exists() for p in ours)
    assert all(p.read_bytes() == b"partial" for p in others)


# ----------------------------------------------------------------------------- 2. a folder is one study's


@pytest.mark.parametrize("other,message", [
    ({"name": "another"}, "holds the study another/smoke (from other.toml), not one/smoke"),
    ({"profile": "cpu"}, "holds the study one/cpu (from other.toml), not one/smoke"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_replicate_into_another_study_s_folder_is_refused(tmp_path, tiny_cifar, one_spec, capsys, monkeypatch,
                                                          other, message, dry_run):
    data, root = tiny_cifar
    out = tmp_path / "study"
    out.mkdir()
    manifest = {"spec": {"study": {"name": other.get("name", "one")}}, "profile": other.get("profile", "smoke"),
                "spec_path": "other.toml", "runs": []}
    (out / "study.json").write_text(json.dumps(manifest))
    no_data_loading(monkeypatch)
    assert main(replicate_args(one_spec, data, root, out, *(["--dry-run"] if dry_run else []))) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {out} {message} (from {one_spec}): a study folder belongs to one study and "
                           "profile; give one/smoke another --out")
    assert json.loads((out / "study.json").read_text()) == manifest and sorted(os.listdir(out)) == ["study.json"]


# ----------------------------------------------------------------------------- 3. compare compares like with like


@pytest.mark.parametrize("stored_kwargs,message", [
    ({"name": "other"}, "is the study 's' and {stored} is 'other': they are different studies and cannot be compared"),
    ({"profile": "cpu"}, "is profile 'smoke' of s and {stored} is profile 'cpu': different profiles cannot be compared"),
    ({"epochs": 3}, "student: train.epochs = 2 here but 3 in {stored}: the runs were made with a different config"),
])
def test_compare_refuses_another_study_profile_or_config(tmp_path, capsys, stored_kwargs, message):
    from mutualbench.analysis.report import report_study

    new = fake_study(tmp_path / "new")
    stored = fake_study(tmp_path / "stored", **stored_kwargs)
    assert main(["compare", str(new), "--against", str(stored)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {new} " if "study" in message or "profile" in message else f"error: {new}: ")
    assert message.format(stored=stored) in line
    with pytest.raises(UserError, match="cannot be compared"):  # the comparison replicate ends with
        report_study(new, stored)


def test_a_later_key_at_its_default_is_the_same_config_as_its_absence(tmp_path, capsys):
    """Records made before ``speed.dtype`` existed ran in float32: a study that records it at
    float32 compares with them (it was refused: "speed.dtype = 'float32' here but '(absent)'"),
    one in bfloat16 does not."""
    def dtype(value):
        return lambda record: record["config"].update(speed={"dtype": value})

    old = fake_study(tmp_path / "old")
    assert main(["compare", str(fake_study(tmp_path / "fp32", record_edit=dtype("float32"))), "--against",
                 str(old)]) == 0
    assert "consistent" in capsys.readouterr().out
    assert main(["compare", str(fake_study(tmp_path / "bf16", record_edit=dtype("bfloat16"))), "--against",
                 str(old)]) == 2
    assert "speed.dtype = 'bfloat16' here but '(absent)'" in one_line_error(capsys.readouterr().err)


def test_compare_of_the_same_study_on_another_data_copy_still_compares(tmp_path, capsys):
    new, stored = fake_study(tmp_path / "new"), fake_study(tmp_path / "stored", accs=(41.0, 43.0))
    assert main(["compare", str(new), "--against", str(stored)]) == 0  # data.source and seed may differ
    assert "consistent: 1 of 1 arm/member rows consistent" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 4. every value is used or an error


def test_against_a_missing_folder_is_an_error_before_any_work(tmp_path, tiny_cifar, one_spec, capsys, monkeypatch):
    data, root = tiny_cifar
    out = tmp_path / "study"
    no_data_loading(monkeypatch)
    args = replicate_args(one_spec, data, root, out)
    args[args.index("--against") + 1] = str(tmp_path / "nowhere")
    assert main(args) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: --against {tmp_path / 'nowhere'} does not exist; give a study folder written by")
    assert not out.exists()


@pytest.mark.parametrize("method,flags,message", [
    ("individual", ["--teacher", "seed_vgg_teacher"], "--teacher: method 'individual' learns from no teacher"),
    ("mutual", ["--teacher-checkpoint", "t.pt"], "--teacher-checkpoint: method 'mutual' learns from no teacher"),
    ("individual", ["--teacher", "seed_vgg_teacher", "--teacher-checkpoint", "t.pt"],
     "--teacher and --teacher-checkpoint: method 'individual' learns from no teacher, so they would be ignored"),
])
def test_teacher_flags_on_a_method_without_a_teacher_are_errors(tmp_path, capsys, monkeypatch, method, flags, message):
    no_data_loading(monkeypatch)
    out = tmp_path / "out"
    assert main(["run", "--method", method, *flags, "--data", "x", "--out", str(out)]) == 2
    assert one_line_error(capsys.readouterr().err).startswith(f"error: {message}")
    assert not out.exists()


def test_teacher_flag_with_hint_pretraining_is_used(tmp_path, capsys, monkeypatch):
    no_data_loading(monkeypatch)  # gets past the flags' check: the data is the first thing it needs
    with pytest.raises(AssertionError, match="data loaded before"):
        main(["run", "--method", "individual", "--teacher", "seed_vgg_teacher", "--set", "pretrain=hints",
              "--data", "x", "--out", str(tmp_path / "out")])


def test_dry_run_into_a_file_is_an_error(tmp_path, tiny_cifar, one_spec, capsys):
    data, root = tiny_cifar
    out = tmp_path / "a-file"
    out.write_text("mine\n")
    assert main(replicate_args(one_spec, data, root, out, "--dry-run")) == 2
    assert one_line_error(capsys.readouterr().err).startswith(f"error: --out {out} is an existing file, not a folder")
    assert out.read_text() == "mine\n"


# ----------------------------------------------------------------------------- 5. bounds


@pytest.mark.parametrize("extra,message", [
    (["--seeds", "100000", "--dry-run"], "--seeds 100000 is not allowed; give a positive number of seeds, at most 100"),
    (["--seeds", "0"], "--seeds 0 is not allowed"),
    (["--time-budget", "nan"], "--time-budget must be a positive number of seconds, not nan"),
    (["--time-budget", "-5"], "--time-budget must be a positive number of seconds, not -5"),
    (["--time-min", "0"], "--time-min 0 is not allowed; give the SLURM time limit per job in whole minutes, at least 1"),
])
def test_counts_and_limits_are_bounded(tmp_path, tiny_cifar, one_spec, capsys, monkeypatch, extra, message):
    data, root = tiny_cifar
    out = tmp_path / "study"
    no_data_loading(monkeypatch)
    assert main(replicate_args(one_spec, data, root, out, *extra)) == 2
    assert one_line_error(capsys.readouterr().err).startswith(f"error: {message}")
    assert not out.exists()


def test_an_empty_data_source_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "", "--data-root", str(tmp_path / "root")]) == 2
    assert one_line_error(capsys.readouterr().err).startswith("error: data source '' is empty: give cifar10")


@pytest.mark.parametrize("kind", ["fifo", "device link"])
def test_data_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    source = tmp_path / "data.tar.gz"
    if kind == "fifo":
        os.mkfifo(source)
    else:
        source.symlink_to("/dev/zero")
    proc = subprocess.run([sys.executable, "-m", "mutualbench.cli", "data", str(source), "--data-root",
                           str(tmp_path / "root")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert one_line_error(proc.stderr).startswith(f"error: {source}: not a regular file or a folder (a device, FIFO")


# ----------------------------------------------------------------------------- 6. records that cannot be true


def _set(path, value):
    def edit(record):
        node = record
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit,message", [
    (_set(("models", "model", "final_test_acc"), "high"), "models.model.final_test_acc = \"high\" is not a number"),
    (_set(("models", "model", "final_test_acc"), float("nan")), "models.model.final_test_acc = NaN is not a number"),
    (_set(("models", "model", "final_test_acc"), 140.0), "models.model.final_test_acc = 140.0 is not an accuracy"),
    (_set(("seed",), "0"), 'seed = "0" is not a seed (an integer >= 0)'),
    (_set(("models", "model", "best_test_acc_test_selected"), 30.0),
     "models.model.final_test_acc = 40.0 is above the run's best epoch, models.model.best_test_acc_test_selected = 30.0"),
    (_set(("run_id",), "individual-000000000999"), "run_id = 'individual-000000000999' is not the run its file name says"),
])
@pytest.mark.parametrize("command", ["table", "compare"])
def test_a_record_that_cannot_be_true_names_the_file_and_field(tmp_path, capsys, edit, message, command):
    study = fake_study(tmp_path / "study", record_edit=edit)
    (record,) = [p for p in (study / "runs").glob("*.json") if p.stem.endswith("0000")]
    args = ["table", str(study)] if command == "table" else ["compare", str(study), "--against", str(study)]
    assert main(args) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {record}: impossible run record ({message}")
    assert not (study / "table.md").exists()


def test_replicate_reruns_its_own_impossible_record_naming_the_field(tmp_path, tiny_cifar, one_spec, capsys):
    data, root = tiny_cifar
    out = tmp_path / "study"
    assert main(replicate_args(one_spec, data, root, out, "--quiet")) == 0
    (record,) = (out / "runs").glob("individual-*.json")
    rec = json.loads(record.read_text())
    rec["models"]["model"]["final_test_acc"] = "high"
    record.write_text(json.dumps(rec))
    capsys.readouterr()
    assert main(replicate_args(one_spec, data, root, out, "--quiet")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"warning: {record}: impossible run record (models.model.final_test_acc = \"high\" is not a number)")
    assert isinstance(json.loads(record.read_text())["models"]["model"]["final_test_acc"], float)


def test_a_subset_larger_than_the_data_set_is_an_error_before_training(tmp_path, tiny_cifar, capsys):
    data, root = tiny_cifar
    spec = tmp_path / "big.toml"
    spec.write_text(ONE_RUN_SPEC.replace('"train.epochs" = 1', '"train.epochs" = 1\n"data.train_subset" = 500'))
    out = tmp_path / "study"
    assert main(replicate_args(spec, data, root, out)) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {data}: data.train_subset = 500 is more than the 90 train images of tiny-cifar; "
                           "give data.train_subset at most 90")
    assert not list(out.rglob("*.json"))


@pytest.mark.parametrize("value", ["abc", "0", "-1"])
def test_an_unparsable_fault_hook_is_an_error(tmp_path, tiny_cifar, capsys, monkeypatch, value):
    data, root = tiny_cifar
    monkeypatch.setenv("MUTUALBENCH_FAULT_KILL_AFTER_EPOCHS", value)
    no_data_loading(monkeypatch)
    out = tmp_path / "out"
    assert main(["run", "--method", "individual", "--data", str(data), "--out", str(out)]) == 2
    assert one_line_error(capsys.readouterr().err).startswith(
        f"error: MUTUALBENCH_FAULT_KILL_AFTER_EPOCHS={value!r} is not a positive integer; unset it")
    assert not out.exists()


# ----------------------------------------------------------------------------- 7. archives and leftovers


def _tar_with(path: Path, members: dict[str, int]) -> Path:
    """A .tar.gz whose members are ``size`` zero bytes each (they compress to almost nothing)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return path


def _zip_with(path: Path, members: dict[str, int]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, size in members.items():
            zf.writestr(name, bytes(size))
    return path


@pytest.mark.parametrize("writer", [_tar_with, _zip_with])
def test_an_archive_bomb_is_refused_from_its_headers(tmp_path, capsys, monkeypatch, writer):
    """A member over the limit is refused before any member is read (reading one fails the test)."""
    from mutualbench.data import sources

    suffix = ".tar.gz" if writer is _tar_with else ".zip"
    bomb = writer(tmp_path / f"bomb{suffix}", {"train/a/0.png": 100, "train/a/1.png": sources.MAX_MEMBER_BYTES + 1})
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda *a: pytest.fail("a member was read"))
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a: pytest.fail("a member was read"))
    monkeypatch.setattr(sources, "MAX_TOTAL_BYTES", 10 ** 12)
    monkeypatch.setattr(sources, "_is_image", lambda parts: parts[-1].endswith("1.png"))  # the bomb is checked first
    assert main(["data", str(bomb), "--data-root", str(tmp_path / "root")]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {bomb}: member 'train/a/1.png' is {sources.MAX_MEMBER_BYTES + 1:,} bytes, over "
                           f"the limit of {sources.MAX_MEMBER_BYTES:,} for one image")


@pytest.mark.parametrize("writer", [_tar_with, _zip_with])
def test_an_archive_over_the_total_limit_is_refused(tmp_path, capsys, monkeypatch, writer):
    from mutualbench.data import sources

    monkeypatch.setattr(sources, "MAX_TOTAL_BYTES", 1000)  # a low limit keeps the test cheap
    suffix = ".tar.gz" if writer is _tar_with else ".zip"
    bomb = writer(tmp_path / f"many{suffix}", {f"train/a/{i}.png": 300 for i in range(4)})
    assert main(["data", str(bomb), "--data-root", str(tmp_path / "root")]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {bomb}: its members hold more than 1,000 bytes in all (the limit")


def test_the_limits_are_far_above_cifar():
    from mutualbench.data import sources

    bmp = 54 + 32 * 32 * 3  # an uncompressed 32x32 BMP, the largest way to store a CIFAR image
    assert sources.MAX_MEMBER_BYTES >= 300 * bmp and sources.MAX_TOTAL_BYTES >= 5 * 60_000 * bmp


KILLED_CACHE_WRITE = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    def savez(f, **arrays):
        f.write(b"PK partial cache")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    np.savez = savez
    from mutualbench.cli import main
    main(["data", sys.argv[1], "--data-root", sys.argv[2]])
""")


def test_a_killed_cache_write_leaves_a_temporary_the_next_load_removes(tmp_path, tiny_cifar, capsys):
    data, _ = tiny_cifar
    root = tmp_path / "root"
    proc = subprocess.run([sys.executable, "-c", KILLED_CACHE_WRITE, str(data), str(root)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9
    (leftover,) = (root / "cache").glob(".*.tmp")
    assert leftover.name.startswith(".tiny-cifar-") and ".npz." in leftover.name
    assert main(["data", str(data), "--data-root", str(root)]) == 0
    err = capsys.readouterr().err
    assert f"removed 1 temporary file(s) left by an interrupted write in {root / 'cache'}: {leftover.name}" in err
    assert not leftover.exists() and len(list((root / "cache").glob("tiny-cifar-*.npz"))) == 1
    assert not list((root / "cache").glob(".*.tmp")) and not (root / "cache" / ".lock").exists()


def test_a_symlinked_cache_folder_is_not_written_through(tmp_path, tiny_cifar, capsys):
    data, _ = tiny_cifar
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "cache").symlink_to(elsewhere, target_is_directory=True)
    assert main(["data", str(data), "--data-root", str(root)]) == 0  # used without a cache
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert line.startswith(f"warning: {root / 'cache'} is a symbolic link (to {elsewhere}), on the way to {root / 'cache'}")
    assert f"nothing is written through a link in {root}: remove the link and run again; until then " in line
    assert line.endswith("is used without a cache (decoded again next time)")
    assert not list(elsewhere.iterdir()) and (root / "cache").is_symlink()


# ----------------------------------------------------------------------------- 8. smaller


CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_a_64x64_archive_is_not_cifar10(tmp_path, capsys):
    rng = np.random.default_rng(0)
    files = {f"{split}/{c}/0.png": png_bytes(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
             for split in ("train", "test") for c in CIFAR10}
    archive = write_tar(tmp_path / "big.tar.gz", files)
    spec = tmp_path / "c.toml"
    spec.write_text(ONE_RUN_SPEC.replace('data = "tiny3"\nclasses = ["ant", "bee", "cow"]', 'data = "cifar10"'))
    assert main(replicate_args(spec, archive, tmp_path / "root", tmp_path / "study", "--dry-run")) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"--data {archive} is not a copy of cifar10" in line and "big's images are 64x64, cifar10's are 32x32" in line


def test_a_checkpoint_with_code_is_refused_without_torch_s_advice(tmp_path, tiny_cifar, capsys):
    data, root = tiny_cifar
    evil = tmp_path / "evil.pt"
    torch.save({"state": Path("/")}, evil)  # a pickle of an object that is not a tensor
    assert main(["run", "--method", "kd", "--teacher", "seed_vgg_teacher", "--teacher-checkpoint", str(evil),
                 "--data", str(data), "--data-root", str(root), "--out", str(tmp_path / "out")]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: teacher checkpoint {evil} is unreadable (it holds Python objects besides tensors")
    assert "weights_only=False" not in line and "`weights_only` set to `False`" not in line
    assert "refused since loading them could run code" in line


def test_a_damaged_stored_teacher_says_to_delete_it_and_retrain(tmp_path, tiny_cifar, capsys):
    data, root = tiny_cifar
    out = tmp_path / "out"
    args = ["run", "--method", "kd", "--teacher", "seed_vgg_teacher", "--epochs", "1", "--data", str(data),
            "--data-root", str(root), "--out", str(out), "--set", "data.batch_size=32", "--quiet"]
    assert main(args) == 0
    (teacher,) = [p for p in out.glob("individual-*/final.pt")]
    teacher.write_bytes(b"\x80\x02 not torch")
    assert main([*args, "--set", "kd.temperature=2"]) == 2  # a new student of the same teacher
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: teacher weights {teacher} is unreadable (")
    assert line.endswith(f"it is damaged: delete it and run the same command again, which trains the teacher "
                         f"(run {teacher.parent.name}) anew")


def test_a_symlinked_image_in_a_folder_tree_is_reported(tmp_path, capsys):
    from conftest import synthetic_files, write_tree

    tree = write_tree(tmp_path / "tree", synthetic_files())
    (tree / "train" / "cat" / "9999.png").symlink_to(tree / "test" / "cat" / "0000.png")
    assert main(["data", str(tree), "--data-root", str(tmp_path / "root")]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {tree}: train/cat/9999.png is a symbolic link; links in a data folder are not "
                           "followed")


def test_a_publish_that_gets_no_answer_stops_at_the_net_timeout_overall(tmp_path, monkeypatch):
    """wandb's init_timeout bounds only its wait for its backend: a start that hangs elsewhere
    (a login, retries) is still cut off at $MUTUALBENCH_NET_TIMEOUT in all."""
    import time

    from mutualbench.analysis.publish import publish
    from test_publish import _fake_wandb

    def hangs(settings, **kwargs):
        time.sleep(30)  # ignores its own timeout

    _fake_wandb(monkeypatch, hangs)  # MUTUALBENCH_NET_TIMEOUT=0.3
    study = fake_study(tmp_path / "study")
    before = files_under(study)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"could not start the W&B run 's-smoke' .*\(no answer within 0.3 s;"):
        publish(study)
    assert time.monotonic() - start < 15 and files_under(study) == before  # not 30 s
