"""A run resumed on another kind of machine (or thread count, or torch, or memory layout) is
never silent: the resuming process warns in one line, and the record's ``segments`` say which
epochs ran where and in which layout; tables then count such a run as "A + B"."""

from __future__ import annotations

import json

import pytest
import torch

from mutualbench.analysis.results import mixed_machine_notes
from mutualbench.core.envinfo import machine_kind, record_machine_kind
from mutualbench.storage.records import (
    CHANNELS_LAST,
    NCHW,
    read_record,
    record_layout,
    validate_record,
)
from test_ensemble_and_machines import frame
from test_run import cli

OTHER = "Other CPU AVX512"


def run_args(data, root, out):
    return ["run", "--method", "individual", "--seed", "0", "--data", str(data), "--data-root", str(root),
            "--epochs", "3", "--set", "data.batch_size=16", "--device", "cpu", "--quiet", "--out", str(out)]


def killed_after_one_epoch(data, root, out):
    """A 3-epoch run killed after its first epoch: the path of its checkpoint."""
    killed = cli(*run_args(data, root, out), env={"MUTUALBENCH_FAULT_KILL_AFTER_EPOCHS": "1"})
    assert killed.returncode == -9, killed.stderr
    (ckpt,) = out.glob("individual-*/checkpoint.pt")
    return ckpt


def edit_checkpoint(path, change):
    state = torch.load(path, map_location="cpu", weights_only=True)
    change(state)
    torch.save(state, path)


def finished(data, root, out):
    done = cli(*run_args(data, root, out))
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("individual-*.json")
    return read_record(path), done.stderr


@pytest.fixture(scope="module")
def runs(tiny_cifar, tmp_path_factory):
    """The same run five ways: straight through; killed and resumed here; killed, its first
    epoch marked as made on another machine, resumed; killed, its first epoch marked as
    trained in NCHW, resumed (channels-last here); killed with a checkpoint from before
    segments existed, resumed."""
    data, root = tiny_cifar
    base = tmp_path_factory.mktemp("segments")
    out = {}
    out["straight"] = finished(data, root, base / "straight")
    killed_after_one_epoch(data, root, base / "here")
    out["here"] = finished(data, root, base / "here")
    ckpt = killed_after_one_epoch(data, root, base / "other")
    edit_checkpoint(ckpt, lambda s: s["segments"][0].update(machine=OTHER, threads=64))
    out["other"] = finished(data, root, base / "other")
    ckpt = killed_after_one_epoch(data, root, base / "layout")
    edit_checkpoint(ckpt, lambda s: s["segments"][0].update(layout=NCHW))
    out["layout"] = finished(data, root, base / "layout")
    ckpt = killed_after_one_epoch(data, root, base / "old")
    edit_checkpoint(ckpt, lambda s: s.pop("segments"))
    out["old"] = finished(data, root, base / "old")
    return out


def test_a_run_made_in_one_go_has_one_segment_of_every_epoch(runs):
    record, stderr = runs["straight"]
    here = machine_kind(record["env"])
    assert [(s["first_epoch"], s["last_epoch"], s["machine"]) for s in record["segments"]] == [(1, 3, here)]
    seg = record["segments"][0]
    assert seg["threads"] == torch.get_num_threads() and seg["torch"] == torch.__version__
    assert seg["git_commit"] == record["env"]["git_commit"]
    assert seg["layout"] == CHANNELS_LAST == record["layout"] == record_layout(record)  # float32: channels-last
    assert record_machine_kind(record) == here and "resumes" not in stderr


def test_resumed_on_the_same_machine_two_segments_no_warning(runs):
    record, stderr = runs["here"]
    here = machine_kind(record["env"])
    assert [(s["first_epoch"], s["last_epoch"], s["machine"]) for s in record["segments"]] == [(1, 1, here), (2, 3, here)]
    assert record_machine_kind(record) == here and "resumes after epoch" not in stderr

    def metrics(r):
        return [(e["epoch"], e["test_acc"], e["train_loss"]) for e in r["curves"]]

    assert metrics(record) == metrics(runs["straight"][0])  # segments change nothing of what is computed


def test_resumed_on_another_machine_warns_once_and_records_both(runs):
    record, stderr = runs["other"]
    here = machine_kind(record["env"])
    assert [(s["first_epoch"], s["last_epoch"], s["machine"]) for s in record["segments"]] == [(1, 1, OTHER), (2, 3, here)]
    assert record_machine_kind(record) == f"{OTHER} + {here}"
    warnings = [line for line in stderr.splitlines() if "resumes after epoch" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: individual-") and f"resumes after epoch 1 on {here}" in warnings[0]
    assert f"but epochs 1-1 on {OTHER}, 64 threads, torch {torch.__version__}, {CHANNELS_LAST}: each rounds " \
           "differently" in warnings[0]
    assert record["layout"] == CHANNELS_LAST  # another machine, the same layout


def test_resumed_in_another_layout_warns_once_and_records_both_layouts(runs):
    record, stderr = runs["layout"]
    here = machine_kind(record["env"])
    assert [(s["first_epoch"], s["last_epoch"], s["layout"]) for s in record["segments"]] == [
        (1, 1, NCHW), (2, 3, CHANNELS_LAST)]
    assert record_machine_kind(record) == here  # one kind of machine, two layouts
    assert record["layout"] == f"{NCHW} + {CHANNELS_LAST}" == record_layout(record)
    warnings = [line for line in stderr.splitlines() if "resumes after epoch" in line]
    assert len(warnings) == 1
    assert f"resumes after epoch 1 on {here}, {torch.get_num_threads()} threads, torch {torch.__version__}, " \
           f"{CHANNELS_LAST}, but epochs 1-1 on {here}" in warnings[0]
    assert f"torch {torch.__version__}, {NCHW}: each rounds differently" in warnings[0]


def test_a_checkpoint_from_before_segments_says_its_machine_is_not_recorded(runs):
    record, stderr = runs["old"]
    here = machine_kind(record["env"])
    assert [(s["first_epoch"], s["last_epoch"], s["machine"]) for s in record["segments"]] == [
        (1, 1, "not recorded"), (2, 3, here)]
    assert record_machine_kind(record) == f"not recorded + {here}"
    assert record["layout"] == f"not recorded + {CHANNELS_LAST}"  # its layout is not known either
    assert "but epochs 1-1 on a machine the checkpoint does not record" in stderr


def test_a_record_without_layouts_in_its_segments_reads_its_layout_from_its_stages():
    stages = [{"name": "train", "epochs": 3, "channels_last": True}]
    assert record_layout({"stages": stages, "segments": [{"first_epoch": 1, "last_epoch": 3, "machine": "X"}]}) \
        == CHANNELS_LAST
    assert record_layout({"stages": stages, "segments": [
        {"first_epoch": 1, "last_epoch": 1, "machine": "X", "layout": f"{NCHW} + {CHANNELS_LAST}"},
        {"first_epoch": 2, "last_epoch": 3, "machine": "X", "layout": CHANNELS_LAST}]}) == f"{NCHW} + {CHANNELS_LAST}"


def test_tables_name_a_comparison_with_a_run_resumed_across_machines():
    spec = {"comparisons": [{"a": "a", "b": "b"}]}
    assert mixed_machine_notes(frame({"a": ["X"] * 2, "b": ["X", "X + Y"]}), spec) == ["a vs b: runs from X and X + Y"]
    assert mixed_machine_notes(frame({"a": ["X + Y"] * 2, "b": ["X + Y"] * 2}), spec) == ["a vs b: runs from X + Y"]
    assert mixed_machine_notes(frame({"a": ["X"] * 2, "b": ["X"] * 2}), spec) == []


def record_with(segments, epochs=3):
    curves = [{"epoch": e, "stage": "train", "test_acc": {"model": 50.0}, "train_loss": {"model": 1.0}}
              for e in range(1, epochs + 1)]
    return {"schema": 1, "run_id": "individual-0123456789ab", "status": "complete", "seed": 0, "data": {},
            "config": {"method": "individual", "seed": 0}, "timings": {"train_s": 1.0}, "env": {"device": "cpu"},
            "curves": curves, "segments": segments,
            "models": {"model": {"role": "individual", "arch": "a", "params": 1, "final_test_acc": 50.0,
                                 "best_test_acc_test_selected": 50.0}}}


@pytest.mark.parametrize("segments, problem", [
    ([{"first_epoch": 1, "last_epoch": 1, "machine": "X"}, {"first_epoch": 3, "last_epoch": 3, "machine": "Y"}],
     "segments[1] covers epochs 3-3, but the next epoch to cover is 2"),
    ([{"first_epoch": 1, "last_epoch": 2, "machine": "X"}],
     "segments cover epochs 1-2, but the run has 3 epochs of curves"),
    ([{"first_epoch": 1, "last_epoch": 3}], "segments[0] is not a machine with first_epoch and last_epoch"),
    ("X", 'segments = "X" is not a list'),
    ([{"first_epoch": 1, "last_epoch": 3, "machine": "X", "layout": 1}], "segments[0] has a layout that is not a string"),
])
def test_impossible_segments_are_a_one_line_error_naming_the_record(segments, problem):
    with pytest.raises(Exception, match="impossible run record") as e:
        validate_record(record_with(segments), "r.json")
    assert str(e.value) == f"r.json: impossible run record ({problem})"
    good = [{"first_epoch": 1, "last_epoch": 1, "machine": "X"}, {"first_epoch": 2, "last_epoch": 3, "machine": "Y"}]
    assert validate_record(json.loads(json.dumps(record_with(good))))["segments"] == good


def _damage(state, what):
    if what == "rng":
        state["rng"] = torch.zeros(7, dtype=torch.uint8)
    elif what == "stage state":
        state["stage_state"] = {"optimizers": {"x": "not an optimizer's state"}}
    else:  # an Adam moment of the wrong shape: torch loads it, the first step would fail
        (opt,) = state["stage_state"]["optimizers"].values()
        moments = next(s for s in opt["optimizer"]["state"].values() if "exp_avg" in s)
        moments["exp_avg"] = torch.zeros(3)


def test_a_checkpoint_with_damaged_rng_or_stage_state_is_moved_aside_and_the_run_starts_over(tiny_cifar, tmp_path):
    """The right run id, the models intact, but its RNG or stage state damaged: every rerun used to
    crash on it; now it is moved aside and the run equals one that never saw it."""
    data, root = tiny_cifar
    straight, _ = finished(data, root, tmp_path / "straight")
    for what in ("rng", "stage state", "optimizer moment"):
        out = tmp_path / what.replace(" ", "_")
        ckpt = killed_after_one_epoch(data, root, out)
        edit_checkpoint(ckpt, lambda s, what=what: _damage(s, what))
        record, err = finished(data, root, out)
        assert f"warning: checkpoint {ckpt} is unusable (" in err and "from the beginning" in err, (what, err)
        assert len(list(ckpt.parent.glob("checkpoint.pt.unreadable-*"))) == 1, what
        assert record["resumed_from_epoch"] == 0, what
        assert _learning(record) == _learning(straight), what


def _learning(record):
    """What a run learned, epoch by epoch (its timings left out)."""
    return [(c["test_acc"], c["train_loss"]) for c in record["curves"]], {
        n: m["final_test_acc"] for n, m in record["models"].items()}
