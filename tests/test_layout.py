"""``speed.channels_last`` in every stage: the single-model stages (supervised, KD, hints, ONE)
train channels-last in float32 runs, float64 runs keep NCHW, the layout is recorded (the
record's ``layout`` and each stage) but never enters the run id of a method without a speed
section, a run's teacher trains in its layout, the channels-last path computes what the NCHW
path does, and tables note an arm whose runs mix layouts."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from conftest import run_config
from mutualbench.analysis.results import mixed_layout_notes
from mutualbench.cli import main
from mutualbench.core.config import default_config, run_id
from mutualbench.data import load_dataset
from mutualbench.methods import get_method
from mutualbench.methods.pretrain import uses_teacher
from mutualbench.storage.io_utils import safe_torch_load
from mutualbench.storage.records import read_record, record_layout, record_path
from mutualbench.training.assembly import assemble, new_teacher, run_channels_last
from mutualbench.training.estimate import planned_layout
from mutualbench.training.run import Runner, resolve

CASES = [  # (method, overrides): every single-model stage, alone and before a cohort
    ("individual", {}),
    ("kd", {}),
    ("fitnets", {}),
    ("hint_mutual", {"cohort": 2}),
    ("one", {"cohort": 2, "arch": ["wrn_10_1"]}),
]


def _config(method, data, channels_last, **extra):
    config = run_config(method, data, **{"arch": ["seed_vgg_student"], "train.epochs": 1, "hint.epochs": 1,
                                         "teacher.train.epochs": 1, "data.train_subset": 24,
                                         "speed.channels_last": channels_last, **extra})
    return config


def _conv_weights(state: dict) -> list[torch.Tensor]:
    return [t for t in state.values() if t.ndim == 4]


def test_the_layout_never_enters_the_id_of_a_method_without_a_speed_section():
    for method in ("individual", "kd", "fitnets", "one"):
        extra = {"cohort": 2} if method == "one" else {}
        on = dict(default_config(), method=method, **extra)
        on["teacher"]["arch"] = "seed_vgg_teacher"
        off = copy.deepcopy(on)
        off["speed"]["channels_last"] = False
        assert "channels_last" not in resolve(off).get("speed", {})
        assert run_id(resolve(on), "sha") == run_id(resolve(off), "sha"), method
    # a cohort method has always hashed its speed section, the layout with it: its ids stay
    mutual = dict(default_config(), method="mutual", cohort=2)
    flat = copy.deepcopy(mutual)
    flat["speed"]["channels_last"] = False
    assert run_id(resolve(mutual), "sha") != run_id(resolve(flat), "sha")


def test_float32_runs_channels_last_by_default_and_float64_keeps_nchw():
    config = default_config()
    assert run_channels_last(config)
    assert not run_channels_last(dict(config, speed=dict(config["speed"], channels_last=False)))
    assert not run_channels_last(dict(config, speed=dict(config["speed"], dtype="float64")))
    assert not run_channels_last(config, torch.float64)  # the golden trajectories' float64
    assert run_channels_last(dict(config, speed=dict(config["speed"], bf16=True)))  # bf16 autocast: float32 weights


@pytest.mark.parametrize("method,extra", CASES)
def test_every_single_model_stage_trains_in_the_asked_layout_and_says_so(tmp_path, tiny_cifar, method, extra):
    data, root = tiny_cifar
    ids = set()
    for channels_last in (True, False):
        out = tmp_path / str(channels_last)
        config = _config(method, data, channels_last, **extra)
        config["cohort"] = extra.get("cohort", 1)
        record = Runner(out, data_root=root, device="cpu").run(config)
        layout = "channels-last" if channels_last else "NCHW"
        assert record["layout"] == layout == record_layout(record)
        assert planned_layout(config, resolve(config)) == layout  # predicted without data, as `plan` does
        assert [s["channels_last"] for s in record["stages"]] == [channels_last] * len(record["stages"])
        weights = safe_torch_load(out / record["run_id"] / "final.pt", "weights")["models"]
        for name, state in weights.items():
            convs = _conv_weights(state)
            assert convs, name
            # the saved weights keep the layout they trained in (a 1x1 conv is both)
            assert all(t.is_contiguous(memory_format=torch.channels_last) == channels_last
                       for t in convs if t.shape[-1] > 1), (name, layout)
        if uses_teacher(get_method(method), config):  # the teacher trains in the run's layout
            assert read_record(record_path(out, record["teacher"]["run_id"]))["layout"] == layout
        ids.add(record["run_id"])
    if method != "hint_mutual":  # one run id for both layouts (hint_mutual hashes its speed section)
        assert len(ids) == 1


def test_a_float64_run_keeps_nchw_in_its_single_model_stages(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    config = _config("kd", data, True, **{"speed.dtype": "float64"})
    record = Runner(tmp_path, data_root=root, device="cpu").run(config)
    assert record["layout"] == "NCHW"
    assert [s["channels_last"] for s in record["stages"]] == [False]


@pytest.mark.parametrize("method,extra", CASES)
def test_the_channels_last_path_computes_what_the_nchw_path_does(tiny_cifar, method, extra):
    """Two epochs of losses and accuracies in float64, where the layouts differ only in the
    order of a few additions, agree to 1e-9; in float32, the layout production uses, the first
    epoch's losses agree to 1e-3 (rounding, as between machines)."""
    data, root = tiny_cifar
    ds = load_dataset(str(data), root=root)
    for dtype, rel in (("float64", 1e-9), ("float32", 1e-3)):
        config = _config(method, data, False, **{"speed.dtype": dtype, "train.epochs": 2 if dtype == "float64" else 1,
                                                 **extra})
        config["cohort"] = extra.get("cohort", 1)
        _same_in_both_layouts(method, resolve(config), ds, rel, exact_accuracy=dtype == "float64")


def _same_in_both_layouts(method, resolved, ds, rel, exact_accuracy):
    curves = {}
    for channels_last in (False, True):
        teacher = None
        if uses_teacher(get_method(method), resolved):
            torch.manual_seed(0)
            teacher = new_teacher(resolved, ds.num_classes, device=torch.device("cpu"))
        run = assemble(resolved, ds, torch.device("cpu"), teacher, channels_last=channels_last)
        curves[channels_last] = run.engine().run()
        assert [s.describe()["channels_last"] for s in run.stages if "channels_last" in s.describe()][:1] == [
            channels_last]
    for plain, fast in zip(curves[False], curves[True], strict=True):
        for model, loss in plain["train_loss"].items():
            assert fast["train_loss"][model] == pytest.approx(loss, rel=rel, abs=rel), (method, model)
        if exact_accuracy:
            assert fast["test_acc"] == plain["test_acc"]


@pytest.mark.parametrize("method", ["mutual", "kdcl", "okddip", "pcl"])
def test_the_plain_cohort_path_computes_in_channels_last_what_it_does_in_nchw(tiny_cifar, method):
    """A cohort of BatchNorm networks trains on the plain path, whose layout comes from the
    method's own speed section: two float64 epochs of every member's losses and accuracies
    agree between the layouts to 1e-9 (a cohort arm trained channels-last is comparable with
    an individual arm trained NCHW)."""
    data, root = tiny_cifar
    ds = load_dataset(str(data), root=root)
    curves, paths = {}, set()
    for channels_last in (False, True):
        config = _config(method, data, channels_last, **{"speed.dtype": "float64", "train.epochs": 2,
                                                         "arch": ["wrn_10_1"]})
        config["cohort"] = 3
        run = assemble(resolve(config), ds, torch.device("cpu"), None)
        described = [s.describe() for s in run.stages]
        paths |= {(d.get("cohort_path"), d.get("channels_last")) for d in described}
        curves[channels_last] = run.engine().run()
    assert paths == {("plain", False), ("plain", True)}
    for plain, fast in zip(curves[False], curves[True], strict=True):
        assert plain["train_loss"].keys() == fast["train_loss"].keys()
        for model, loss in plain["train_loss"].items():
            assert fast["train_loss"][model] == pytest.approx(loss, rel=1e-9, abs=1e-9), (method, model)
        assert fast["test_acc"] == plain["test_acc"]


def test_an_arm_whose_runs_mix_layouts_gets_one_note():
    rows = [{"ablation": "main", "value": "", "arm": "student", "member": "model", "seed": s, "run_id": f"r{s}",
             "layout": "NCHW" if s < 4 else "channels-last"} for s in range(5)]
    rows += [{"ablation": "main", "value": "", "arm": "dml", "member": m, "seed": s, "run_id": f"d{s}",
              "layout": "channels-last"} for s in range(5) for m in ("student1", "student2")]
    notes = mixed_layout_notes(pd.DataFrame(rows))
    assert notes == ["student: runs in NCHW (seeds 0, 1, 2, 3) and channels-last (seed 4)"]
    assert mixed_layout_notes(pd.DataFrame(rows[5:])) == []


def test_old_records_read_their_layout_from_their_stages_or_config():
    assert record_layout({"stages": [{"name": "train", "epochs": 3}]}) == "NCHW"
    assert record_layout({"stages": [{"name": "hint", "epochs": 2},
                                     {"name": "mutual", "epochs": 3, "channels_last": True}]}) == "NCHW + channels-last"
    assert record_layout({"config": {"speed": {"channels_last": True}}}) == "channels-last"
    assert record_layout({"config": {"method": "individual"}}) == "NCHW"


def test_run_takes_either_layout_for_every_single_model_method(tmp_path, tiny_cifar, capsys):
    """``speed.channels_last=false`` (true is the default) was refused for these methods before
    their stages honoured it; now it runs, in NCHW."""
    data, root = tiny_cifar
    for method in ("individual", "kd", "fitnets", "hint_mutual"):
        args = ["run", "--method", method, "--arch", "seed_vgg_student", "--data", str(data),
                "--data-root", str(root), "--out", str(tmp_path / method), "--epochs", "1", "--quiet",
                "--set", "speed.channels_last=false", "--set", "data.train_subset=12"]
        if method != "individual":
            args += ["--teacher", "seed_vgg_teacher", "--set", "teacher.train.epochs=1", "--set", "hint.epochs=1"]
        if method == "hint_mutual":
            args += ["--cohort", "2"]
        assert main(args) == 0, capsys.readouterr().err
        (path,) = (tmp_path / method).glob(f"{method}-*.json")
        assert read_record(path)["layout"] == "NCHW"
