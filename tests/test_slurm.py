"""``--launcher slurm`` against a real one-node SLURM cluster (``slurm_cluster`` fixture:
munged, slurmctld and slurmd on this host, no GPUs, accounting off); skipped without SLURM."""

import json
import subprocess
import time

import pytest

from mutualbench.cli import main

SPEC = """
[study]
name = "tiny"
data = "tiny3"
classes = ["ant", "bee", "cow"]
seeds = 1

[defaults]
"teacher.arch" = "seed_vgg_teacher"
"loss.reduction" = "sum"
"kd.temperature" = 1.0
"data.batch_size" = 16
"train.epochs" = 1
"teacher.train.epochs" = 1

[[arms]]
name = "student"
method = "individual"
arch = "seed_vgg_student"

[[arms]]
name = "kd"
method = "kd"
arch = "seed_vgg_student"

[[arms]]
name = "long"
method = "individual"
arch = "seed_vgg_student"
set = { "train.epochs" = 8, "data.batch_size" = 8 }

[profiles.smoke]
tolerance = 0.5
set = { "train.epochs" = 2 }
"""

TIMING = ("train_s", "eval_s", "images_per_s")


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(SPEC)
    return path


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setenv("MUTUALBENCH_SLURM_POLL_S", "0.5")
    import torch

    # one thread in the jobs (they inherit it) and in this process's local runs: the same arithmetic,
    # and the jobs running side by side do not oversubscribe the cores
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def replicate(spec, data, root, out, *extra):
    return main(["replicate", str(spec), "--profile", "smoke", "--data", str(data), "--data-root", str(root),
                 "--out", str(out), "--device", "cpu", "--quiet", *extra])


def records(out):
    return {p.name: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}


def same_result(a: dict, b: dict) -> None:
    """Two records of one run agree bit for bit in everything but timings and provenance."""
    assert a["run_id"] == b["run_id"] and a["config"] == b["config"] and a["status"] == b["status"] == "complete"
    assert a["models"] == b["models"]
    assert [{k: v for k, v in e.items() if k not in TIMING} for e in a["curves"]] == \
           [{k: v for k, v in e.items() if k not in TIMING} for e in b["curves"]]
    assert (a.get("ensemble") or {}).get("final_test_acc") == (b.get("ensemble") or {}).get("final_test_acc")


def status_rows(text: str) -> dict[str, list[str]]:
    """``mutualbench status``'s table: {arm: [run id, state, job, detail]}."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 5 and cells[0] not in ("run id", "") and not set(cells[0]) <= set("-"):
            rows[cells[1]] = [cells[0], *cells[2:]]
    return rows


def squeue(*args) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", *args], capture_output=True, text=True, check=True)
    return out.stdout.split()


def wait_until(condition, timeout_s=90, what="condition"):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_fire_and_forget_status_then_wait_matches_local(slurm_cluster, spec, tiny_cifar, tmp_path, capfd):
    data, root = tiny_cifar
    out, local = tmp_path / "slurm-study", tmp_path / "local-study"
    t0 = time.monotonic()
    assert replicate(spec, data, root, out, "--arms", "student,kd", "--launcher", "slurm", "--max-parallel", "1",
                     "--slurm-setup", "export MUTUALBENCH_SETUP_RAN=1", "--slurm-option", "comment=tiny") == 0
    returned_after = time.monotonic() - t0
    printed = capfd.readouterr().out
    assert printed.startswith("submitted 3 runs to SLURM")  # student, kd, and kd's teacher as its own job
    jobs = json.loads((out / "runs" / "slurm" / "jobs.json").read_text())["runs"]
    assert len(jobs) == 3 and not (out / "table.md").exists()
    by_method = {j["method"]: j for j in jobs.values()}
    assert set(by_method) == {"individual", "kd"} and len([j for j in jobs.values() if j["method"] == "individual"]) == 2
    kd_job = by_method["kd"]["job_id"]
    planned = {e["run_id"] for e in json.loads((out / "study.json").read_text())["runs"]}
    (teacher_rid,) = set(jobs) - planned  # the teacher's run is no arm of the study: kd's job trains nothing twice
    show = slurm_cluster.scontrol("show", "job", kd_job)
    assert f"Dependency=afterok:{jobs[teacher_rid]['job_id']}" in show  # the kd run waits for its teacher's job
    first = next(j for j in jobs.values() if j["method"] == "individual")
    array_id = first["job_id"].split("_")[0]
    array = slurm_cluster.scontrol("show", "job", array_id)
    assert "ArrayTaskThrottle=1" in array and "Comment=tiny" in array and "Requeue=1" in array
    assert "TRES=cpu=1,mem" in array and "gres/gpu" not in array  # no GPU asked off CUDA
    script = next((out / "runs" / "slurm").rglob("*_submission.sh")).read_text()
    assert "export MUTUALBENCH_SETUP_RAN=1" in script and "--gpus" not in script

    assert main(["status", str(out)]) == 0
    rows = status_rows(capfd.readouterr().out)
    assert len(rows) == 3 and rows["long seed 0"][1:] == ["not submitted", "", ""]  # the arm not selected
    assert rows["kd seed 0"][2] == kd_job and rows["kd seed 0"][1] in ("pending", "running", "complete")
    if rows["kd seed 0"][1] == "pending":
        assert rows["kd seed 0"][3] in ("waiting: Dependency", "waiting: None", "")

    # the same command with --wait submits nothing again, blocks until the jobs end, then writes the tables
    assert replicate(spec, data, root, out, "--arms", "student,kd", "--launcher", "slurm", "--wait") == 0
    printed = capfd.readouterr()
    assert (out / "table.md").exists() and "missing from" not in printed.out
    assert printed.err == ""  # no third-party noise (submitit's sacct warnings, sacct's own complaint)
    recs = records(out)
    assert len(recs) == 3 and all(r["status"] == "complete" for r in recs.values())
    assert {r["run_id"]: r for r in recs.values()}[teacher_rid]["method"] == "individual"
    assert json.loads((out / "runs" / "slurm" / "jobs.json").read_text())["runs"] == jobs  # nothing resubmitted
    assert returned_after < 30  # returned after submitting, long before the jobs had run

    assert main(["status", str(out)]) == 0
    status = capfd.readouterr().out
    assert status.rstrip().endswith(": 2 complete, 1 not submitted (of 3 runs)"), status
    rows = status_rows(status)
    assert [rows[a][1:3] for a in ("student seed 0", "kd seed 0")] == [["complete", jobs[rows[a][0]]["job_id"]]
                                                                      for a in ("student seed 0", "kd seed 0")]

    assert replicate(spec, data, root, local, "--arms", "student,kd") == 0  # the same study, local launcher
    local_recs = records(local)
    assert sorted(local_recs) == sorted(recs)  # the same run ids
    for name, rec in recs.items():
        same_result(rec, local_recs[name])
    assert main(["table", str(out)]) == 0


@pytest.mark.parametrize("extra,message", [
    (("--partition", "nope"), "sbatch refused the study's jobs (invalid partition specified: nope; Batch job "
                              "submission failed: Invalid partition name specified); give --partition one of this "
                              "cluster's partitions (debug)"),
    (("--gpus", "1"), "sbatch refused the study's jobs (Invalid generic resource (gres) specification); this "
                      "partition has no GPUs to give for --gpus 1"),
    (("--time-min", "200"), "sbatch refused the study's jobs (Batch job submission failed: Requested time limit is "
                           "invalid (missing or exceeds some limit)); lower --time-min 200 to the partition's time "
                           "limit (partition and limit: debug* 2:00:00)"),
])
def test_sbatch_refusal_is_one_line_and_submits_nothing(slurm_cluster, spec, tiny_cifar, tmp_path, capsys, extra,
                                                        message):
    data, root = tiny_cifar
    before = squeue("-o", "%i")
    assert replicate(spec, data, root, tmp_path / "s", "--arms", "student,kd", "--launcher", "slurm", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert err.rstrip().endswith("nothing was submitted")
    assert squeue("-o", "%i") == before
    assert not (tmp_path / "s" / "runs" / "slurm" / "jobs.json").exists()


def test_slurm_options_checked_before_anything(spec, tiny_cifar, tmp_path, capsys):
    data, root = tiny_cifar
    assert replicate(spec, data, root, tmp_path / "s", "--wait") == 2
    assert capsys.readouterr().err == "error: --wait applies to --launcher slurm; add --launcher slurm, or drop it\n"
    assert replicate(spec, data, root, tmp_path / "s", "--launcher", "slurm", "--slurm-option", "account=") == 2
    assert "--slurm-option 'account=': give KEY=VALUE" in capsys.readouterr().err
    assert replicate(spec, data, root, tmp_path / "s", "--launcher", "slurm", "--max-parallel", "0") == 2
    assert capsys.readouterr().err == "error: --max-parallel 0 is not allowed; give a number of at least 1\n"
    assert not (tmp_path / "s").exists()


def _checkpointed(out, rid):
    return (out / "runs" / rid / "checkpoint.pt").exists()


def _long_run(spec, data, root, out, *extra):
    assert replicate(spec, data, root, out, "--arms", "long", "--launcher", "slurm", "--time-min", "10", *extra) == 0
    (rid, job), = json.loads((out / "runs" / "slurm" / "jobs.json").read_text())["runs"].items()
    return rid, job


def test_time_limit_and_preemption_requeue_and_resume(slurm_cluster, spec, tiny_cifar, tmp_path, capsys):
    """SLURM's warning before the time limit (USR2, as --signal=USR2@90 sends it) and a requeue
    by the scheduler (as preemption does) each stop the job; it is requeued, resumes from the
    run's last checkpoint, and its record equals an uninterrupted run's."""
    data, root = tiny_cifar
    out, local = tmp_path / "slurm", tmp_path / "local"
    rid, job = _long_run(spec, data, root, out)
    wait_until(lambda: _checkpointed(out, rid), what="the first checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job["job_id"]], check=True)  # the time limit is near
    wait_until(lambda: "Restarts=1" in slurm_cluster.scontrol("show", "job", job["job_id"]), what="the requeue")
    wait_until(lambda: "JobState=RUNNING" in slurm_cluster.scontrol("show", "job", job["job_id"])
               and _checkpointed(out, rid), what="the second run of the job")
    subprocess.run(["scontrol", "requeue", job["job_id"]], check=True)  # as a preemption does
    assert replicate(spec, data, root, out, "--arms", "long", "--launcher", "slurm", "--wait") == 0
    capsys.readouterr()
    rec = records(out)[f"{rid}.json"]
    assert rec["status"] == "complete" and rec["resumed_from_epoch"] >= 1
    assert "Restarts=2" in slurm_cluster.scontrol("show", "job", job["job_id"])
    assert replicate(spec, data, root, local, "--arms", "long") == 0
    same_result(rec, records(local)[f"{rid}.json"])


def test_requeues_are_bounded_and_status_names_the_failed_log(slurm_cluster, spec, tiny_cifar, tmp_path, capsys):
    data, root = tiny_cifar
    out = tmp_path / "slurm"
    rid, job = _long_run(spec, data, root, out, "--max-requeues", "0")
    wait_until(lambda: _checkpointed(out, rid), what="the first checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job["job_id"]], check=True)
    assert replicate(spec, data, root, out, "--arms", "long", "--launcher", "slurm", "--wait") == 1
    err = capsys.readouterr().err
    assert f"error: run {rid} (job {job['job_id']}) failed: " in err and "stopped at its time limit once more than --max-requeues allows" in err
    assert main(["status", str(out)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(f"| {rid}"))
    assert " failed " in line and job["stderr"] in line
    assert main(["table", str(out)]) == 2
    assert capsys.readouterr().err == (f"error: {out}: no complete run yet, so no table; `mutualbench status {out}` "
                                       "shows where the runs are\n")


@pytest.mark.cifar
def test_smoke_study_through_slurm_matches_the_local_launcher(slurm_cluster, shared_cifar, tmp_path, capsys):
    """The blog's study (smoke profile, one seed, the kd arm: a run after its teacher's) through
    SLURM gives the run ids and records (accuracies, losses, curves) of the local launcher."""
    from pathlib import Path

    from conftest import SHARED_CIFAR

    root = shared_cifar.cache_path.parent.parent
    spec = Path(__file__).resolve().parents[1] / "replication" / "seed_blog.toml"
    common = ["replicate", str(spec), "--profile", "smoke", "--seeds", "1", "--arms", "kd", "--no-ablations",
              "--data", str(SHARED_CIFAR), "--data-root", str(root), "--device", "cpu", "--quiet"]
    slurm_out, local_out = tmp_path / "slurm", tmp_path / "local"
    assert main([*common, "--out", str(slurm_out), "--launcher", "slurm", "--wait"]) == 0
    out = capsys.readouterr().out
    # only the selected arm's runs are compared with the stored (float64) smoke set, run by run
    assert "reproduced exactly: 1 run (seed 0); seed 1 is on one side only, not compared" in out
    assert "no complete run of this id" not in out
    # the exact tier's verdict is the answer: the table is written, not printed
    assert f"wrote {slurm_out / 'table.md'} and " in out and "| arm " not in out and len(out.splitlines()) <= 3
    assert main([*common, "--out", str(local_out)]) == 0
    slurm_recs, local_recs = records(slurm_out), records(local_out)
    assert sorted(slurm_recs) == sorted(local_recs) and len(local_recs) == 2  # kd and its teacher's run
    for name, rec in slurm_recs.items():
        same_result(rec, local_recs[name])
        assert rec["env"]["cpu"] == local_recs[name]["env"]["cpu"]  # one machine: bit for bit


def test_a_refusal_after_some_jobs_cancels_them(slurm_cluster, spec, tiny_cifar, tmp_path, capsys, monkeypatch):
    """The runs with a teacher are submitted after the others: when sbatch refuses those, the
    jobs already submitted are cancelled and no job list is written."""
    import submitit.slurm.slurm as submitit_slurm
    from submitit.core.utils import FailedJobError

    real, calls = submitit_slurm.SlurmExecutor._submit_command, []

    def second_refused(self, command):
        calls.append(command)
        if len(calls) == 3:
            raise FailedJobError("sbatch: error: Batch job submission failed: Invalid qos specification")
        output = real(self, command)
        calls.append(output)
        return output

    monkeypatch.setattr(submitit_slurm.SlurmExecutor, "_submit_command", second_refused)
    data, root = tiny_cifar
    assert replicate(spec, data, root, tmp_path / "s", "--arms", "student,kd", "--launcher", "slurm") == 2
    err = capsys.readouterr().err
    assert err == ("error: sbatch refused the study's jobs (Batch job submission failed: Invalid qos specification); "
                   "check --slurm-option account=... / qos=... (`sacctmgr show assoc user=$USER` lists yours); the 2 "
                   "runs submitted before it were cancelled, so nothing is left submitted\n")
    array_id = str(calls[1].job_id).split("_")[0]  # the first array, submitted
    wait_until(lambda: set(squeue("-j", array_id, "-o", "%T")) <= {"CANCELLED"}, what="the cancellation")
    assert not (tmp_path / "s" / "runs" / "slurm" / "jobs.json").exists()


def test_no_slurm_here_is_one_line_before_anything(spec, tiny_cifar, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    data, root = tiny_cifar
    assert replicate(spec, data, root, tmp_path / "s", "--launcher", "slurm") == 2
    assert capsys.readouterr().err == ("error: --launcher slurm: no SLURM here (sbatch and srun not found); run "
                                       "replicate on the cluster's login node, or use --launcher local\n")
    assert not (tmp_path / "s").exists()


def test_a_requeued_job_takes_over_the_run_lock_of_its_earlier_run(tmp_path, monkeypatch):
    """A lock left by a killed earlier run of the same SLURM job, even from another node, is
    not held; one of another job on another node is."""
    from mutualbench.storage.locks import holder_is_live

    monkeypatch.setenv("SLURM_JOB_ID", "41")
    assert not holder_is_live({"pid": 1, "host": "node-7", "slurm_job": "41"})
    assert holder_is_live({"pid": 1, "host": "node-7", "slurm_job": "40"})
    assert holder_is_live({"pid": 1, "host": "node-7"})


def test_a_failed_teacher_job_fails_its_dependents_and_the_same_command_recovers(slurm_cluster, spec, tiny_cifar,
                                                                                tmp_path, capsys, monkeypatch):
    """A teacher's job that dies leaves the run after it pending for ever (afterok never holds):
    status and --wait call it failed, and the same command cancels it and submits both again."""
    data, root = tiny_cifar
    out = tmp_path / "s"
    monkeypatch.setenv("MUTUALBENCH_FAULT_KILL_AFTER_EPOCHS", "1")  # the jobs inherit it: killed after an epoch
    assert replicate(spec, data, root, out, "--arms", "kd", "--launcher", "slurm", "--wait") == 1
    err = capsys.readouterr().err
    jobs = json.loads((out / "runs" / "slurm" / "jobs.json").read_text())["runs"]
    kd = next(r for r, j in jobs.items() if j["method"] == "kd")
    assert f"error: run {kd} (job {jobs[kd]['job_id']}) failed: never starts: the job of its teacher's run failed" in err
    monkeypatch.delenv("MUTUALBENCH_FAULT_KILL_AFTER_EPOCHS")
    assert replicate(spec, data, root, out, "--arms", "kd", "--launcher", "slurm", "--wait") == 0
    again = json.loads((out / "runs" / "slurm" / "jobs.json").read_text())["runs"]
    assert set(again) == set(jobs) and all(again[r]["job_id"] != jobs[r]["job_id"] for r in jobs)
    assert all(r["status"] == "complete" for r in records(out).values()) and len(records(out)) == 2
    assert squeue("-j", jobs[kd]["job_id"], "-o", "%T") == ["CANCELLED"]
