import json
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import run_config
from mutualbench.archs import ARCHS, StagedModel
from mutualbench.archs.registry import register_arch
from mutualbench.cli import main
from mutualbench.core.errors import UserError
from mutualbench.storage.records import read_record
from mutualbench.training.engine import TrainingDiverged
from mutualbench.training.run import Runner

if "test_nan_net" not in ARCHS:

    class NaNHead(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.fc = nn.Linear(3, n)

        def forward(self, x):
            return self.fc(x.mean((2, 3))) * float("nan")

    @register_arch("test_nan_net", family="tests")
    def _nan_net(num_classes=10):
        return StagedModel("test_nan_net", [("body", nn.Identity())], NaNHead(num_classes), taps=())


def metrics(record):
    return ({n: (m["final_test_acc"], m["best_test_acc_test_selected"]) for n, m in record["models"].items()},
            [(e["epoch"], e["stage"], e["test_acc"], e["train_loss"]) for e in record["curves"]])


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mutualbench.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_same_seed_same_record_metrics(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    cfg = run_config("mutual", data, cohort=2)
    a = Runner(tmp_path / "a", data_root=root, device="cpu").run(cfg)
    b = Runner(tmp_path / "b", data_root=root, device="cpu").run(cfg)
    assert a["run_id"] == b["run_id"] and metrics(a) == metrics(b)
    other = Runner(tmp_path / "c", data_root=root, device="cpu").run(dict(cfg, seed=1))
    assert other["run_id"] != a["run_id"] and metrics(other) != metrics(a)


def test_record_contents(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    record = Runner(tmp_path, data_root=root, device="cpu").run(run_config("individual", data))
    on_disk = read_record(tmp_path / f"{record['run_id']}.json")
    assert on_disk["status"] == "complete" and on_disk["schema"] == 1
    assert on_disk["data"]["name"] == "tiny-cifar" and len(on_disk["data"]["sha256"]) == 64
    model = on_disk["models"]["model"]
    assert model["arch"] == "seed_vgg_student" and model["params"] == 1_497_434 - 7 * 257  # 3 classes, not 10
    assert model["final_test_acc"] == on_disk["curves"][-1]["test_acc"]["model"]
    assert {"best_test_acc_test_selected", "best_epoch_test_selected"} <= set(model)
    assert set(on_disk["env"]) >= {"torch", "device", "git_commit", "python"}
    assert on_disk["timings"]["train_s"] > 0 and len(on_disk["curves"]) == 2
    assert (tmp_path / record["run_id"] / "final.pt").exists()
    assert not (tmp_path / record["run_id"] / "checkpoint.pt").exists()


def test_rerun_reuses_complete_record(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    runner = Runner(tmp_path, data_root=root, device="cpu")
    first = runner.run(run_config("individual", data))
    mtime = (tmp_path / f"{first['run_id']}.json").stat().st_mtime_ns
    assert runner.run(run_config("individual", data)) == first
    assert (tmp_path / f"{first['run_id']}.json").stat().st_mtime_ns == mtime


def test_resume_after_kill_gives_the_uninterrupted_result(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    args = ["run", "--method", "hint_mutual", "--teacher", "seed_vgg_teacher", "--cohort", "2", "--seed", "3", "--data", str(data),
            "--data-root", str(root), "--epochs", "2", "--set", "data.batch_size=16", "--device", "cpu", "--quiet"]
    # The teacher (2 epochs) and the hint stage (2) come first: kill after mutual epoch 1.
    killed = cli(*args, "--out", str(tmp_path / "resumed"), env={"MUTUALBENCH_FAULT_KILL_AFTER_EPOCHS": "5"})
    assert killed.returncode == -9, killed.stderr
    leftovers = list((tmp_path / "resumed").glob("hint_mutual-*/checkpoint.pt"))
    assert leftovers and not list((tmp_path / "resumed").glob("hint_mutual-*.json"))
    assert cli(*args, "--out", str(tmp_path / "resumed")).returncode == 0
    assert cli(*args, "--out", str(tmp_path / "straight")).returncode == 0
    (resumed,) = [read_record(p) for p in (tmp_path / "resumed").glob("hint_mutual-*.json")]
    (straight,) = [read_record(p) for p in (tmp_path / "straight").glob("hint_mutual-*.json")]
    assert resumed["resumed_from_epoch"] == 3 and straight["resumed_from_epoch"] == 0
    assert metrics(resumed) == metrics(straight)
    w1 = torch.load(tmp_path / "resumed" / resumed["run_id"] / "final.pt", weights_only=True)["models"]
    w2 = torch.load(tmp_path / "straight" / straight["run_id"] / "final.pt", weights_only=True)["models"]
    assert all(torch.equal(w1[m][k], w2[m][k]) for m in w1 for k in w1[m])  # bit for bit


def test_nan_run_fails_cleanly_with_a_failed_record(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    cfg = run_config("individual", data, arch=["test_nan_net"])
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        Runner(tmp_path, data_root=root, device="cpu").run(cfg)
    (path,) = tmp_path.glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and "non-finite" in record["error"] and record["models"] == {}


def test_teacher_trained_once_then_reused(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    runner = Runner(tmp_path, data_root=root, device="cpu")
    kd = runner.run(run_config("kd", data))
    fit = runner.run(run_config("fitnets", data))
    assert kd["teacher"]["source"] == "trained" and fit["teacher"]["source"] == "reused"
    assert kd["teacher"]["run_id"] == fit["teacher"]["run_id"]
    teacher_record = read_record(tmp_path / f"{kd['teacher']['run_id']}.json")
    assert teacher_record["models"]["model"]["arch"] == "seed_vgg_teacher"
    assert len(list(tmp_path.glob("individual-*.json"))) == 1


def test_teacher_checkpoint_is_loaded(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    runner = Runner(tmp_path, data_root=root, device="cpu")
    teacher = runner.run(run_config("individual", data, arch=["seed_vgg_teacher"]))
    ckpt = tmp_path / teacher["run_id"] / "final.pt"
    record = Runner(tmp_path / "kd", data_root=root, device="cpu").run(
        run_config("kd", data, **{"teacher.checkpoint": str(ckpt)}))
    assert record["teacher"]["source"] == "checkpoint" and not list((tmp_path / "kd").glob("individual-*.json"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "mutal"], "unknown method 'mutal'. Did you mean mutual"),
        (["--method", "kd"], "method 'kd' learns from a teacher: name its architecture with --teacher ARCH"),
        (["--method", "individual", "--set", "pretrain=hints"], "method 'individual' learns from a teacher"),
        (["--method", "fitnets", "--teacher", "seed_vgg_teacher", "--set", "pretrain=hints"],
         "method 'fitnets' already starts with hint pretraining; remove pretrain = \"hints\""),
        (["--method", "individual", "--arch", "resnet20", "--teacher", "seed_vgg_teacher", "--set", "pretrain=hints"],
         "choose one with --set hint.student_tap"),
        (["--method", "individual", "--set", "pretrain=yes"], "pretrain = \"yes\" is not allowed; it must be one of none, hints"),
        (["--method", "individual", "--arch", "resnet21"], "unknown architecture 'resnet21'"),
        (["--method", "mutual", "--cohort", "1"], "needs a cohort of at least 2 students: add --cohort 2"),
        (["--method", "hint_mutual", "--teacher", "seed_vgg_teacher", "--cohort", "2", "--arch", "resnet20"], "choose one with --set hint.student_tap"),
        (["--method", "fitnets", "--teacher", "seed_vgg_teacher", "--arch", "resnet20", "--set", "hint.student_tap=H"], "has no feature tap 'H'"),
        (["--method", "kd", "--teacher", "seed_vgg_teacher", "--set", "kd.temprature=4"], "unknown config key 'kd.temprature'"),
        (["--method", "kd", "--teacher", "seed_vgg_teacher", "--set", "loss.reduction=avg"], "loss.reduction = \"avg\" is not allowed; it must be one of sum, mean"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_record(tmp_path, tiny_cifar, capsys, args, message):
    data, root = tiny_cifar
    code = main(["run", *args, "--data", str(data), "--data-root", str(root), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_unreadable_teacher_checkpoint(tmp_path, tiny_cifar, capsys):
    data, root = tiny_cifar
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"not a checkpoint")
    code = main(["run", "--method", "kd", "--teacher", "seed_vgg_teacher", "--teacher-checkpoint", str(bad), "--data", str(data),
                 "--data-root", str(root), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "teacher checkpoint" in err and "unreadable" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_checkpoint_with_code_is_refused(tmp_path, tiny_cifar, capsys):
    """weights_only=True: a pickle that would run code does not load."""
    data, root = tiny_cifar

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    code = main(["run", "--method", "kd", "--teacher", "seed_vgg_teacher", "--teacher-checkpoint", str(tmp_path / "evil.pt"), "--data", str(data),
                 "--data-root", str(root), "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2 and not (tmp_path / "pwned").exists()


def test_cohort_size_must_match_arch_list(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    with pytest.raises(UserError, match="lists 2 architectures but the cohort has 3"):
        Runner(tmp_path, data_root=root, device="cpu").run(run_config("mutual", data, cohort=3, arch=["resnet20", "resnet32"]))


def test_mixed_cohort_runs(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    record = Runner(tmp_path, data_root=root, device="cpu").run(
        run_config("mutual", data, cohort=2, arch=["resnet20", "wrn_16_1"], **{"train.epochs": 1}))
    assert [m["arch"] for m in record["models"].values()] == ["resnet20", "wrn_16_1"]


def test_teacher_with_missing_weights_is_retrained_identically(tmp_path, tiny_cifar):
    """Stored results keep records but not weights: a later KD run retrains the teacher,
    which on the CPU reproduces the stored record exactly."""
    data, root = tiny_cifar
    runner = Runner(tmp_path, data_root=root, device="cpu")
    first = runner.run(run_config("kd", data))
    t_rid = first["teacher"]["run_id"]
    before = read_record(tmp_path / f"{t_rid}.json")
    (tmp_path / t_rid / "final.pt").unlink()
    (tmp_path / f"{first['run_id']}.json").unlink()
    again = runner.run(run_config("kd", data))
    assert again["teacher"]["source"] == "trained" and metrics(again) == metrics(first)
    assert metrics(read_record(tmp_path / f"{t_rid}.json")) == metrics(before)


def _kd_with_teacher_record_only(tmp_path, tiny_cifar, edit):
    """A KD run and its teacher, then the teacher's record changed by ``edit`` and its weights
    and the KD record removed: (runner, first KD record, teacher run id, teacher record path)."""
    data, root = tiny_cifar
    runner = Runner(tmp_path, data_root=root, device="cpu")
    first = runner.run(run_config("kd", data))
    t_rid = first["teacher"]["run_id"]
    path = tmp_path / f"{t_rid}.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    (tmp_path / t_rid / "final.pt").unlink()
    (tmp_path / f"{first['run_id']}.json").unlink()
    return runner, first, t_rid, path


def test_a_teacher_recorded_on_another_kind_of_machine_is_not_replaced_silently(tmp_path, tiny_cifar, monkeypatch):
    """Its record is here but not its weights, and it was made on another kind of machine:
    retraining would put a different teacher under the old record's name, so it is a one-line
    error naming the fixes; with MUTUALBENCH_RETRAIN_TEACHERS=1 it is retrained."""
    from mutualbench.core.errors import UserError

    data, _ = tiny_cifar
    other = None

    def other_isa(record):
        nonlocal other
        other = "AVX2" if record["env"]["cpu"]["isa"] == "AVX512" else "AVX512"
        record["env"]["cpu"]["isa"] = other  # as if made on a machine of another instruction set

    runner, first, t_rid, path = _kd_with_teacher_record_only(tmp_path, tiny_cifar, other_isa)
    before = path.read_bytes()
    with pytest.raises(UserError) as e:
        runner.run(run_config("kd", data))
    msg = str(e.value)
    assert f"the teacher run {t_rid}" in msg and other in msg and "MUTUALBENCH_RETRAIN_TEACHERS=1" in msg
    assert "\n" not in msg and path.read_bytes() == before  # the stored record is untouched
    monkeypatch.setenv("MUTUALBENCH_RETRAIN_TEACHERS", "1")
    again = runner.run(run_config("kd", data))
    assert again["teacher"]["source"] == "trained" and metrics(again) == metrics(first)


def test_a_teacher_recorded_in_the_other_memory_layout_is_not_replaced_silently(tmp_path, tiny_cifar, monkeypatch):
    """Its record is here but not its weights, and it trained in NCHW (as every teacher did
    before the single-model stages honoured speed.channels_last): retraining it channels-last
    would put a different teacher under the old record's name, so it is a one-line error
    naming the fixes; asked in its own layout it is retrained."""
    from mutualbench.core.errors import UserError

    data, _ = tiny_cifar

    def as_nchw(record):
        for stage in record["stages"]:
            stage.pop("channels_last", None)  # a stage that does not say trained in NCHW
        for segment in record.get("segments", []):
            segment.pop("layout", None)  # nor did a segment say its layout then
        record["layout"] = "NCHW"

    runner, first, t_rid, path = _kd_with_teacher_record_only(tmp_path, tiny_cifar, as_nchw)
    before = path.read_bytes()
    with pytest.raises(UserError) as e:
        runner.run(run_config("kd", data))
    msg = str(e.value)
    assert f"the teacher run {t_rid}" in msg and "trained in NCHW" in msg and "speed.channels_last=false" in msg
    assert "\n" not in msg and path.read_bytes() == before
    again = runner.run(run_config("kd", data, **{"speed.channels_last": False}))
    assert again["teacher"]["source"] == "trained" and again["layout"] == "NCHW"


def test_git_commit_of_a_tree_copy_comes_from_the_environment(monkeypatch):
    from mutualbench.core import envinfo

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(envinfo.subprocess, "run", no_git)
    monkeypatch.delenv("MUTUALBENCH_SOURCE_COMMIT", raising=False)
    assert envinfo.git_commit() == "unknown"
    monkeypatch.setenv("MUTUALBENCH_SOURCE_COMMIT", "0123abc+dirty\n")
    assert envinfo.git_commit() == "0123abc+dirty (copy)"


def test_no_fuse_flag_takes_the_plain_cohort_path(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    for flag, path in (([], "fused"), (["--no-fuse"], "plain")):
        out = tmp_path / path
        assert main(["run", "--method", "mutual", "--cohort", "2", "--epochs", "1", *flag, "--data", str(data),
                     "--data-root", str(root), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
        record = json.loads(next(out.glob("*.json")).read_text())
        assert record["config"]["mutual"]["fuse"] is (path == "fused")
        assert [s.get("cohort_path") for s in record["stages"]] == [path]


def test_git_commit_is_dirty_for_package_changes_only(tmp_path):
    import shutil
    import subprocess

    from mutualbench.core import envinfo

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    pkg = repo / "src" / "mutualbench"
    pkg.mkdir(parents=True)
    (pkg / "envinfo.py").write_text("# package file\n")
    (repo / "results.json").write_text("{}\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    original = envinfo.__file__
    try:
        envinfo.__file__ = str(pkg / "envinfo.py")
        (repo / "results.json").write_text('{"rewritten": true}\n')  # a study rewriting its tracked results
        assert envinfo.git_commit() == head
        (pkg / "envinfo.py").write_text("# edited\n")
        assert envinfo.git_commit() == head + "+dirty"
    finally:
        envinfo.__file__ = original


def test_a_teacher_resumed_across_kinds_of_machine_is_not_replaced_silently(tmp_path, tiny_cifar):
    """Its record's segments name two kinds of machine: no machine can retrain the same teacher."""
    from mutualbench.core.errors import UserError

    data, _ = tiny_cifar
    seg = None

    def split_across_machines(record):
        nonlocal seg
        (seg,) = record["segments"]
        record["segments"] = [dict(seg, last_epoch=1, machine="Other CPU AVX512"), dict(seg, first_epoch=2)]

    runner, *_ = _kd_with_teacher_record_only(tmp_path, tiny_cifar, split_across_machines)
    # the machine's name is matched literally: "Intel(R) Xeon(R) ..." has regex metacharacters
    with pytest.raises(UserError, match=re.escape(f"made on Other CPU AVX512 + {seg['machine']})")):
        runner.run(run_config("kd", data))


def test_epoch_lines_are_throttled_and_every_run_ends_with_one_closing_line(tmp_path, tiny_cifar, monkeypatch):
    import mutualbench.training.engine as engine

    data, root = tiny_cifar
    cfg = run_config("mutual", data, cohort=2)
    lines = []
    # second-long epochs (a smoke profile's): no epoch lines, the run's closing line only
    monkeypatch.setattr(engine, "EPOCH_LINE_INTERVAL_S", 3600.0)
    record = Runner(tmp_path / "quick", data_root=root, device="cpu", log=lines.append).run(cfg)
    rid = record["run_id"]
    accs = {n: m["final_test_acc"] for n, m in record["models"].items()}
    ens = record["ensemble"]["final_test_acc"]
    assert lines == [f"{rid}: final test accuracy student1={accs['student1']:.2f}% student2={accs['student2']:.2f}% "
                     f"ensemble={ens:.2f}% after 2 epochs ({record['timings']['train_s']:.1f} s of training); "
                     f"wrote {tmp_path / 'quick' / (rid + '.json')}"]
    # long epochs: a line each, then the closing line
    lines.clear()
    monkeypatch.setattr(engine, "EPOCH_LINE_INTERVAL_S", 0.0)
    Runner(tmp_path / "long", data_root=root, device="cpu", log=lines.append).run(cfg)
    assert [line.split(":")[0] for line in lines] == [f"{rid} mutual epoch 1/2", f"{rid} mutual epoch 2/2", rid]
