"""A kind of run's time from the records: here, or scaled from another machine or layout."""

import json

import pytest

from conftest import run_config
from mutualbench.training import estimate
from mutualbench.training.estimate import RunEstimate, RunTimer
from mutualbench.training.recorded_times import RecordedTimes, kind_of_run, median_estimate
from mutualbench.training.run import Runner, resolve


def runs(*totals: float) -> list[RunEstimate]:
    """Recorded runs of one stage of 10 epochs, each taking ``total`` (90% of it training)."""
    return [RunEstimate(0.0, 0.0, per_epoch=((0.09 * t, 0.01 * t),)).for_epochs((10,)) for t in totals]


def kind(method: str, epochs: int) -> str:
    """A kind of run as ``kind_of_run`` spells one (canonical JSON), here only a method and epochs."""
    return json.dumps({"method": method, "train": {"epochs": epochs, "lr": 0.001}}, sort_keys=True,
                      separators=(",", ":"))


OTHER = kind("other", 10)


def seconds(found):
    return None if found.seconds is None else round(found.seconds, 6)


def test_a_kind_recorded_here_in_its_layout_takes_their_median():
    times = RecordedTimes({"k": {("X", "NCHW"): runs(100, 120, 110), ("X", "channels-last"): runs(80),
                                 ("Y", "channels-last"): runs(50, 50)}}, here="X")
    assert (seconds(times.find("k", "channels-last")), times.find("k", "channels-last").how) == (
        80.0, "this kind of machine")
    assert seconds(times.find("k", "NCHW")) == 110.0
    assert times.find("other", "NCHW").estimate is None
    assert times.find("other", "NCHW").how == "no run of this kind recorded here"
    # the median of an even count keeps a real run's stages: [60, 70] -> 65 in one stage of 10 epochs
    mid = median_estimate(runs(60, 70))
    assert (mid.train_s + mid.eval_s, mid.stage_epochs) == (pytest.approx(65.0), (10,))
    assert mid.per_epoch[0] == pytest.approx((5.85, 0.65))


def test_without_a_kind_recorded_in_both_places_a_time_from_elsewhere_is_named_unscaled():
    times = RecordedTimes({"k": {("X", "NCHW"): runs(100), ("Y", "channels-last"): runs(50)}}, here="X")
    found = times.find("k", "channels-last")
    assert (seconds(found), found.how, found.scaled) == (
        100.0, "this kind of machine, in NCHW; this run trains channels-last", False)
    found = RecordedTimes({"k": {("Y", "NCHW"): runs(60, 70)}}, here="X").find("k", "channels-last")
    assert (seconds(found), found.how) == (65.0, "recorded on Y, in NCHW; this run trains channels-last")
    found = RecordedTimes({"k": {("Y", "channels-last"): runs(50, 50)}}, here="Z").find("k", "channels-last")
    assert (seconds(found), found.how, found.scaled) == (50.0, "recorded on Y", False)


def test_a_kind_recorded_elsewhere_is_scaled_by_the_median_ratio_of_the_kinds_recorded_both_places():
    """KD was recorded on a Xeon only; three other kinds took 0.5x, 0.6x and 2.0x their Xeon
    times here: KD is given 0.6x (the median ratio, not the mean 1.03x)."""
    times = RecordedTimes({
        "kd": {("Xeon", "NCHW"): runs(1000)},
        "a": {("Xeon", "NCHW"): runs(100), ("EPYC", "channels-last"): runs(50)},
        "b": {("Xeon", "NCHW"): runs(200, 200), ("EPYC", "channels-last"): runs(120)},
        "c": {("Xeon", "NCHW"): runs(10), ("EPYC", "channels-last"): runs(20)},
        "d": {("EPYC", "NCHW"): runs(999)},  # not recorded on the Xeon: no ratio
    }, here="EPYC")
    found = times.find("kd", "channels-last")
    assert seconds(found) == 600.0 and found.scaled
    assert found.how == ("recorded on Xeon, in NCHW, scaled x0.60: the median over 3 other kinds of run "
                         "recorded there and here in channels-last")
    assert found.estimate.stage_epochs == (10,) and found.estimate.per_epoch[0] == pytest.approx((54.0, 6.0))
    assert times.ratio("kd", ("Xeon", "NCHW"), ("EPYC", "channels-last")) == (pytest.approx(0.6), 3)
    assert times.ratio("kd", ("Xeon", "NCHW"), ("EPYC", "NCHW")) is None


def test_this_machine_in_another_layout_is_preferred_to_another_machine():
    times = RecordedTimes({
        "fitnets": {("EPYC", "NCHW"): runs(4000), ("Xeon", "channels-last"): runs(1000)},
        "a": {("EPYC", "NCHW"): runs(100), ("EPYC", "channels-last"): runs(50),
              ("Xeon", "channels-last"): runs(10)},
        "b": {("Xeon", "channels-last"): runs(10), ("EPYC", "channels-last"): runs(30)},
    }, here="EPYC")
    found = times.find("fitnets", "channels-last")  # 4000 x 0.5, not 1000 x median(5, 3) = 4000
    assert seconds(found) == 2000.0
    assert found.how.startswith("this kind of machine, in NCHW, scaled x0.50: the median over 1 other kind of run")


def test_a_kind_recorded_here_for_other_epochs_is_timed_per_epoch_before_any_record_from_elsewhere():
    """Step-matched DML (40 epochs) never ran here; DML for 10 epochs did, twice: 3,000 and
    3,600 s, so 330 s an epoch, 13,200 s for 40; a 40-epoch record from the Xeon, scalable
    through the other kind, comes after."""
    dml10, dml40 = kind("mutual", 10), kind("mutual", 40)
    times = RecordedTimes({
        dml10: {("EPYC", "channels-last"): runs(3000, 3600)},
        dml40: {("Xeon", "channels-last"): runs(5000)},
        OTHER: {("Xeon", "channels-last"): runs(10), ("EPYC", "channels-last"): runs(20)},
    }, here="EPYC")
    found = times.find(dml40, "channels-last", (40,))
    assert seconds(found) == 13200.0 and found.scaled
    assert found.how == "this kind of machine, from runs of this kind for 10 epochs, per epoch"
    assert found.estimate.stage_epochs == (40,) and found.estimate.epochs == 40
    # without the run's epochs, or with another number of stages, the Xeon's record is scaled instead
    assert seconds(times.find(dml40, "channels-last")) == 10000.0
    assert seconds(times.find(dml40, "channels-last", (10, 40))) == 10000.0
    assert seconds(times.find(dml40, "NCHW", (40,))) == 5000.0  # not here in NCHW: the Xeon's, unscaled
    assert seconds(times.find(kind("kd", 40), "channels-last", (40,))) is None  # another family


def test_a_record_of_another_thread_count_is_another_kind_of_machine_and_a_resumed_one_is_skipped(
        tmp_path, tiny_cifar):
    data, root = tiny_cifar
    runner = Runner(tmp_path / "runs", data_root=root, device="cpu")
    cfg = run_config("individual", data, **{"train.epochs": 1})
    rec = runner.run(cfg)
    path = tmp_path / "runs" / f"{rec['run_id']}.json"
    here = rec["env"]["cpu"]
    from mutualbench.core.envinfo import record_machine_kind

    machine = record_machine_kind(rec)
    kind = kind_of_run(rec["config"])
    assert kind == kind_of_run(dict(resolve(cfg), data=dict(resolve(cfg)["data"], source="/elsewhere/c.tgz")))
    layout = next(iter(RecordedTimes.read(tmp_path / "runs", machine).times[kind]))[1]
    assert RecordedTimes.read(tmp_path / "runs", machine, threads=here["threads"]).find(kind, layout).how == \
        "this kind of machine"
    found = RecordedTimes.read(tmp_path / "runs", machine, threads=here["threads"] + 1).find(kind, layout)
    assert (found.how, found.scaled) == (f"recorded on {machine}, {here['threads']} threads", False)
    resumed = json.loads(path.read_text())
    resumed["segments"] = [dict(s, machine=m) for s, m in zip(resumed["segments"] * 2, ("A", "B"), strict=True)]
    path.write_text(json.dumps(resumed))
    assert RecordedTimes.read(tmp_path / "runs", machine).times == {}


def test_replicate_takes_a_scaled_record_without_timing_steps_and_times_steps_for_an_unscaled_one(
        monkeypatch, tmp_path, tiny_cifar):
    """Timed steps move with a busy machine; a scaled record does not: two estimates in a row
    agree exactly and nothing is timed."""
    data, root = tiny_cifar
    runner = Runner(tmp_path / "runs", data_root=root, device="cpu")
    lines = []
    timer = RunTimer(runner, progress=lines.append)
    cfg = run_config("individual", data)
    kind, layout = timer._kind_of_run(cfg, resolve(cfg))
    timer._recorded = RecordedTimes({kind: {("Xeon", "NCHW"): runs(100)},
                                     OTHER: {("Xeon", "NCHW"): runs(10), ("EPYC", layout): runs(30)}}, here="EPYC")
    measured = []
    monkeypatch.setattr(estimate, "measure_run_seconds", lambda *a, **k: measured.append(1) or runs(1)[0])
    first, second = timer.estimate(cfg), timer.estimate(cfg)
    assert first.total_s == second.total_s == pytest.approx(300.0 * RunTimer.SAFETY) and measured == []
    assert timer.source(cfg).startswith("recorded on Xeon, in NCHW, scaled x3.00") and lines == []
    del timer._recorded.times[OTHER]  # no kind recorded both places: the steps are timed
    timer._cache.clear()
    timer.estimate(cfg)
    assert measured == [1] and timer.source(cfg) == "a few timed training steps"
    assert lines == [f"estimating: timing a few training steps of individual, {', '.join(cfg['arch'])} "
                     "(no record of this kind to go by)"]  # the user sees why a dry run takes seconds


def test_the_margin_the_docs_quote_is_the_one_estimates_add():
    """`replicate`, its dry run and `plan` add one margin (``estimate.RUN_MARGIN``); the docs
    that explain their times quote it, and the printed sentence names it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    margin = f"{estimate.RUN_MARGIN - 1:.0%}"
    assert f"plus {margin})" in (root / "docs" / "studies.md").read_text()
    assert f"plus the same {margin} margin" in " ".join((root / "docs" / "statistics.md").read_text().split())
    assert f"each with a {margin} margin" in estimate.estimate_sources("here")


def test_runs_that_differ_only_in_what_they_draw_are_one_kind_and_a_run_of_another_cost_is_not(tiny_cifar):
    """A seed or an init draws other numbers at the same cost: a run with the models' init
    changed takes the recorded time of the runs it was changed from, not timed steps; a change
    to what is computed (its epochs, its arch) is another kind."""
    data, _ = tiny_cifar
    base = resolve(run_config("mutual", data, **{"seed": 0, "cohort": 2}))
    assert kind_of_run(dict(base, seed=2, init="he_normal_conv")) == kind_of_run(base)
    assert kind_of_run(dict(base, init="he_normal_fan_out")) == kind_of_run(dict(base, init="pytorch_default"))
    assert kind_of_run(dict(base, train=dict(base["train"], epochs=base["train"]["epochs"] + 1))) != kind_of_run(base)
    assert kind_of_run(dict(base, arch=["resnet20", "resnet32"])) != kind_of_run(base)
