"""A study on a SLURM cluster through submitit: every run submitted at once, fire and forget.

``submit_study`` submits the runs without a teacher (and the teachers the others need) as one
job array, then the runs that learn from a teacher as one array per teacher, each with an
``afterok`` dependency on its teacher's job, and records which job runs which run in
``<study>/runs/slurm/jobs.json``. Nothing waits: ``study_status`` (``mutualbench status``)
reads that file, the records and ``squeue``; ``wait_for_jobs`` (``replicate --wait``) polls the
same until no submitted run is pending or running.

A job stopped at its time limit (SLURM's ``USR2`` signal, 90 s before it) or preempted is
requeued, and the requeued job resumes the run from its last per-epoch checkpoint
(``run.py``), at most ``max_requeues`` times (``SLURM_RESTART_COUNT``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ..core.errors import UserError
from ..core.progress import count_runs
from ..methods import get_method
from ..methods.pretrain import uses_teacher
from ..storage.io_utils import atomic_write_json
from ..storage.records import complete_record, record_path

SLURM_DIR = "slurm"  # under the study's runs/: submitit's job folders and jobs.json
JOBS_FILE = "jobs.json"
JOBS_SCHEMA = 1
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING", "SUSPENDED"}
NEVER = "DependencyNeverSatisfied"  # squeue's reason for a job whose teacher's job failed
PENDING_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}


def jobs_path(runs_dir: Path) -> Path:
    return Path(runs_dir) / SLURM_DIR / JOBS_FILE


def load_jobs(runs_dir: Path) -> dict[str, dict]:
    """``{run_id: {"job_id", "log", "submitted_at", ...}}`` of the study's submitted runs."""
    import json

    path = jobs_path(runs_dir)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        assert isinstance(data, dict) and isinstance(data.get("runs"), dict)
        assert all(isinstance(v, dict) and isinstance(v.get("job_id"), str) for v in data["runs"].values())
    except (OSError, UnicodeDecodeError, ValueError, AssertionError) as e:
        raise UserError(f"{path}: unreadable job list ({type(e).__name__}); delete it, check `squeue --me` for "
                        "jobs still running, and submit the study again") from None
    return data["runs"]


class RunJob:
    """The callable a job runs: one run into the study's runs/ (``Runner.run``). Checkpointable
    for submitit: on its time limit or preemption it is requeued with the same arguments, and
    the run resumes from its per-epoch checkpoint."""

    def __init__(self, max_requeues: int) -> None:
        self.max_requeues = max_requeues

    def __call__(self, config: dict, out_dir: str, data_root: str | None, device: str) -> str:
        from ..training.run import Runner

        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if restarts > self.max_requeues:
            raise RuntimeError(f"the job was requeued {restarts} times, more than --max-requeues {self.max_requeues}; "
                               "submit the study again with a longer --time-min (the run resumes from its checkpoint)")
        # out_dir is a study's runs/: nothing the run writes may leave the study folder
        runner = Runner(Path(out_dir), data_root=Path(data_root) if data_root else None, device=device, log=print,
                        root=Path(out_dir).parent)
        return runner.run(config)["run_id"]

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on USR2 (time limit or preemption): requeue the same call; the
        run's own checkpoint, written after every epoch, holds the progress."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _sbatch_fix(message: str, partition: str | None, gpus: int, time_min: int) -> str:
    """What to change when sbatch refuses a job, from its message."""
    m = message.lower()
    if "partition" in m:
        names = _run_quiet(["sinfo", "-h", "-o", "%R"])
        known = f" ({', '.join(sorted(set(names.split())))})" if names else ""
        return f"give --partition one of this cluster's partitions{known}, or leave it out for the default one"
    if "gres" in m or "generic resource" in m or "gpu" in m:
        return (f"this partition has no GPUs to give for --gpus {gpus}: drop --gpus (no GPU is requested unless "
                "--device cuda), or choose a partition with GPUs with --partition")
    if "time limit" in m:
        limits = _run_quiet(["sinfo", "-h", "-o", "%P %l"])
        known = f" (partition and limit: {'; '.join(sorted(set(limits.splitlines())))})" if limits else ""
        return f"lower --time-min {time_min} to the partition's time limit{known}, or choose another --partition"
    if "account" in m or "qos" in m or "association" in m:
        return "check --slurm-option account=... / qos=... (`sacctmgr show assoc user=$USER` lists yours)"
    return "check --partition, --gpus, --time-min and every --slurm-option against the cluster's rules"


def _run_quiet(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _quiet_submitit() -> None:
    """submitit logs a warning for every status poll it cannot make (no accounting, sacct
    refuses); this command reads job states from squeue itself, so keep its logger quiet."""
    logging.getLogger("submitit").setLevel(logging.ERROR)


def slurm_options(pairs: list[str] | None) -> dict:
    """``--slurm-option KEY=VALUE`` (or a bare ``KEY`` for a flag) as sbatch options."""
    options = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        key = key.strip().lstrip("-")
        if not key or (eq and not value.strip()):
            raise UserError(f"--slurm-option {pair!r}: give KEY=VALUE (an sbatch option without its dashes, e.g. "
                            "account=myproject or constraint=a100) or a bare KEY for a flag (e.g. exclusive)")
        options[key] = value.strip() if eq else True
    return options


def check_available() -> None:
    """submitit and SLURM's commands are here (before any work)."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install 'mutualbench[slurm]'") from None
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise UserError("--launcher slurm: no SLURM here (sbatch and srun not found); run replicate on the "
                        "cluster's login node, or use --launcher local")


def make_executor(runs_dir: Path, *, partition: str | None, gpus: int, time_min: int, max_parallel: int | None,
                  max_requeues: int, setup: list[str] | None, options: dict | None):
    import submitit

    check_available()
    _quiet_submitit()
    executor = submitit.AutoExecutor(folder=str(Path(runs_dir) / SLURM_DIR / "%j"), cluster="slurm",
                                     slurm_max_num_timeout=max_requeues)
    params = {"timeout_min": time_min, "name": "mutualbench", "slurm_additional_parameters": {"requeue": True,
                                                                                               **(options or {})}}
    if gpus:
        params["gpus_per_node"] = gpus
    if partition:
        params["slurm_partition"] = partition
    if max_parallel:
        params["slurm_array_parallelism"] = max_parallel
    if setup:
        params["slurm_setup"] = list(setup)
    executor.update_parameters(**params)
    return executor


def submit_study(configs: list[dict], runner, *, data_root: Path | None, device: str, log: Callable[[str], None],
                 partition: str | None = None, gpus: int = 0, time_min: int = 60, max_parallel: int | None = None,
                 max_requeues: int = 3, setup: list[str] | None = None, options: dict | None = None) -> dict[str, str]:
    """Submit the runs ``configs`` (their records not complete) and return ``{run_id: job_id}``
    of the jobs submitted now. A run whose job is still pending or running is not submitted
    again. When sbatch refuses a job, the jobs this call submitted are cancelled and the
    refusal is a UserError naming SLURM's message and the fix."""
    from ..training.run import teacher_config

    runs_dir = runner.out_dir
    known = load_jobs(runs_dir)
    states = job_states(sorted({j["job_id"] for j in known.values()}))
    stuck = [j["job_id"] for j in known.values() if states.get(j["job_id"], ("", ""))[1] == NEVER]
    _cancel(stuck)  # waiting for a teacher's job that failed: submitted again below, after a new one
    live = {rid: j for rid, j in known.items() if j["job_id"] not in stuck
            and states.get(j["job_id"], ("", ""))[0] in RUNNING_STATES | PENDING_STATES}
    first, by_teacher, names = [], {}, {}
    for cfg in configs:
        _, rid, _, _ = runner.prepare(cfg)
        if rid in live:
            log(f"{rid}: already submitted as job {live[rid]['job_id']}, not submitted again")
            continue
        if rid in names:
            continue
        names[rid] = cfg
        if uses_teacher(get_method(cfg["method"]), cfg) and not (cfg["teacher"].get("checkpoint")):
            tcfg = teacher_config(cfg)
            _, t_rid, _, _ = runner.prepare(tcfg)
            by_teacher.setdefault(t_rid, []).append((rid, cfg))
            if not runner.has_weights(tcfg) and t_rid not in live and t_rid not in names:
                if complete_record(runs_dir, t_rid) is None:  # the teacher's own run, as a job of its own
                    names[t_rid] = tcfg
                    first.append((t_rid, tcfg))
        else:
            first.append((rid, cfg))
    # a teacher run that is also one of the study's runs is submitted once, in the first array
    first = list({rid: (rid, cfg) for rid, cfg in first}.values())
    executor = make_executor(runs_dir, partition=partition, gpus=gpus, time_min=time_min, max_parallel=max_parallel,
                             max_requeues=max_requeues, setup=setup, options=options)
    fn = RunJob(max_requeues)
    args = (str(runs_dir), str(data_root) if data_root else None, device)
    submitted: dict[str, object] = {}

    def submit(group: list[tuple[str, dict]], dependency: str | None) -> None:
        executor.update_parameters(slurm_additional_parameters={
            "requeue": True, **(options or {}), **({"dependency": dependency} if dependency else {})})
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                if len(group) == 1:
                    jobs = [executor.submit(fn, group[0][1], *args)]
                else:
                    with executor.batch():
                        jobs = [executor.submit(fn, cfg, *args) for _, cfg in group]
        except Exception as e:  # submitit.core.utils.FailedJobError: sbatch's message
            _cancel([str(j.job_id) for j in submitted.values()])
            message = "; ".join(line.removeprefix("sbatch: error: ").strip()
                                for line in str(e).strip().splitlines() if line.strip()) or type(e).__name__
            left = (f"the {count_runs(len(submitted))} submitted before it {'was' if len(submitted) == 1 else 'were'} "
                    "cancelled, so nothing is left submitted" if submitted else "nothing was submitted")
            raise UserError(f"sbatch refused the study's jobs ({message}); {_sbatch_fix(message, partition, gpus, time_min)}"
                            f"; {left}") from None
        for (rid, _), job in zip(group, jobs, strict=True):
            submitted[rid] = job

    if first:
        submit(first, None)
        ids = [str(submitted[rid].job_id) for rid, _ in first]
        log(f"submitted {count_runs(len(first))} without a teacher as job {_id_range(ids)}")
    for t_rid, group in by_teacher.items():
        job = submitted.get(t_rid)
        t_job = str(job.job_id) if job is not None else (live.get(t_rid) or {}).get("job_id")
        submit(group, f"afterok:{t_job}" if t_job else None)
        ids = [str(submitted[rid].job_id) for rid, _ in group]
        after = f", after the teacher's job {t_job}" if t_job else ""
        log(f"submitted {count_runs(len(group))} with teacher {t_rid} as job {_id_range(ids)}{after}")
    now = datetime.now(UTC).isoformat(timespec="seconds")
    entries = dict(known)
    for rid, job in submitted.items():
        entries[rid] = {"job_id": str(job.job_id), "log": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                        "submitted_at": now, "method": names[rid]["method"], "seed": names[rid]["seed"]}
    atomic_write_json(jobs_path(runs_dir), {"schema": JOBS_SCHEMA, "runs": entries}, root=Path(runs_dir).parent)
    return {rid: str(job.job_id) for rid, job in submitted.items()}


def _id_range(ids: list[str]) -> str:
    """``12_[0-3]`` for the tasks of one array, else the ids."""
    if len(ids) > 1 and all("_" in i for i in ids) and len({i.split("_")[0] for i in ids}) == 1:
        tasks = [i.split("_")[1] for i in ids]
        return f"{ids[0].split('_')[0]}_[{tasks[0]}-{tasks[-1]}]"
    return ", ".join(ids)


def _cancel(job_ids: list[str]) -> None:
    if job_ids:
        _run_quiet(["scancel", *job_ids])


def job_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """``{job_id: (state, reason)}`` from squeue for the jobs SLURM still knows (a job that
    ended some minutes ago is forgotten: then absent). Empty when squeue is unavailable."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    cmd = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r"]
    try:
        out = subprocess.run(cmd + ["-j", ",".join(job_ids)], capture_output=True, text=True, timeout=60)
        if out.returncode:  # some id SLURM no longer knows: every job of this user instead
            out = subprocess.run(cmd + ["-u", str(os.getuid())], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def accounting_note() -> str | None:
    """A one-line note when the cluster keeps no accounting (``sacct`` refuses): job states
    then come from squeue while SLURM remembers a job, and from the records after."""
    if shutil.which("sacct") is None:
        return None
    out = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=30)
    if out.returncode and "accounting storage is disabled" in (out.stderr or "").lower():
        return "note: this cluster keeps no job accounting; job states come from squeue and the run records"
    return None


def run_states(runs_dir: Path, run_ids: list[str]) -> dict[str, dict]:
    """Each run's state: ``complete``, ``failed`` (a failed record, or a job that ended
    without a complete one), ``running``, ``pending`` or ``not submitted``, with its job id,
    SLURM's pending reason and, for a failed job, its log file."""
    from ..storage.locks import LOCK, held_by_other
    from ..storage.records import read_record

    jobs = load_jobs(runs_dir)
    states = job_states(sorted({jobs[r]["job_id"] for r in run_ids if r in jobs}))
    out = {}
    for rid in run_ids:
        job = jobs.get(rid)
        info = {"job": job["job_id"] if job else "", "detail": ""}
        path = record_path(runs_dir, rid)
        record = None
        if path.exists():
            try:
                record = read_record(path)
            except UserError as e:
                record = {"status": "failed", "error": str(e)}
        state, reason = states.get(job["job_id"], ("", "")) if job else ("", "")
        if record is not None and record["status"] == "complete":
            info["state"] = "complete"
        elif state in RUNNING_STATES:
            info["state"] = "running"
        elif state in PENDING_STATES and reason == NEVER:
            info["state"] = "failed"
            info["detail"] = ("never starts: the job of its teacher's run failed; the same replicate command cancels "
                              "it and submits both again")
        elif state in PENDING_STATES:
            info["state"] = "pending"
            info["detail"] = "" if reason in ("None", "") else f"waiting: {reason}"
        elif job is None:
            live = held_by_other(Path(runs_dir) / rid / LOCK)
            info["state"] = "running" if live else ("failed" if record is not None else "not submitted")
            if record is not None and not live:
                info["detail"] = (record.get("error") or "")[:120]
        else:  # the job ended (or SLURM forgot it) without a complete record
            info["state"] = "failed"
            why = (record or {}).get("error") or _last_error(job.get("stderr")) or (
                f"job {state.lower()}" if state else "job ended without a record")
            if "timed-out too many times" in why:  # submitit's words for the bound
                why = ("stopped at its time limit once more than --max-requeues allows; submit the study again, with "
                       "a longer --time-min (the run resumes from its last checkpoint)")
            info["detail"] = f"{why[:160]}; log {job.get('stderr') or job.get('log')}"
        out[rid] = info
    return out


def _last_error(log: str | None) -> str:
    """The last line of a job's error log that names an exception, if any."""
    try:
        lines = Path(log).read_text(encoding="utf-8", errors="replace").splitlines() if log else []
    except OSError:
        return ""
    errors = [ln.strip() for ln in lines if ln.strip() and ln.split(":")[0].strip().endswith(("Error", "Exception"))]
    return errors[-1] if errors else ""


POLL_ENV = "MUTUALBENCH_SLURM_POLL_S"  # seconds between squeue polls of --wait (default 10; tests: less)


def poll_seconds() -> float:
    """``$MUTUALBENCH_SLURM_POLL_S`` (default 10): checked by ``replicate --wait`` before any job
    is submitted, so that a typo cannot end the wait after the jobs are out."""
    raw = os.environ.get(POLL_ENV) or "10"
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{POLL_ENV}={raw!r} is not a number of seconds > 0; unset it (default 10) or set it to e.g. 30")
    return value


def wait_for_jobs(runs_dir: Path, run_ids: list[str], log: Callable[[str], None], poll_s: float | None = None) -> list[str]:
    """Block until none of ``run_ids`` is pending or running; the errors of those that failed."""
    poll_s = poll_s if poll_s is not None else poll_seconds()
    last = None
    while True:
        states = run_states(runs_dir, run_ids)
        counts = {s: sum(v["state"] == s for v in states.values()) for s in ("complete", "running", "pending", "failed")}
        if counts != last:
            log(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no runs")
            last = counts
        if not counts["running"] and not counts["pending"]:
            return [f"run {rid} (job {v['job']}) failed: {v['detail']}" for rid, v in states.items()
                    if v["state"] in ("failed", "not submitted")]
        time.sleep(poll_s)
