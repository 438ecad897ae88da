"""Executing a list of run configs on this machine: in order in this process (``local``), or
one process per GPU. SLURM jobs are ``slurm.py``'s."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..core.progress import count_runs, progress
from ..training.engine import TrainingDiverged
from .request import StudyRequest


def run_local(configs: list[dict], runner, log: Callable[[str], None],
              time_budget_s: float | None = None,
              estimate: Callable[[dict], float] | None = None) -> tuple[list[str], int]:
    """Run in order; a diverged run is recorded as failed and the others go on.

    With ``time_budget_s``, no run is started that would end past the budget by the larger
    of ``estimate(config)`` (seconds, measured on this machine before the run) and the
    longest run of the same method and architectures seen so far in this call, and the
    runs after it are left too, so the study stays in its seeds-outermost order; a rerun
    continues. Returns the errors and the number of runs left."""
    errors: list[str] = []
    start, longest = time.monotonic(), {}
    with progress(total=len(configs), desc="study", unit="run", leave=True) as bar:
        for i, cfg in enumerate(configs, 1):
            kind = (cfg["method"], tuple(cfg["arch"]))
            elapsed = time.monotonic() - start
            need = longest.get(kind, 0.0)
            if time_budget_s is not None and estimate is not None:
                need = max(need, estimate(cfg))
            if time_budget_s is not None and elapsed + need > time_budget_s:
                left = len(configs) - i + 1
                log(f"time budget of {time_budget_s:.0f} s: {elapsed:.0f} s spent, the next run needs about "
                    f"{need:.0f} s; {count_runs(left)} left (run the same command again to continue)")
                return errors, left
            log(f"[{i}/{len(configs)}] {cfg['method']} {','.join(cfg['arch'])} seed {cfg['seed']}")
            t0 = time.monotonic()
            try:
                runner.run(cfg)
            except TrainingDiverged as e:
                errors.append(str(e))
                log(f"run failed: {e}")
            longest[kind] = max(longest.get(kind, 0.0), time.monotonic() - t0)
            bar.update(1)
    return errors, 0


def run_per_gpu(request: StudyRequest, gpus: int) -> list[str]:
    """One ``replicate`` process per GPU (``CUDA_VISIBLE_DEVICES=i``), each asked ``request``
    on the seeds i, i+N, ... of the study (``--shard i/N``) under the parent's study lock; the
    errors."""
    import os
    import subprocess
    import sys

    base = [sys.executable, "-m", "mutualbench.cli", "replicate", str(request.spec_path), "--profile", request.profile,
            "--out", str(request.out), "--device", "cuda"]
    base += ["--data", request.data] if request.data else []
    base += ["--seeds", str(request.seeds)] if request.seeds is not None else []
    base += ["--data-root", str(request.data_root)] if request.data_root is not None else []
    if request.ablations is False:
        base += ["--no-ablations"]
    elif request.ablations is not True:
        base += ["--ablations", ",".join(request.ablations)]
    base += ["--arms", ",".join(request.arms)] if request.arms else []
    procs = [subprocess.Popen(base + ["--shard", f"{i}/{gpus}", "--no-report"],
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": str(i)}) for i in range(gpus)]
    codes = [p.wait() for p in procs]
    return [f"GPU process {i} exited {c}" for i, c in enumerate(codes) if c]
