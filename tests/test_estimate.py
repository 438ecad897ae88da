"""The measured run-time estimate: what it counts, and that it changes nothing."""


import itertools

import pytest
import torch

from mutualbench.core.config import default_config
from mutualbench.studies import launch
from mutualbench.training import estimate
from mutualbench.training.estimate import (
    WARMUP_STEPS,
    RunTimer,
    format_duration,
    measure_run_seconds,
    recorded_estimate,
    robust_seconds,
)
from mutualbench.training.run import Runner


def config(data, method="kd", **extra):
    cfg = default_config()
    cfg.update(method=method, arch=["seed_vgg_student"], seed=0, **extra)
    cfg["data"].update(source=str(data), batch_size=16)
    cfg["teacher"]["arch"] = "seed_vgg_teacher"
    cfg["train"]["epochs"] = 2
    cfg["teacher"]["train"]["epochs"] = 1
    return cfg


def test_estimate_changes_no_state_and_writes_nothing(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    runner = Runner(tmp_path / "runs", data_root=root, device="cpu")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    est = measure_run_seconds(runner, config(data))
    assert torch.equal(torch.get_rng_state(), before)
    assert est.train_s > 0 and est.eval_s > 0 and est.teacher_s == 0
    assert not (tmp_path / "runs").exists()


def test_estimate_counts_the_teacher_until_its_weights_exist(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    runner = Runner(tmp_path / "runs", data_root=root, device="cpu")
    timer = RunTimer(runner)
    cfg = config(data)
    assert timer.estimate(cfg).teacher_s > 0  # the kd run would train its teacher first
    runner.run(cfg)
    assert timer.estimate(cfg).teacher_s == 0
    assert timer.estimate(config(data, method="individual")).teacher_s == 0


def test_time_budget_uses_the_estimate_before_the_first_run_of_a_kind(monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(launch.time, "monotonic", lambda: clock["t"])
    ran = []

    class FakeRunner:
        def run(self, cfg):
            ran.append(cfg["method"])
            clock["t"] += 10.0

    configs = [{"method": m, "arch": ["seed_vgg_student"], "seed": 0} for m in ("individual", "mutual", "individual")]
    estimates = {"individual": 10.0, "mutual": 500.0}
    messages = []
    errors, left = launch.run_local(configs, FakeRunner(), messages.append, time_budget_s=100.0,
                                    estimate=lambda c: estimates[c["method"]])
    assert ran == ["individual"] and (errors, left) == ([], 2)
    assert "needs about 500 s" in messages[-1]


def test_format_duration():
    assert format_duration(5) == "5 s"
    assert format_duration(125) == "2 min 05 s"
    assert format_duration(3 * 3600 + 61) == "3 h 01 min"


def test_a_recorded_run_of_the_same_kind_on_this_machine_is_the_estimate(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    runner = Runner(tmp_path / "runs", data_root=root, device="cpu")
    first = runner.run(config(data, method="individual"))
    second = config(data, method="individual")
    second["seed"] = 1
    est = RunTimer(runner).estimate(second)
    epochs = first["curves"]  # two epochs: their median times two is their sum
    assert len(epochs) == 2
    assert est.train_s == pytest.approx(sum(e["train_s"] for e in epochs) * RunTimer.SAFETY)
    assert est.eval_s == pytest.approx(sum(e["eval_s"] for e in epochs) * RunTimer.SAFETY)
    assert est.train_s == pytest.approx(first["timings"]["train_s"] * RunTimer.SAFETY, rel=1e-2)


def test_a_recorded_run_in_the_other_memory_layout_is_not_the_estimate(tmp_path, tiny_cifar, monkeypatch):
    """An individual run's layout is recorded, not hashed: a channels-last run of the same kind
    is measured, not given the time of the NCHW record (the layouts run at different speeds)."""
    data, root = tiny_cifar
    runner = Runner(tmp_path / "runs", data_root=root, device="cpu")
    nchw = config(data, method="individual")
    nchw["speed"]["channels_last"] = False
    runner.run(nchw)
    measured = []
    real = estimate.measure_run_seconds
    monkeypatch.setattr(estimate, "measure_run_seconds", lambda r, c, *a, **k: measured.append(c) or real(r, c, *a, **k))
    again = config(data, method="individual")
    again["seed"], again["speed"]["channels_last"] = 1, False
    RunTimer(runner).estimate(again)
    assert measured == []  # the same layout: the record's time
    other = config(data, method="individual")
    other["seed"] = 1  # channels-last, the default
    RunTimer(runner).estimate(other)
    assert len(measured) == 1


def test_an_interrupted_run_is_estimated_for_the_epochs_it_has_left(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    runner = Runner(tmp_path / "runs", data_root=root, device="cpu")
    first = runner.run(config(data, method="individual"))  # 2 epochs: the recorded time of this kind
    second = config(data, method="individual")
    second["seed"] = 1
    _, rid, _, _ = runner.prepare(second)
    timer = RunTimer(runner)
    whole = timer.estimate(second)
    assert whole.epochs == 2
    (tmp_path / "runs" / rid).mkdir()
    torch.save({"global_epoch": 1}, tmp_path / "runs" / rid / "checkpoint.pt")  # killed after epoch 1 of 2
    half = timer.estimate(second)
    assert half.train_s == pytest.approx(whole.train_s / 2) and half.eval_s == pytest.approx(whole.eval_s / 2)
    (tmp_path / "runs" / rid / "checkpoint.pt").write_bytes(b"garbage")  # unreadable: the run starts over
    assert timer.estimate(second).train_s == pytest.approx(whole.train_s)
    assert first["timings"]["train_s"] > 0


def test_a_recorded_run_counts_its_median_epoch_not_epochs_slowed_by_other_work():
    rows = [{"stage": "hint", "epoch": 1, "train_s": 10.0, "eval_s": 1.0}]
    rows += [{"stage": "train", "epoch": 1 + e, "train_s": s, "eval_s": 2.0} for e, s in enumerate((20.0, 21.0, 95.0))]
    rec = {"timings": {"train_s": 146.0, "eval_s": 7.0}, "curves": rows,
           "stages": [{"name": "hint", "epochs": 1}, {"name": "train", "epochs": 3}]}
    est = recorded_estimate(rec)
    # hint: 1 x 10; train: 3 x median(20, 21, 95) = 63; the 95 s epoch shared the machine
    assert (est.train_s, est.eval_s, est.epochs) == (73.0, 7.0, 4)
    rec["curves"] = rows[:3]  # an epoch's time missing: the record's totals
    assert (recorded_estimate(rec).train_s, recorded_estimate(rec).eval_s) == (146.0, 7.0)


def test_one_slow_step_or_a_busy_round_does_not_move_the_step_time():
    quiet = [0.1] * 12
    assert robust_seconds(quiet) == 0.1
    one_slow = quiet.copy()
    one_slow[5] = 30.0
    assert robust_seconds(one_slow) == 0.1
    busy = [0.1] * 8 + [0.5] * 4  # another process took the machine for the last round
    assert robust_seconds(busy) == 0.1
    busy_first = [0.5] * 4 + [0.1] * 8
    assert robust_seconds(busy_first) == 0.1
    assert robust_seconds([0.3] * 12) == 0.3  # a slower machine is slower
    assert robust_seconds([0.2]) == 0.2 and robust_seconds([]) == 0.0


class FakeClock:
    """``estimate._time`` for tests: runs the step, says it took ``step_s``, except the calls
    numbered in ``slow`` (from 0), which say 50 s (the machine busy for that one step)."""

    def __init__(self, step_s: float = 0.01, slow=()):
        self.step_s, self.slow, self.calls = step_s, set(slow), itertools.count()

    def __call__(self, fn, device):
        fn()
        return 50.0 if next(self.calls) in self.slow else self.step_s


def test_the_estimate_is_not_moved_by_one_slow_sample(monkeypatch, tmp_path, tiny_cifar):
    data, root = tiny_cifar
    runner = Runner(tmp_path / "runs", data_root=root, device="cpu")
    monkeypatch.setattr(estimate, "_time", FakeClock())
    plain = measure_run_seconds(runner, config(data, method="individual"))
    assert plain.train_s == pytest.approx(0.01 * 6 * 2)  # 90 images in batches of 16: 6 steps, 2 epochs
    for slow in (WARMUP_STEPS, WARMUP_STEPS + 3, WARMUP_STEPS + 11):  # the first, a middle and the last timed step
        monkeypatch.setattr(estimate, "_time", FakeClock(slow={slow}))
        slowed = measure_run_seconds(runner, config(data, method="individual"))
        assert (slowed.train_s, slowed.eval_s) == (plain.train_s, plain.eval_s)


def test_more_epochs_are_never_cheaper(tmp_path, tiny_cifar):
    """Runs that differ only in epochs share one measurement of their steps."""
    data, root = tiny_cifar
    runner = Runner(tmp_path / "runs", data_root=root, device="cpu")
    timer = RunTimer(runner)
    short, long = config(data, method="mutual", cohort=2), config(data, method="mutual", cohort=2)
    long["train"]["epochs"] = 5
    a, b = timer.estimate(short), timer.estimate(long)
    assert b.train_s == pytest.approx(a.train_s * 5 / 2) and b.eval_s == pytest.approx(a.eval_s * 5 / 2)
    assert (a.epochs, b.epochs) == (2, 5)


def test_a_larger_cohort_is_never_cheaper(monkeypatch, tmp_path, tiny_cifar):
    """The machine was busy while the cohort of three was timed and quiet for the cohort of
    four: the four still cost at least the three, whichever was estimated first."""
    data, root = tiny_cifar
    for first in (3, 4):
        runner = Runner(tmp_path / f"runs{first}", data_root=root, device="cpu")
        timer = RunTimer(runner)
        k3, k4 = config(data, method="mutual", cohort=3), config(data, method="mutual", cohort=4)
        for cfg in ((k3, k4) if first == 3 else (k4, k3)):
            monkeypatch.setattr(estimate, "_time", FakeClock(step_s=0.05 if cfg is k3 else 0.01))
            timer.estimate(cfg)
        three, four = timer.estimate(k3), timer.estimate(k4)
        assert three.train_s == pytest.approx(0.05 * 6 * 2 * RunTimer.SAFETY)
        assert four.train_s >= three.train_s and four.eval_s >= three.eval_s
