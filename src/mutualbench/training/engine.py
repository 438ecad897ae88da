"""The epoch loop shared by every stage of every method.

For each stage in order and each of its epochs: train on every batch (the stage performs
the updates), evaluate the stage's models on the test split, time both (synchronised on a
GPU), append a per-epoch curve entry (each model's mean training loss, and each of its loss
terms, e.g. ``ce`` and ``kl``, where the stage returns them), and write a checkpoint atomically. A run that finds
its checkpoint resumes from it to exactly the result it would have had: the loader's epoch
order is a function of (seed, epoch) and the checkpoint holds every model, optimizer,
schedule and RNG state. A non-finite loss stops the run with ``TrainingDiverged``.

Which machine trained which epochs is kept as the run's ``segments`` (one per process that
trained, each ``first_epoch``..``last_epoch`` with the ``segment`` description it was given:
machine kind, threads, torch, commit, memory layout), saved in the checkpoint: float32 rounds
differently on each kind of machine and in each layout, so a run resumed elsewhere or in
another layout says so, in a warning and in its record.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..core.errors import warn
from ..core.evaluation import evaluate, evaluate_all, evaluate_ensemble  # noqa: F401  (evaluate, evaluate_ensemble: re-exported)
from ..core.progress import progress
from ..methods.base import Stage, split_terms
from ..storage.io_utils import atomic_torch_save, move_aside

CHECKPOINT_FORMAT = 1
NAN_CHECK_EVERY = 50  # steps between finiteness checks (each one is a device sync)
# Testing hook: SIGKILL this process right after the N-th checkpoint it writes (counted over
# all runs of the process), to test resuming after a real kill.
FAULT_ENV = "MUTUALBENCH_FAULT_KILL_AFTER_EPOCHS"
_checkpoints_written = 0


NOT_RECORDED = "not recorded"  # the machine of epochs saved by a checkpoint that predates segments


def _unrecorded(global_epoch) -> list[dict]:
    """The segments of a checkpoint that predates them: its epochs, on an unrecorded machine."""
    n = global_epoch if isinstance(global_epoch, int) else 0
    return [{"first_epoch": 1, "last_epoch": n, "machine": NOT_RECORDED}] if n > 0 else []


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


class _Unusable(Exception):
    """A checkpoint that cannot be resumed from (the message says why)."""


def _usable_rng(rng: torch.Tensor) -> bool:
    """Whether ``rng`` is a CPU generator state this torch accepts (tried, then undone)."""
    now = torch.get_rng_state()
    if rng.dtype != now.dtype or rng.shape != now.shape:
        return False
    try:
        torch.set_rng_state(rng)
    except (RuntimeError, TypeError, ValueError):
        return False
    finally:
        torch.set_rng_state(now)
    return True


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# seconds between two epoch lines of one run (the first epoch's line comes after as long)
EPOCH_LINE_INTERVAL_S = 10.0


class Engine:
    def __init__(self, models: dict[str, nn.Module], stages: list[Stage], train_loader, test_loader, *,
                 device: torch.device, checkpoint_path: Path | None = None, run_id: str = "",
                 desc: str = "", log: Callable[[str], None] | None = None, segment: dict | None = None,
                 root: Path | None = None) -> None:
        self.models, self.stages = models, stages
        self.root = root  # the folder the checkpoint must stay in (``io_utils.safe_target``), when given
        self.train_loader, self.test_loader = train_loader, test_loader
        self.device, self.checkpoint_path, self.run_id = device, checkpoint_path, run_id
        self.desc, self.log = desc, log or (lambda msg: None)
        self.curves: list[dict] = []
        self.timings = {"train_s": 0.0, "eval_s": 0.0}
        self.resumed_from_epoch = 0
        self.segment = dict(segment) if segment else None  # this process's machine, threads, torch, commit
        self.segments: list[dict] = []
        self._mine: dict | None = None  # this process's entry of ``segments``, once it trains an epoch
        self._last_line = 0.0  # when the last epoch line was logged (perf_counter; run() starts the clock)

    # -------------------------------------------------------------- checkpoints
    def _save(self, stage_index: int, stage_epoch: int, global_epoch: int) -> None:
        if self.checkpoint_path is None:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "run_id": self.run_id,
            "stage_index": stage_index,
            "stage_epoch": stage_epoch,
            "global_epoch": global_epoch,
            "models": {n: m.state_dict() for n, m in self.models.items()},
            "stage_state": self.stages[stage_index].state_dict(),
            "curves": self.curves,
            "timings": self.timings,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "segments": self.segments,
        }
        atomic_torch_save(self.checkpoint_path, state, root=self.root)
        global _checkpoints_written
        _checkpoints_written += 1
        fault = os.environ.get(FAULT_ENV)
        if fault and _checkpoints_written >= int(fault):
            os.kill(os.getpid(), signal.SIGKILL)

    def _load(self) -> dict | None:
        """The checkpoint's state, applied to the models and RNGs; None to start from the
        beginning. An unreadable, empty or malformed checkpoint (a disk fault, a copy cut
        short) is moved aside, kept as ``checkpoint.pt.unreadable-<UTC time>``, with a
        warning: the run then starts from the beginning (the only other state there is)."""
        path = self.checkpoint_path
        if path is None or not path.exists():
            return None
        try:
            state = self._read_checkpoint(path)
            if state is None:
                return None
        except _Unusable as e:
            self._move_aside(e)
            return None
        self._fresh = (torch.get_rng_state(), self.curves, self.timings, self.segments)  # what starting over restores
        self.curves, self.timings = list(state["curves"]), dict(state["timings"])
        self.segments = [dict(s) for s in state["segments"]]
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return state

    def _move_aside(self, why: object) -> None:
        path = self.checkpoint_path
        aside = move_aside(path, root=self.root)
        warn(f"checkpoint {path} is unusable ({why}); moved it to {aside} and starting {self.desc or self.run_id} "
             "from the beginning")

    def _start_over(self, why: str) -> None:
        """Undo a resume whose checkpoint proved unusable only once applied (its stage state does
        not fit the stage): the checkpoint is moved aside, and the models, RNG, curves and
        segments are as before it was read, so the run then equals one that never saw it."""
        self._move_aside(why)
        for n, m in self.models.items():
            m.load_state_dict(self._initial[n])
        rng, self.curves, self.timings, self.segments = self._fresh
        torch.set_rng_state(rng)
        self.resumed_from_epoch = 0

    def _read_checkpoint(self, path: Path) -> dict | None:
        """Load ``path`` into the models (None: another run's or format's checkpoint, left
        unused); ``_Unusable`` when it cannot be read, and then no model is changed."""
        try:
            if path.stat().st_size == 0:
                raise _Unusable("empty: 0 bytes")
            state = torch.load(path, map_location="cpu", weights_only=True)
        except _Unusable:
            raise
        except Exception as e:  # truncated, garbage, not a torch file, unreadable
            raise _Unusable(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}") from None
        if not isinstance(state, dict):
            raise _Unusable(f"a {type(state).__name__}, not a checkpoint")
        if state.get("format") != CHECKPOINT_FORMAT or state.get("run_id") != self.run_id:
            return None
        fields = {"stage_index": int, "stage_epoch": int, "global_epoch": int, "models": dict, "stage_state": dict,
                  "curves": list, "timings": dict, "rng": torch.Tensor, "cuda_rng": list}
        wrong = [k for k, t in fields.items() if not isinstance(state.get(k), t)]
        if not wrong:
            wrong += [f"models.{n}" for n in self.models if not isinstance(state["models"].get(n), dict)]
            if not 0 <= state["stage_index"] < len(self.stages):
                wrong.append("stage_index")
            if not _usable_rng(state["rng"]):
                wrong.append("rng")
        segments = state.setdefault("segments", _unrecorded(state.get("global_epoch")))
        if not isinstance(segments, list) or not all(
                isinstance(s, dict) and isinstance(s.get("machine"), str) and isinstance(s.get("first_epoch"), int)
                and isinstance(s.get("last_epoch"), int) and isinstance(s.get("layout", ""), str) for s in segments):
            wrong.append("segments")
        if wrong:
            raise _Unusable(f"wrong or missing {', '.join(wrong)}")
        backup = {n: copy.deepcopy(m.state_dict()) for n, m in self.models.items()}
        try:
            for n, m in self.models.items():
                m.load_state_dict(state["models"][n])
        except Exception as e:
            for n, m in self.models.items():
                m.load_state_dict(backup[n])
            raise _Unusable(f"does not fit the run's models: {(str(e).splitlines() or [''])[0][:200]}") from None
        self._initial = backup
        return state

    # -------------------------------------------------------------- segments
    def _note_epoch(self, global_epoch: int) -> None:
        """Epoch ``global_epoch`` (1-based) was trained by this process: extend its segment,
        started with the first epoch it trains (a process that trains none adds none)."""
        if self.segment is None:
            return
        if self._mine is None:
            self._mine = {"first_epoch": global_epoch, "last_epoch": global_epoch, **self.segment}
            self.segments.append(self._mine)
        self._mine["last_epoch"] = global_epoch

    def _warn_if_elsewhere(self, global_epoch: int) -> None:
        """One line when the epochs behind the checkpoint ran on another kind of machine, with
        another thread count, another torch or in another memory layout than this process (or
        on a machine or in a layout not recorded)."""
        if self.segment is None or global_epoch == 0:
            return
        keys = ("machine", "threads", "torch") + (("layout",) if "layout" in self.segment else ())
        here = {k: self.segment.get(k) for k in keys}
        before = [s for s in self.segments if {k: s.get(k) for k in keys} != here]
        if not before:
            return

        def describe(s: dict) -> str:
            if s.get("machine") == NOT_RECORDED:
                return "a machine the checkpoint does not record"
            where = f"{s.get('machine')}, {s.get('threads')} threads, torch {s.get('torch')}"
            if "layout" in keys:
                where += f", {s['layout']}" if s.get("layout") else ", a layout the checkpoint does not record"
            return where

        then = "; ".join(f"epochs {s['first_epoch']}-{s['last_epoch']} on {describe(s)}" for s in before)
        warn(f"{self.desc or self.run_id} resumes after epoch {global_epoch} on {describe(self.segment)}, but "
             f"{then}: each rounds differently, so the run will not match one made on a single machine in one "
             "layout; its record's segments say which epochs ran where")

    # -------------------------------------------------------------- the loop
    def run(self) -> list[dict]:
        self._last_line = time.perf_counter()
        state = self._load()
        start_stage, start_epoch, global_epoch = 0, 0, 0
        if state is not None:
            start_stage, start_epoch, global_epoch = state["stage_index"], state["stage_epoch"], state["global_epoch"]
            self.resumed_from_epoch = global_epoch
            self.log(f"resuming {self.desc} after epoch {global_epoch} from {self.checkpoint_path}")
            self._warn_if_elsewhere(global_epoch)
        for si, stage in enumerate(self.stages):
            if si < start_stage:
                continue
            stage.begin()
            if state is not None and si == start_stage:
                try:
                    stage.load_state_dict(state["stage_state"])
                except Exception as e:  # damaged optimizer or regressor state: no epoch has run yet
                    self._start_over(f"its stage state does not fit the stage: {type(e).__name__}: "
                                     f"{(str(e).splitlines() or [''])[0][:200]}")
                    return self.run()
            first = start_epoch if si == start_stage else 0
            for epoch in range(first, stage.epochs):
                self._train_epoch(stage, epoch, global_epoch)
                global_epoch += 1
                self._note_epoch(global_epoch)
                self._save(si, epoch + 1, global_epoch)
            stage.finish()
        return self.curves

    def _train_epoch(self, stage: Stage, epoch: int, global_epoch: int) -> None:
        stage.begin_epoch(epoch, global_epoch)  # also on resume: the stage knows where it is
        stage.train_mode()
        sums: dict[str, torch.Tensor] = {}
        batches = self.train_loader.epoch_batches(global_epoch)
        bar = progress(total=len(self.train_loader), desc=f"{self.desc} {stage.name} {epoch + 1}/{stage.epochs}", unit="batch")
        synchronize(self.device)
        t0 = time.perf_counter()
        steps = 0
        for x, y in batches:
            losses = stage.step(x, y)
            for name, value in losses.items():
                sums[name] = sums[name] + value if name in sums else value.clone()
            steps += 1
            if steps % NAN_CHECK_EVERY == 0:
                self._check_finite(sums, stage, epoch, steps)
            bar.update(1)
        synchronize(self.device)
        train_s = time.perf_counter() - t0
        bar.close()
        self._check_finite(sums, stage, epoch, steps)
        stage.end_epoch()
        stage.sync()
        t1 = time.perf_counter()
        accs = evaluate_all({name: self.models[name] for name in stage.eval_names}, self.test_loader)
        synchronize(self.device)
        eval_s = time.perf_counter() - t1
        self.timings["train_s"] += train_s
        self.timings["eval_s"] += eval_s
        totals, terms = split_terms(sums)
        entry = {
            "epoch": global_epoch + 1,
            "stage": stage.name,
            "stage_epoch": epoch + 1,
            "train_loss": {n: float(v.item()) / max(steps, 1) for n, v in totals.items()},
            "test_acc": accs,
            "train_s": round(train_s, 4),
            "eval_s": round(eval_s, 4),
            "images_per_s": round(self.train_loader.num_samples / train_s, 1) if train_s > 0 else None,
        }
        if terms:  # each loss term per model, averaged over the epoch's batches like the totals
            entry["train_loss_terms"] = {n: {t: float(v.item()) / max(steps, 1) for t, v in ts.items()}
                                         for n, ts in terms.items()}
        self.curves.append(entry)
        # an epoch's line is progress on long work: at most one line per EPOCH_LINE_INTERVAL_S,
        # so a long run logs every epoch and a run of second-long epochs (a smoke profile's)
        # only its closing line (run.Runner)
        now = time.perf_counter()
        if now - self._last_line >= EPOCH_LINE_INTERVAL_S:
            self._last_line = now
            accs_txt = " ".join(f"{n}={a:.2f}%" for n, a in accs.items())
            self.log(f"{self.desc} {stage.name} epoch {epoch + 1}/{stage.epochs}: {accs_txt} ({train_s:.1f}s train)")

    def _check_finite(self, sums: dict[str, torch.Tensor], stage: Stage, epoch: int, steps: int) -> None:
        for name, value in sums.items():
            v = float(value.item())
            if not math.isfinite(v):
                raise TrainingDiverged(
                    f"non-finite loss ({v}) for {name} in stage {stage.name!r}, epoch {epoch + 1}, by step {steps}; "
                    "lower the learning rate, use --set loss.reduction=mean, or check the data"
                )
