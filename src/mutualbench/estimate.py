"""How long a run will take on this machine, measured rather than guessed.

``measure_run_seconds`` builds the run's models and stages exactly as training does
(``assembly.assemble``; a
teacher, if the method needs one, is a freshly initialised model of the teacher's
architecture: same cost, no training), times a few real training steps of every stage
after a few warm-up steps, and one test batch of every evaluated model, then scales by the
run's steps and epochs. It costs seconds, touches no output file and leaves the global
RNG state as it found it. The time budget of ``replicate`` and its plan use it, preferring the time a complete run of
the same kind (another seed) took on the same kind of machine when the output folder holds
one (its median epoch, see ``recorded_estimate``): a measurement of a few steps is thrown
off by anything else the machine is doing."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .assembly import assemble, new_teacher
from .engine import synchronize
from .methods import get_method
from .methods.pretrain import uses_teacher

WARMUP_STEPS = 5  # the first steps pay for allocation and kernel selection
TIMED_STEPS = 10  # 5 left the estimate of two runs of equal cost up to 20% apart


@dataclass
class RunEstimate:
    train_s: float
    eval_s: float
    teacher_s: float = 0.0  # training the teacher first, when its weights are not there yet
    epochs: int = 0  # of the whole run, all stages (0: unknown)

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s + self.teacher_s


def _time(fn, device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def measure_run_seconds(runner, config: dict, steps: int = TIMED_STEPS) -> RunEstimate:
    """The estimated training and evaluation time of ``config`` run by ``runner``."""
    resolved, _, ds, _ = runner.prepare(config)
    device = runner.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        # an untrained teacher: its weights do not change the time of a step
        teacher = new_teacher(resolved, ds.num_classes, device=device) \
            if uses_teacher(get_method(resolved["method"]), resolved) else None
        run = assemble(resolved, ds, device, teacher)
        slots, stages, train_loader, test_loader = run.slots, run.stages, run.train_loader, run.test_loader
        batches_per_epoch = len(train_loader)
        train_s = eval_s = 0.0
        x_test, _ = next(iter(test_loader.epoch_batches(0)))
        test_batches = len(test_loader)
        for stage in stages:
            if stage.epochs == 0:
                continue
            stage.begin()
            stage.train_mode()
            times = []
            batches = train_loader.epoch_batches(0)
            for i in range(WARMUP_STEPS + steps):
                x, y = next(batches, (None, None))
                if x is None:
                    break
                t = _time(lambda x=x, y=y, stage=stage: stage.step(x, y), device)
                if i >= WARMUP_STEPS:
                    times.append(t)
            step_s = statistics.median(times) if times else 0.0
            train_s += step_s * batches_per_epoch * stage.epochs
            stage.sync()
            per_epoch_eval = 0.0
            for name in stage.eval_names:
                model = slots[name].module
                model.eval()
                with torch.no_grad():
                    per_epoch_eval += _time(lambda model=model: model(x_test), device) * test_batches
            eval_s += per_epoch_eval * stage.epochs
    return RunEstimate(train_s=train_s, eval_s=eval_s, epochs=sum(s.epochs for s in stages))


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
        return RunEstimate(float(t["train_s"]), float(t["eval_s"]), epochs=epochs)
    train_s = sum(statistics.median(float(r["train_s"]) for r in rows[s["name"]]) * int(s["epochs"]) for s in stages)
    eval_s = sum(statistics.median(float(r["eval_s"]) for r in rows[s["name"]]) * int(s["epochs"]) for s in stages)
    return RunEstimate(train_s, eval_s, epochs=epochs)


class RunTimer:
    """Estimates per run for one runner, measured once per kind of run (the config without
    its seed), plus the teacher's training when a run would have to train its teacher."""

    SAFETY = 1.15  # measured steps run warm; a whole run also pays for checkpoints and stragglers

    def __init__(self, runner) -> None:
        self.runner = runner
        self._cache: dict[str, RunEstimate] = {}
        self._recorded: dict[str, RunEstimate] | None = None

    @staticmethod
    def _kind(resolved: dict) -> str:
        from .config import canonical_json, without_later_defaults

        # without its seed, and the same kind as a record made before a later key existed
        return canonical_json(without_later_defaults({k: v for k, v in resolved.items() if k != "seed"}))

    def recorded(self) -> dict[str, RunEstimate]:
        """Times of complete runs in the output folder made on this kind of machine, by kind
        of run: a later seed of the same run takes what the earlier one took. A run resumed
        on another kind of machine (its ``segments``) did not take its time here: skipped."""
        if self._recorded is None:
            from .envinfo import MIXED, cpu_kind, device_name, record_machine_kind
            from .records import read_record

            here_device = device_name(self.runner.device)
            here_cpu = cpu_kind()
            self._recorded = {}
            for path in sorted(Path(self.runner.out_dir).glob("*.json")):
                try:
                    rec = read_record(path)
                except Exception:
                    continue
                env = rec.get("env") or {}
                cpu = env.get("cpu") or {}
                same = env.get("device") == here_device and cpu.get("isa") == here_cpu["isa"] \
                    and cpu.get("model") == here_cpu["model"] and MIXED not in record_machine_kind(rec)
                if rec["status"] != "complete" or not same:
                    continue
                self._recorded[self._kind(rec["config"])] = recorded_estimate(rec)
        return self._recorded

    def estimate(self, config: dict) -> RunEstimate:
        from .run import resolve, teacher_config

        key = self._kind(resolve(config))
        if key not in self._cache:
            self._cache[key] = self.recorded().get(key) or measure_run_seconds(self.runner, config)
        est = self._cache[key]
        # a run interrupted after some epochs resumes from its checkpoint: only the rest is to do
        _, rid, _, _ = self.runner.prepare(config)
        done = checkpointed_epochs(Path(self.runner.out_dir) / rid / "checkpoint.pt")
        left = max(0.0, 1.0 - done / est.epochs) if done and est.epochs else 1.0
        teacher_s = 0.0
        if uses_teacher(get_method(config["method"]), config) and not config["teacher"]["checkpoint"]:
            tcfg = teacher_config(config)
            if not self.runner.has_weights(tcfg):
                teacher_s = self.estimate(tcfg).total_s
        return RunEstimate(est.train_s * self.SAFETY * left, est.eval_s * self.SAFETY * left, teacher_s, est.epochs)


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h} h {m:02d} min"
    if m:
        return f"{m} min {s:02d} s"
    return f"{s} s"
