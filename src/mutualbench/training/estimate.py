"""How long a run will take on this machine, measured rather than guessed.

``measure_run_seconds`` builds the run's models and stages exactly as training does
(``assembly.assemble``; a teacher, if the method needs one, is a freshly initialised model of
the teacher's architecture: same cost, no training), times real training steps of every stage
after a few warm-up steps, and one test batch of every evaluated model, then scales by the
run's steps and epochs. It costs seconds, touches no output file and leaves the global RNG
state as it found it. The time budget of ``replicate`` and its plan use it only where the output
folder has no record to go by: the time a complete run of the same kind (another seed) took on
the same kind of machine in the same layout (its median epoch, see ``recorded_estimate``), or
on another machine or layout scaled by the kinds of run recorded in both
(``recorded_times``).

An estimate has to hold on a machine that is doing other work, and be consistent across runs:
- the steps are timed in rounds and the fastest round's median counts (``robust_seconds``):
  other work only ever slows a step, so one slow step, or a busy stretch, does not move it;
- runs that differ only in their epochs share one measurement of their steps, scaled by each
  one's epochs, so more epochs are never cheaper;
- a run is never estimated cheaper than a measured run of the same kind with a smaller cohort
  or fewer epochs (``RunTimer``): a cohort of four costs at least what one of three does."""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..methods import get_method
from ..methods.pretrain import uses_teacher
from .assembly import assemble, new_teacher, run_channels_last, stages_layout
from .engine import synchronize

WARMUP_STEPS = 5  # the first steps pay for allocation and kernel selection
TIMED_STEPS = 12  # in ROUNDS rounds; 5 steps left the estimate of two runs of equal cost up to 20% apart
ROUNDS = 3


@dataclass
class RunEstimate:
    train_s: float
    eval_s: float
    teacher_s: float = 0.0  # training the teacher first, when its weights are not there yet
    epochs: int = 0  # of the whole run, all stages (0: unknown)
    # per stage, in order: its epochs, and one epoch's training and test seconds (empty: unknown)
    stage_epochs: tuple[int, ...] = ()
    per_epoch: tuple[tuple[float, float], ...] = ()

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s + self.teacher_s

    def for_epochs(self, stage_epochs: tuple[int, ...]) -> RunEstimate:
        """The same run's cost for other epochs per stage (its per-epoch costs scaled)."""
        if len(stage_epochs) != len(self.per_epoch):
            raise ValueError(f"{len(stage_epochs)} stages' epochs for an estimate of {len(self.per_epoch)} stages")
        return replace(self, train_s=sum(e * c[0] for e, c in zip(stage_epochs, self.per_epoch, strict=True)),
                       eval_s=sum(e * c[1] for e, c in zip(stage_epochs, self.per_epoch, strict=True)),
                       epochs=sum(stage_epochs), stage_epochs=tuple(stage_epochs))


def _time(fn, device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def robust_seconds(times: list[float], rounds: int = ROUNDS) -> float:
    """What a step takes on a quiet machine: the timings split into ``rounds`` consecutive
    rounds, the smallest of the rounds' medians. Other work on the machine only slows steps, so
    a slow step (inside a round's median) or a busy stretch (a whole round) does not move it."""
    if not times:
        return 0.0
    size = max(1, len(times) // rounds)
    groups = [times[i:i + size] for i in range(0, len(times), size)]
    if len(groups) > 1 and len(groups[-1]) < size:
        groups[-2] += groups.pop()  # a short last round joins the one before it
    return min(statistics.median(g) for g in groups)


def _batches(loader):
    """Training batches without end: epoch 0's, then epoch 1's, ... (a small data set has
    fewer batches per epoch than the warm-up and timed steps)."""
    return itertools.chain.from_iterable(loader.epoch_batches(e) for e in itertools.count())


def measure_run_seconds(runner, config: dict, steps: int = TIMED_STEPS) -> RunEstimate:
    """The estimated training and evaluation time of ``config`` run by ``runner``."""
    resolved, _, ds, _ = runner.prepare(config)
    device = runner.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        # an untrained teacher: its weights do not change the time of a step
        teacher = new_teacher(resolved, ds.num_classes, device=device) \
            if uses_teacher(get_method(resolved["method"]), resolved) else None
        run = assemble(resolved, ds, device, teacher, channels_last=run_channels_last(config))
        slots, stages, train_loader, test_loader = run.slots, run.stages, run.train_loader, run.test_loader
        batches_per_epoch = len(train_loader)
        x_test, _ = next(iter(test_loader.epoch_batches(0)))
        test_batches = len(test_loader)
        per_epoch = []
        stages = [s for s in stages if s.epochs > 0]  # as a record lists them
        for stage in stages:
            stage.begin()
            stage.train_mode()
            times = []
            batches = _batches(train_loader)
            for i in range(WARMUP_STEPS + steps):
                x, y = next(batches)
                t = _time(lambda x=x, y=y, stage=stage: stage.step(x, y), device)
                if i >= WARMUP_STEPS:
                    times.append(t)
            stage.sync()
            eval_epoch = 0.0
            for name in stage.eval_names:
                model = slots[name].module
                model.eval()
                with torch.no_grad():
                    eval_epoch += robust_seconds([_time(lambda model=model: model(x_test), device)
                                                  for _ in range(ROUNDS)]) * test_batches
            per_epoch.append((robust_seconds(times) * batches_per_epoch, eval_epoch))
    est = RunEstimate(0.0, 0.0, per_epoch=tuple(per_epoch))
    return est.for_epochs(tuple(int(s.epochs) for s in stages))


@dataclass(frozen=True)
class PlannedRun:
    """What a run will be, known from its models and stages alone: the memory layout it will
    record and the epochs of each of its stages (of more than 0 epochs), in order."""

    layout: str
    stage_epochs: tuple[int, ...]


def planned_run(config: dict, resolved: dict, num_classes: int = 10) -> PlannedRun:
    """``PlannedRun`` of ``config`` (``resolved``: ``run.resolve`` of it), built without its
    data (neither the layout nor the epochs depend on the data or the number of classes): the
    layout of a single-model stage is not in its resolved config, and a run in one layout does
    not take the time of a run in the other."""
    from ..methods.base import BuildContext, hashed_config
    from ..methods.pretrain import build_run

    method = get_method(resolved["method"])
    with torch.random.fork_rng(devices=[]):  # built on the CPU: no GPU's generator is touched
        teacher = new_teacher(resolved, num_classes) if uses_teacher(method, resolved) else None
        ctx = BuildContext(hashed_config(resolved, method.name), torch.device("cpu"), num_classes, teacher,
                           channels_last=run_channels_last(config))
        _, stages = build_run(method, ctx)
    return PlannedRun(stages_layout(stages), tuple(int(s.epochs) for s in stages if s.epochs > 0))


def planned_layout(config: dict, resolved: dict, num_classes: int = 10) -> str:
    """The memory layout a run of ``config`` would record (``records.record_layout`` of its
    stages), from its models and stages alone (``planned_run``)."""
    return planned_run(config, resolved, num_classes).layout


def checkpointed_epochs(path: Path) -> int:
    """Epochs an interrupted run has behind it: its checkpoint's ``global_epoch`` (0 when
    there is none or it cannot be read; the run then starts over anyway)."""
    if not path.is_file():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return max(0, int(state["global_epoch"]))
    except Exception:
        return 0


def recorded_estimate(rec: dict) -> RunEstimate:
    """What a complete run of this kind takes, from its record: per stage, the median of its
    epochs' training (and test) times times the stage's epochs, so that epochs slowed by other
    work on the machine do not inflate the estimate of the next seed; the record's totals when
    it lacks a time for every epoch."""
    t = rec["timings"]
    stages = [s for s in rec.get("stages") or [] if int(s.get("epochs", 0)) > 0]
    epochs = sum(int(s["epochs"]) for s in stages)
    rows: dict[str, list[dict]] = {}
    for row in rec.get("curves") or []:
        if isinstance(row, dict) and {"stage", "train_s", "eval_s"} <= row.keys():
            rows.setdefault(row["stage"], []).append(row)
    if not stages or any(len(rows.get(s["name"], [])) != int(s["epochs"]) for s in stages):
        return RunEstimate(float(t["train_s"]), float(t["eval_s"]), epochs=epochs,
                           stage_epochs=tuple(int(s["epochs"]) for s in stages))
    per_epoch = tuple((statistics.median(float(r["train_s"]) for r in rows[s["name"]]),
                       statistics.median(float(r["eval_s"]) for r in rows[s["name"]])) for s in stages)
    return RunEstimate(0.0, 0.0, per_epoch=per_epoch).for_epochs(tuple(int(s["epochs"]) for s in stages))


def without_epochs(value):
    """A config without any ``epochs`` key: runs that differ only in how long they train."""
    if isinstance(value, dict):
        return {k: without_epochs(v) for k, v in value.items() if k != "epochs"}
    return value


def _dominates(a: RunEstimate, b: RunEstimate) -> bool:
    """``a``'s run does at least ``b``'s work per stage: as many epochs of every stage."""
    return len(a.stage_epochs) == len(b.stage_epochs) > 0 and all(
        x >= y for x, y in zip(a.stage_epochs, b.stage_epochs, strict=True))


RUN_MARGIN = 1.15  # a run's median epoch or warm timed steps, times this: checkpoints, stragglers, a busy moment


def estimate_sources(where: str) -> str:
    """The one sentence that says where every time ``replicate``, its dry run and ``plan``
    print comes from (``where``: "here", "there")."""
    return (f"from runs of the same kind recorded {where}: on this kind of machine in the run's layout, else scaled "
            "from another machine or layout by the kinds of run recorded in both, else a few timed training steps of "
            f"each kind of run; each with a {RUN_MARGIN - 1:.0%} margin for checkpoints and slower epochs")


class RunTimer:
    """Estimates per run for one runner, measured once per kind of run (the config without
    its seed, and without its epochs: a longer run of the same kind is the same steps, more
    of them), plus the teacher's training when a run would have to train its teacher. No run
    is estimated cheaper than another of the same kind with a smaller cohort and no more
    epochs per stage."""

    SAFETY = RUN_MARGIN

    def __init__(self, runner, progress=None) -> None:
        self.runner = runner
        self.progress = progress  # called with a line before each measurement (seconds each, more on a busy machine)
        self._cache: dict[str, RunEstimate] = {}  # by kind: recorded, or measured and scaled
        self._steps: dict[str, RunEstimate] = {}  # by kind without epochs: one measurement each
        self._family: dict[str, tuple[str, int]] = {}  # kind -> (kind without epochs or cohort, cohort)
        self._recorded = None  # RecordedTimes, read on first use

    @staticmethod
    def _kind(resolved: dict) -> str:
        from .recorded_times import kind_of_run

        return kind_of_run(resolved)

    def _kind_of_run(self, config: dict, resolved: dict) -> tuple[str, str]:
        """The run's kind and the layout it would train in (``planned_run``, once per kind)."""
        kind = self._kind(resolved)
        return kind, self._planned(config, resolved).layout

    def _planned(self, config: dict, resolved: dict) -> PlannedRun:
        return self.recorded().planned(config, resolved)

    def _find(self, config: dict, resolved: dict):
        return self.recorded().find_run(config, resolved)

    def recorded(self):
        """The complete runs of the output folder (``recorded_times.RecordedTimes``), read once:
        a later seed of a kind of run takes what the earlier ones took on this kind of machine
        in its layout, or, recorded elsewhere, that time scaled by the other kinds of run
        recorded both there and here."""
        if self._recorded is None:
            from ..core.envinfo import current_machine_kind
            from .recorded_times import RecordedTimes

            self._recorded = RecordedTimes.read(Path(self.runner.out_dir), current_machine_kind(self.runner.device),
                                                threads=torch.get_num_threads())
        return self._recorded

    def source(self, config: dict) -> str:
        """Where a run's estimate comes from: ``RecordedTimes.find``'s words, or timed steps."""
        from .run import resolve

        found = self._find(config, resolve(config))
        return found.how if found.scaled else "a few timed training steps"

    def _base(self, config: dict, resolved: dict) -> RunEstimate:
        """The run's time without safety margin, teacher or checkpoint: its kind's records
        (``recorded``), else the measurement of its steps (shared by the runs that differ
        only in epochs)."""
        from ..core.config import canonical_json

        kind, layout = self._kind_of_run(config, resolved)
        key = f"{kind} in {layout}"
        if key not in self._cache:
            steps_key = canonical_json(without_epochs(dict(resolved, seed=None)))
            found = self._find(config, resolved)
            known = found.estimate if found.scaled else None
            if known is None and steps_key in self._steps:
                try:
                    known = self._steps[steps_key].for_epochs(self._planned(config, resolved).stage_epochs)
                except ValueError:  # another set of stages (a stage of 0 epochs): measured on its own
                    known = None
            if known is None:
                if self.progress is not None:
                    self.progress(f"estimating: timing a few training steps of {describe_kind(resolved)} "
                                  "(no record of this kind to go by)")
                known = measure_run_seconds(self.runner, config)
                self._steps.setdefault(steps_key, known)
            self._cache[key] = known
            family = without_epochs({k: v for k, v in resolved.items() if k not in ("seed", "cohort")})
            self._family[key] = (canonical_json(family), int(resolved.get("cohort") or 1))
        return self._floor(key)

    def _floor(self, key: str) -> RunEstimate:
        """The run's estimate, raised to the largest of the runs of its kind known so far that
        do no more work (a cohort no larger, no more epochs per stage)."""
        est = self._cache[key]
        family, cohort = self._family[key]
        train_s, eval_s = est.train_s, est.eval_s
        for other, (fam, k) in self._family.items():
            smaller = self._cache[other]
            if other != key and fam == family and k <= cohort and _dominates(est, smaller):
                train_s, eval_s = max(train_s, smaller.train_s), max(eval_s, smaller.eval_s)
        return replace(est, train_s=train_s, eval_s=eval_s)

    def estimate_all(self, configs: list[dict]) -> list[RunEstimate]:
        """Every run's estimate, each held to the floor of all the others (a run estimated
        on its own sees only the runs estimated before it)."""
        from .run import resolve

        for config in configs:
            self._base(config, resolve(config))
        return [self.estimate(config) for config in configs]

    def estimate(self, config: dict) -> RunEstimate:
        from .run import resolve, teacher_config

        est = self._base(config, resolve(config))
        # a run interrupted after some epochs resumes from its checkpoint: only the rest is to do
        _, rid, _, _ = self.runner.prepare(config)
        done = checkpointed_epochs(Path(self.runner.out_dir) / rid / "checkpoint.pt")
        left = max(0.0, 1.0 - done / est.epochs) if done and est.epochs else 1.0
        teacher_s = 0.0
        if uses_teacher(get_method(config["method"]), config) and not config["teacher"]["checkpoint"]:
            tcfg = teacher_config(config)
            if not self.runner.has_weights(tcfg):
                teacher_s = self.estimate(tcfg).total_s
        return replace(est, train_s=est.train_s * self.SAFETY * left, eval_s=est.eval_s * self.SAFETY * left,
                       teacher_s=teacher_s)


def describe_kind(resolved: dict) -> str:
    """A kind of run in a few words: its method, architectures and cohort (``kd, seed_vgg_student``)."""
    arch = resolved.get("arch")
    words = [str(resolved.get("method")), ", ".join(arch) if isinstance(arch, list) else str(arch)]
    cohort = int(resolved.get("cohort") or 1)
    if cohort > 1:
        words.append(f"cohort {cohort}")
    return ", ".join(words)


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h} h {m:02d} min"
    if m:
        return f"{m} min {s:02d} s"
    return f"{s} s"
