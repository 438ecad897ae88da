"""Faults through the command line: unusable output folders and full disks, damaged
checkpoints and records, leftover temporary files, concurrent writers, file modes.

Each test drives ``mutualbench.cli.main`` (or a second process) and checks the exit code,
the one-line message and what is left on disk."""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from conftest import run_config
from mutualbench.cli import main
from mutualbench.storage.records import read_record
from mutualbench.training.run import Runner

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0  # permissions are not enforced for root


def run_args(data, root, out, *extra, epochs=2):
    return ["run", "--method", "individual", "--epochs", str(epochs), "--data", str(data), "--data-root", str(root),
            "--out", str(out), "--device", "cpu", "--set", "data.batch_size=16", "--set", "loss.reduction=sum", *extra]


def run_id(data, root, **overrides):
    """The run id ``run_args`` trains (the data set comes from the tiny cache)."""
    cfg = run_config("individual", data, **overrides)
    return Runner(Path("unused"), data_root=root, device="cpu").prepare(cfg)[1]


def one_line_error(err: str) -> str:
    """The single ``error: ...`` line of stderr (warnings and log lines may come before it)."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err
    return errors[0]


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


def no_data_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data loaded before the output folder was checked")

    monkeypatch.setattr("mutualbench.training.run.load_dataset", refuse)


ONE_RUN_SPEC = """
[study]
name = "one"
data = "tiny3"
classes = ["ant", "bee", "cow"]
seeds = 1

[defaults]
"data.batch_size" = 16
"train.epochs" = 1

[[arms]]
name = "student"
method = "individual"
arch = "seed_vgg_student"

[profiles.smoke]
tolerance = 0.5
"""


@pytest.fixture
def one_spec(tmp_path):
    path = tmp_path / "one.toml"
    path.write_text(ONE_RUN_SPEC)
    return path


def replicate_args(spec, data, root, out, *extra):
    return ["replicate", str(spec), "--profile", "smoke", "--data", str(data), "--data-root", str(root),
            "--out", str(out), "--device", "cpu", "--against", str(out), *extra]


# ----------------------------------------------------------------------------- 1. output checked first


@pytest.mark.parametrize("command", ["run", "replicate"])
def test_out_that_is_a_file_fails_before_any_data_is_loaded(tmp_path, tiny_cifar, one_spec, capsys, monkeypatch, command):
    data, root = tiny_cifar
    out = tmp_path / "taken"
    out.write_text("someone's file\n")
    no_data_loading(monkeypatch)
    args = run_args(data, root, out) if command == "run" else replicate_args(one_spec, data, root, out)
    assert main(args) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: --out {out} is an existing file, not a folder")
    assert out.read_text() == "someone's file\n"


@pytest.mark.parametrize("command", ["run", "replicate"])
def test_out_under_a_file_fails_before_any_data_is_loaded(tmp_path, tiny_cifar, one_spec, capsys, monkeypatch, command):
    data, root = tiny_cifar
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker / "study"
    no_data_loading(monkeypatch)
    args = run_args(data, root, out) if command == "run" else replicate_args(one_spec, data, root, out)
    assert main(args) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: --out {out} cannot be created: {blocker} is a file, not a folder")
    assert blocker.read_text() == "x"


@pytest.mark.skipif(ROOT_USER, reason="root writes into read-only folders; the probe's failure is covered below")
@pytest.mark.parametrize("command", ["run", "replicate"])
def test_read_only_out_fails_before_any_data_is_loaded(tmp_path, tiny_cifar, one_spec, capsys, monkeypatch, command):
    data, root = tiny_cifar
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    no_data_loading(monkeypatch)
    try:
        args = run_args(data, root, out) if command == "run" else replicate_args(one_spec, data, root, out)
        assert main(args) == 2
    finally:
        out.chmod(0o755)
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: --out {out}: cannot write in {out} (Permission denied)")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "replicate"])
@pytest.mark.parametrize("fault", ["no free space", "probe write ENOSPC", "probe write EACCES"])
def test_full_or_unwritable_disk_fails_before_any_data_is_loaded(tmp_path, tiny_cifar, one_spec, capsys, monkeypatch,
                                                                  command, fault):
    """A (nearly) full disk, and a write that fails (also how a read-only folder shows for root)."""
    from mutualbench.storage import io_utils

    data, root = tiny_cifar
    out = tmp_path / "out"
    if fault == "no free space":
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(io_utils.shutil, "disk_usage", lambda path: usage(1 << 30, (1 << 30) - 4096, 4096))
    else:
        code = errno.ENOSPC if "ENOSPC" in fault else errno.EACCES

        def failing_write(fd, data):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(io_utils.os, "write", failing_write)
    no_data_loading(monkeypatch)
    args = run_args(data, root, out) if command == "run" else replicate_args(one_spec, data, root, out)
    assert main(args) == 2
    monkeypatch.undo()
    line = one_line_error(capsys.readouterr().err)
    if fault == "probe write EACCES":
        assert line.startswith(f"error: --out {out}: cannot write in {tmp_path} (Permission denied)")
    else:
        assert line.startswith(f"error: no space left on device for --out {out} (folder {tmp_path}")
    assert not out.exists() and not temporaries(tmp_path)


# ----------------------------------------------------------------------------- 1. full disk during a run


def fail_nth_torch_save(monkeypatch, n: int):
    """The n-th torch.save (1: the first checkpoint) writes part of the file, then finds the disk full."""
    from mutualbench.storage import io_utils

    real, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(io_utils.torch, "save", save)


def fail_record_fsync(monkeypatch):
    """fsync of a run record's temporary file finds the disk full (delayed allocation)."""
    from mutualbench.storage import io_utils

    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and ".json." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(io_utils.os, "fsync", fsync)


@pytest.mark.parametrize("what,epochs_done", [("checkpoint", 1), ("final", 2), ("record", 2)])
def test_disk_full_during_a_run_keeps_the_last_checkpoint(tmp_path, tiny_cifar, capsys, monkeypatch, what, epochs_done):
    if what == "record" and not Path("/proc/self/fd").exists():
        pytest.skip("needs /proc to tell the record's write apart")
    data, root = tiny_cifar
    out = tmp_path / "out"
    rid = run_id(data, root)
    if what == "record":
        fail_record_fsync(monkeypatch)
    else:
        fail_nth_torch_save(monkeypatch, 2 if what == "checkpoint" else 3)  # 2 checkpoints, then final.pt
    assert main(run_args(data, root, out, "--quiet")) == 2
    monkeypatch.undo()
    line = one_line_error(capsys.readouterr().err)
    target = {"checkpoint": out / rid / "checkpoint.pt", "final": out / rid / "final.pt",
              "record": out / f"{rid}.json"}[what]
    assert line.startswith(f"error: no space left on device writing {target} (folder {target.parent})")
    ckpt = torch.load(out / rid / "checkpoint.pt", weights_only=True)
    assert ckpt["global_epoch"] == epochs_done  # the last good checkpoint
    assert not temporaries(out) and not (out / f"{rid}.json").exists() and not (out / rid / ".lock").exists()
    assert (out / rid / "final.pt").exists() == (what == "record")
    # a rerun once there is space resumes from that checkpoint
    assert main(run_args(data, root, out, "--quiet")) == 0
    record = read_record(out / f"{rid}.json")
    assert record["status"] == "complete" and record["resumed_from_epoch"] == epochs_done
    assert not (out / rid / "checkpoint.pt").exists() and not temporaries(out)


# ----------------------------------------------------------------------------- 1. data root without a cache


def test_data_root_that_is_a_file_loads_without_a_cache(tmp_path, tiny_cifar, capsys):
    data, _ = tiny_cifar
    root = tmp_path / "root-file"
    root.write_text("not a folder")
    assert main(["data", str(data), "--data-root", str(root)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "Traceback" not in captured.err
    assert warnings[0].startswith(f"warning: cannot write the data cache {root}/cache/tiny-cifar-")
    assert "using tiny-cifar without a cache" in warnings[0]
    assert "cache      none" in captured.out and "train 90 / test 27" in captured.out
    assert root.read_text() == "not a folder"


def test_data_root_env_that_is_a_file_still_trains(tmp_path, tiny_cifar, capsys, monkeypatch):
    data, _ = tiny_cifar
    root = tmp_path / "root-file"
    root.write_text("")
    monkeypatch.setenv("MUTUALBENCH_DATA_ROOT", str(root))
    out = tmp_path / "out"
    args = ["run", "--method", "individual", "--epochs", "1", "--data", str(data), "--out", str(out), "--device", "cpu",
            "--set", "data.batch_size=16", "--quiet"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: cannot write the data cache {root}/cache/") and err.count("\n") == 1
    assert len(list(out.glob("individual-*.json"))) == 1


@pytest.mark.parametrize("fault", ["ENOSPC", "read-only"])
def test_data_root_that_cannot_take_the_cache(tmp_path, tiny_cifar, capsys, monkeypatch, fault):
    data, _ = tiny_cifar
    root = tmp_path / "root"
    root.mkdir()
    if fault == "ENOSPC":
        import numpy as np

        def savez(f, **arrays):
            f.write(b"PK partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(np, "savez", savez)
    else:
        if ROOT_USER:
            pytest.skip("root writes into read-only folders")
        root.chmod(0o555)
    try:
        assert main(["data", str(data), "--data-root", str(root)]) == 0
    finally:
        root.chmod(0o755)
    captured = capsys.readouterr()
    why = "no space left on device" if fault == "ENOSPC" else "Permission denied"
    assert captured.err.startswith(f"warning: cannot write the data cache {root}/cache/tiny-cifar-")
    assert f"({why})" in captured.err and captured.err.count("\n") == 1
    assert "cache      none" in captured.out
    assert not [p for p in root.rglob("*") if p.is_file()]  # no partial cache, no temporary file


# ----------------------------------------------------------------------------- 2. damaged checkpoints


def _bad_checkpoint(kind: str, rid: str) -> bytes:
    import io

    if kind == "empty":
        return b""
    if kind == "garbage":
        return b"\x00\x01 not a torch file"
    buf = io.BytesIO()
    torch.save({"format": 1, "run_id": rid, "stage_index": 0}, buf)  # the right run, fields missing
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["empty", "garbage", "malformed"])
def test_unusable_checkpoint_is_moved_aside_and_the_run_starts_over(tmp_path, tiny_cifar, capsys, kind):
    data, root = tiny_cifar
    out = tmp_path / "out"
    rid = run_id(data, root, **{"train.epochs": 1})
    ckpt = out / rid / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    bad = _bad_checkpoint(kind, rid)
    ckpt.write_bytes(bad)
    assert main(run_args(data, root, out, "--quiet", epochs=1)) == 0
    err = capsys.readouterr().err
    (aside,) = (out / rid).glob("checkpoint.pt.unreadable-*")
    assert aside.read_bytes() == bad  # kept as it was
    assert err.startswith(f"warning: checkpoint {ckpt} is unusable (") and err.count("\n") == 1
    assert f"moved it to {aside} and starting {rid} from the beginning" in err
    record = read_record(out / f"{rid}.json")
    assert record["status"] == "complete" and record["resumed_from_epoch"] == 0
    assert not ckpt.exists()


@pytest.mark.parametrize("content,message", [(b"", "is empty (0 bytes"), (b"\x80\x02garbage", "is unreadable (")])
def test_empty_or_unreadable_teacher_checkpoint_is_an_error(tmp_path, tiny_cifar, capsys, content, message):
    data, root = tiny_cifar
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(content)
    out = tmp_path / "out"
    code = main(["run", "--method", "kd", "--teacher", "seed_vgg_teacher", "--teacher-checkpoint", str(bad), "--data", str(data), "--data-root", str(root),
                 "--out", str(out), "--device", "cpu", "--quiet"])
    assert code == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: teacher checkpoint {bad} {message}")
    assert not out.exists() and bad.read_bytes() == content


# ----------------------------------------------------------------------------- 2. leftover temporary files


def test_leftover_temporaries_are_removed_and_only_those(tmp_path, tiny_cifar, capsys):
    data, root = tiny_cifar
    out = tmp_path / "out"
    rid = run_id(data, root, **{"train.epochs": 1})
    dead, busy = _dead_pid(), "individual-00000000beef"
    leftovers = [out / f".{rid}.json.mutualbench-{dead}-k3j_h5g6.tmp",
                 out / rid / f".checkpoint.pt.mutualbench-{dead}-abcdefgh.tmp"]
    kept = [out / "notes.tmp", out / ".keep.tmp", out / "my.json.abcdefgh.tmp", out / rid / "checkpoint.tmp",
            out / f".{rid}.json.k3j_h5g6.tmp", out / rid / ".final.pt.abcdefgh.tmp",  # not named as ours
            out / "other" / f".final.pt.mutualbench-{dead}-0a1b2c3d.tmp",  # not a run's work folder
            out / rid / f".final.pt.mutualbench-{os.getpid()}-0a1b2c3d.tmp",  # its process is alive
            out / busy / f".final.pt.mutualbench-{dead}-zzzzzzzz.tmp"]  # a live process holds busy/.lock
    for p in leftovers + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (out / busy / ".lock").write_text(json.dumps({"pid": sleeper.pid}))
        assert main(run_args(data, root, out, epochs=1)) == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    err = capsys.readouterr().err
    assert f"removed 2 temporary file(s) left by an interrupted write in {out}" in err
    assert not any(p.exists() for p in leftovers)
    assert all(p.read_bytes() == b"partial" for p in kept)


# ----------------------------------------------------------------------------- 2. damaged records

MANIFEST = {"schema": 1, "spec": {"study": {"name": "t"}, "profiles": {"smoke": {"tolerance": 0.5}}},
            "profile": "smoke", "seeds": [0], "data": {"source": "x", "name": "x", "sha256": "0" * 64},
            "runs": [{"arm": "student", "seed": 0, "ablation": None, "value": None, "run_id": "individual-000000000001",
                      "method": "individual"}]}


@pytest.mark.parametrize("content,message", [
    (b'{"run_id": "individual-\xff\xfe"}', "unreadable run record (not UTF-8 text: byte 0xff at offset 23)"),
    (b"[1, 2, 3]", "not a run record (a JSON list, not an object)"),
    (b'{"schema": 1, "status": "complete"}', "not a complete run record (missing fields run_id, config"),
    (b'{"schema": 1, "run_id": "r", "status": "complete", "config": {"method": "individual"}, "seed": 0, "data": {},'
     b' "models": {"model": 3}, "curves": [], "timings": {"train_s": 1}, "env": {"device": "cpu"}}',
     "malformed run record (wrong or missing models.model)"),
])
@pytest.mark.parametrize("command", ["table", "compare"])
def test_damaged_record_in_a_stored_study_is_an_error_naming_it(tmp_path, capsys, command, content, message):
    study = tmp_path / "stored"
    (study / "runs").mkdir(parents=True)
    (study / "study.json").write_text(json.dumps(MANIFEST))
    record = study / "runs" / "individual-000000000001.json"
    record.write_bytes(content)
    args = ["table", str(study)] if command == "table" else ["compare", str(study), "--against", str(study)]
    assert main(args) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {record}: {message}")
    assert record.read_bytes() == content and not (study / "table.md").exists()
    assert sorted(p.name for p in (study / "runs").iterdir()) == [record.name]


def test_damaged_manifest_is_an_error_naming_it(tmp_path, capsys):
    study = tmp_path / "stored"
    study.mkdir()
    (study / "study.json").write_bytes(b'{"runs": [], "spec": "\xff"}')
    assert main(["table", str(study)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {study / 'study.json'}: malformed study manifest (UnicodeDecodeError)")


def files_and_times(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


ONE_MANIFEST = {"schema": 1, "spec": {"study": {"name": "one"}, "profiles": {"smoke": {"tolerance": 0.5}}},
                "profile": "smoke", "seeds": [0], "data": {"name": "tiny-cifar", "sha256": "0" * 64},
                "runs": [{"arm": "student", "seed": 0, "ablation": None, "value": None,
                          "run_id": "individual-000000000001", "method": "individual"}]}


def _damaged_manifest(damage: str) -> bytes:
    if damage == "truncated":
        text = json.dumps(ONE_MANIFEST, indent=2)
        return text[:len(text) // 2].encode()
    manifest = json.loads(json.dumps(ONE_MANIFEST))
    if damage == "arm null":
        manifest["runs"][0]["arm"] = None
    else:
        del manifest[damage.removeprefix("no ")]
    return json.dumps(manifest).encode()


@pytest.mark.parametrize("spec_name,damage,problem", [
    ("one", "truncated", "not JSON: "),
    ("one", "no profile", "profile is missing"),
    ("one", "no seeds", "seeds is missing"),
    ("one", "arm null", "runs[0].arm is null, not a string"),
    ("other", "truncated", "not JSON: "),  # another study would take the folder
    ("other", "no profile", "profile is missing"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_damaged_manifest_beside_records_is_refused_not_replaced(tmp_path, tiny_cifar, one_spec, capsys, monkeypatch,
                                                                 spec_name, damage, problem, dry_run):
    """A study.json that is truncated or lacks a key, in a folder that holds run records, is
    not taken for no manifest (which ``replicate`` of this or another spec replaced, with the
    tables, exit 0): a one-line error names the repair, before any data is loaded, and
    nothing in the folder changes."""
    data, root = tiny_cifar
    out = tmp_path / "study"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "individual-000000000001.json").write_text('{"status": "complete"}')
    (out / "study.json").write_bytes(_damaged_manifest(damage))
    (out / "table.md").write_text("# one: profile `smoke`\n")
    before = files_and_times(out)
    spec = one_spec
    if spec_name == "other":
        spec = tmp_path / "other.toml"
        spec.write_text(ONE_RUN_SPEC.replace('name = "one"', 'name = "other"'))
    no_data_loading(monkeypatch)
    assert main(replicate_args(spec, data, root, out, *(["--dry-run"] if dry_run else []))) == 2
    line = one_line_error(capsys.readouterr().err)
    path = out / "study.json"
    assert line.startswith(f"error: {path}: damaged study manifest ({problem}"), line
    assert line.endswith(f"restore it from version control (git checkout -- {path}) or move the folder aside")
    assert files_and_times(out) == before


def test_a_replicate_that_trains_nothing_changes_no_file(tmp_path, tiny_cifar, one_spec, capsys):
    """``replicate --arms student`` of a complete study with fewer seeds, from another copy of
    the data and after the spec gained another profile, trains nothing and so changes no
    file: not the manifest (it rewrote its asked, data path, spec hash and time), not the
    tables or plots (their bytes and times). A manifest holds no local path of the data; one
    written before, that does, is read and kept. An edit of this profile is written."""
    data, root = tiny_cifar
    out = tmp_path / "study"
    assert main(replicate_args(one_spec, data, root, out, "--quiet", "--seeds", "2")) == 0
    text = (out / "study.json").read_text()
    manifest = json.loads(text)
    assert str(data.parent) not in text and str(root) not in text
    assert set(manifest["data"]) == {"name", "sha256", "spec_data"}
    manifest["data"]["source"] = "../shared/data/tiny.tar.gz"  # as manifests written before this held it
    (out / "study.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    before = files_and_times(out)
    assert {"study.json", "table.md", "table.csv", "runs.csv", "curves.png"} <= set(before)
    elsewhere = tmp_path / "elsewhere" / data.name
    elsewhere.parent.mkdir()
    shutil.copyfile(data, elsewhere)
    one_spec.write_text(ONE_RUN_SPEC + "\n[profiles.cpu]  # added since: a new spec hash, the same runs here\n"
                        "tolerance = 2.0\n")
    capsys.readouterr()
    assert main(replicate_args(one_spec, elsewhere, root, out, "--seeds", "1", "--arms", "student")) == 0
    assert "nothing to run" in capsys.readouterr().err
    assert files_and_times(out) == before
    # an edit of this profile's part of the spec is the study's to record, trained or not
    one_spec.write_text(ONE_RUN_SPEC.replace("tolerance = 0.5", "tolerance = 0.7"))
    assert main(replicate_args(one_spec, elsewhere, root, out, "--quiet", "--seeds", "1", "--arms", "student")) == 0
    manifest = json.loads((out / "study.json").read_text())
    assert manifest["spec"]["profiles"]["smoke"]["tolerance"] == 0.7 and "source" not in manifest["data"]
    assert manifest["seeds"] == [0, 1] and len(manifest["runs"]) == 2


def test_run_moves_its_own_damaged_record_aside_and_runs_again(tmp_path, tiny_cifar, capsys):
    data, root = tiny_cifar
    out = tmp_path / "out"
    rid = run_id(data, root, **{"train.epochs": 1})
    out.mkdir()
    damaged = b'{"run_id": "\xff'
    (out / f"{rid}.json").write_bytes(damaged)
    assert main(run_args(data, root, out, "--quiet", epochs=1)) == 0
    err = capsys.readouterr().err
    (aside,) = out.glob(f"{rid}.json.unreadable-*")
    assert err.startswith(f"warning: {out / f'{rid}.json'}: unreadable run record (not UTF-8")
    assert err.endswith(f"moved it to {aside} and running {rid} again\n") and err.count("\n") == 1
    assert aside.read_bytes() == damaged and read_record(out / f"{rid}.json")["status"] == "complete"


def test_replicate_moves_a_damaged_record_of_its_own_aside_and_reruns_it(tmp_path, tiny_cifar, one_spec, capsys):
    data, root = tiny_cifar
    out = tmp_path / "study"
    assert main(replicate_args(one_spec, data, root, out, "--quiet")) == 0
    (record,) = (out / "runs").glob("individual-*.json")
    record.write_text("[]")  # valid JSON, not a record
    capsys.readouterr()
    assert main(replicate_args(one_spec, data, root, out, "--quiet")) == 0
    err = capsys.readouterr().err
    (aside,) = (out / "runs").glob(f"{record.name}.unreadable-*")
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {record}: not a run record (a JSON list, not an object); moved it to {aside} "
                        f"and running {record.stem} again"]
    assert aside.read_text() == "[]" and read_record(record)["status"] == "complete"
    assert main(["table", str(out)]) == 0


# ----------------------------------------------------------------------------- 3. one writer per study folder

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mutualbench.storage.locks import LOCK, FolderLock
    with FolderLock(Path(sys.argv[1]) / LOCK, "busy"):
        print("locked", flush=True)
        time.sleep(120)
""")


def test_second_replicate_on_a_study_folder_in_use_refuses(tmp_path, tiny_cifar, one_spec, capsys, monkeypatch):
    data, root = tiny_cifar
    out = tmp_path / "study"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lock_text = (out / ".lock").read_text()
        no_data_loading(monkeypatch)
        assert main(replicate_args(one_spec, data, root, out, "--quiet")) == 2
        line = one_line_error(capsys.readouterr().err)
        assert line.startswith(f"error: study folder {out} is in use by another replicate: process {holder.pid} on ")
        assert f"holds the lock {out / '.lock'}" in line
        assert (out / ".lock").read_text() == lock_text and sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it now (PIDs are not reused that soon)


def test_stale_study_lock_is_reported_and_replaced(tmp_path, tiny_cifar, one_spec, capsys):
    import socket

    data, root = tiny_cifar
    out = tmp_path / "study"
    out.mkdir()
    pid = _dead_pid()
    (out / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    assert main(replicate_args(one_spec, data, root, out, "--quiet")) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: removed the stale lock {out / '.lock'} of process {pid} on ")
    assert "which is no longer running; taking it over" in err.splitlines()[0]
    assert not (out / ".lock").exists() and (out / "table.md").exists()


@pytest.mark.parametrize("how", ["error", "interrupt"])
def test_study_lock_is_removed_on_errors_and_interrupts(tmp_path, tiny_cifar, one_spec, capsys, monkeypatch, how):
    from mutualbench.core.errors import UserError
    from mutualbench.studies import study

    data, root = tiny_cifar
    out = tmp_path / "study"
    seen = {}

    def failing(request, **kwargs):
        seen["lock"] = json.loads((request.out / ".lock").read_text())
        raise UserError("something went wrong") if how == "error" else KeyboardInterrupt

    monkeypatch.setattr(study, "replicate", failing)
    assert main(replicate_args(one_spec, data, root, out)) == (2 if how == "error" else 130)
    err = capsys.readouterr().err
    assert err == ("error: something went wrong\n" if how == "error" else "interrupted\n")
    assert seen["lock"]["pid"] == os.getpid()
    assert not out.exists()  # the lock is gone, and so is the folder it had to create


def test_run_of_a_run_another_process_trains_refuses(tmp_path, tiny_cifar, capsys):
    data, root = tiny_cifar
    out = tmp_path / "study" / "runs"
    rid = run_id(data, root, **{"train.epochs": 1})
    (out / rid).mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        (out / rid / ".lock").write_text(json.dumps({"pid": sleeper.pid}))
        assert main(run_args(data, root, out, "--quiet", epochs=1)) == 2
    finally:
        sleeper.kill()
        sleeper.wait()
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: run {rid} in {out} is being trained by another process: process {sleeper.pid} on ")
    assert sorted(p.name for p in (out / rid).iterdir()) == [".lock"]  # no checkpoint, nothing shared
    assert not list(out.glob("*.json"))
    # once that process is gone, its lock is stale: replaced with a warning, and the run goes ahead
    assert main(run_args(data, root, out, "--quiet", epochs=1)) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: removed the stale lock {out / rid / '.lock'} of process {sleeper.pid}")
    assert read_record(out / f"{rid}.json")["status"] == "complete" and not (out / rid / ".lock").exists()


# ----------------------------------------------------------------------------- 4. file modes


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_outputs_get_the_folder_s_normal_permissions(tmp_path, tiny_cifar, one_spec, umask):
    data, root = tiny_cifar
    out = tmp_path / "study"
    old = os.umask(umask)
    try:
        assert main(replicate_args(one_spec, data, root, out, "--quiet")) == 0
    finally:
        os.umask(old)
    files = [out / "study.json", out / "table.md", out / "table.csv", *out.glob("runs/*.json"), *out.glob("runs/*/final.pt")]
    assert len(files) == 5
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


# ----------------------------------------------------------------------------- 7. bad options, found before any work


@pytest.mark.parametrize("args,message", [
    (["run", "--method", "mutual", "--cohort", "100000"], "error: config: cohort = 100000 is not allowed; it must be "
                                                          "an integer >= 1 and < 17"),
    (["replicate", "SPEC", "--shard", "abc"], "error: --shard 'abc' is not allowed; give I/N with 0 <= I < N"),
    (["replicate", "SPEC", "--shard", "0/0"], "error: --shard '0/0' is not allowed; give I/N with 0 <= I < N"),
    (["run", "--method", "individual", "--out", "OUT/" + "a" * 300], "error: --out: the name 'aaaa"),
    (["replicate", "SPEC", "--out", "OUT/" + "/".join(["b" * 200] * 20)], "error: --out: the path is "),
    (["run", "--method", "individual", "--data", "/tmp/" + "a" * 300 + ".tar.gz"], "error: --data: the name 'aaaa"),
    (["table", "/tmp/" + "a" * 300], "error: folder: the name 'aaaa"),
])
def test_impossible_options_are_one_line_before_any_work(tmp_path, one_spec, capsys, monkeypatch, args, message):
    no_data_loading(monkeypatch)
    args = [a.replace("SPEC", str(one_spec)).replace("OUT", str(tmp_path / "out")) for a in args]
    args += [] if "--data" in args else ["--data", "/nonexistent.tar.gz"] if args[0] != "table" else []
    args += [] if "--out" in args or args[0] == "table" else ["--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert one_line_error(capsys.readouterr().err).startswith(message)
    assert not (tmp_path / "out").exists()


def test_a_bad_slurm_poll_interval_is_an_error_before_any_job_is_submitted(tmp_path, one_spec, capsys, monkeypatch):
    monkeypatch.setenv("MUTUALBENCH_SLURM_POLL_S", "abc")
    monkeypatch.setattr("mutualbench.studies.slurm.check_available", lambda: pytest.fail("reached the cluster"))
    assert main(["replicate", str(one_spec), "--launcher", "slurm", "--wait", "--data", "/nonexistent.tar.gz",
                 "--out", str(tmp_path / "out")]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        "error: MUTUALBENCH_SLURM_POLL_S='abc' is not a number of seconds > 0; unset it (default 10) or set it to "
        "e.g. 30")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["table", "claims", "compare"])
def test_commands_read_and_print_utf8_under_the_c_locale(tmp_path, command):
    """Under LC_ALL=C without UTF-8 mode Python's default codec is ASCII: ``table`` read its own
    table.md with it, and ``claims`` and ``compare`` failed printing '−'."""
    study = tmp_path / "smoke"
    shutil.copytree(Path(__file__).parents[1] / "results" / "seed_blog" / "smoke", study)
    args = {"table": [str(study)], "claims": [str(study)], "compare": [str(study), "--against", str(study)]}[command]
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    done = subprocess.run([sys.executable, "-m", "mutualbench.cli", command, *args], env=env, capture_output=True)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode("utf-8", "replace")
    if command == "table":
        assert "±" in done.stdout.decode("utf-8")
