"""``replicate``: a study spec into runs, run what is missing, then the table and plots.
What it is asked comes whole, as one checked ``request.StudyRequest``.

The output folder holds ``study.json`` (the manifest: spec, profile, seeds, data, and the
run id of every arm x seed x ablation value), ``runs/`` (records and weights), and the
table and plots. Runs whose valid, complete record exists are skipped, so an interrupted
study resumes where it stopped and a finished one reruns nothing, and changes no file."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ..core.envinfo import device_name
from ..core.errors import UserError
from ..core.progress import count_runs
from ..data.sources import KNOWN_DATASETS, copy_problem
from ..storage.io_utils import atomic_write_json
from ..storage.layout import MANIFEST, RUNS, default_out
from ..storage.records import complete_record
from ..storage.spec_schema import MAX_SEEDS
from ..storage.stored_schema import manifest_problem as stored_manifest_problem
from ..training.estimate import RunTimer, estimate_sources, format_duration
from ..training.run import Runner, resolve
from .launch import run_local, run_per_gpu
from .request import StudyRequest
from .spec import expand, in_profile, load_spec, selected_ablations

MANIFEST_SCHEMA = 1


def plan_study(request: StudyRequest, *, device: str | None = None,
               on_record: Callable[[dict], None] | None = None, log: Callable[[str], None] = print):
    """The study ``request`` asks for, without running any of it: the runner, the manifest
    (every arm x seed x ablation value with its run id) and the configs of the runs whose
    complete record is not in its folder. Every run is validated (types, registries, taps,
    data) on the way, and what the request asks of the spec (its profile, ``--arms``,
    ``--ablations``, ``--data``); nothing is written. ``--data`` says where to read the spec's
    data set from; a different data set is an error, not a switch. With ``--arms`` only those
    arms run (their main runs and ablation runs); the manifest still lists every run.
    ``device``: the one to plan on, where it is not the request's (SLURM: this machine's)."""
    spec_path, profile, out, arms = request.spec_path, request.profile, request.out, request.arms
    spec = load_spec(spec_path)
    spec.profile(profile)
    stored = read_manifest(out, spec, profile)
    _check_selected_arms(spec, profile, arms)
    data = request.data
    if data is None and spec.data not in KNOWN_DATASETS:
        raise UserError(f"{spec.path} is a study of {spec.data}, which cannot be downloaded: give --data, a local copy "
                        "of it (a class-per-folder tree or a .tar.gz/.zip of one)")
    data = data if data is not None else spec.data
    if data != spec.data and data.lower() in KNOWN_DATASETS and not Path(data).exists():
        raise UserError(f"--data {data} is not the data set of {spec.path} ({spec.data}); give --data a local copy of "
                        f"{spec.data}, or run a spec written for {data}")
    # --seeds, else the profile's own seed count (a smoke profile: its stored set's), else [study] seeds
    n_seeds = request.seeds if request.seeds is not None else int(spec.profile(profile).get("seeds")
                                                                  or spec.raw["study"].get("seeds", 3))
    seed_list = list(range(n_seeds))
    if request.shard is not None:
        index, count = request.shard
        seed_list = [s for s in seed_list if s % count == index]
    runner = Runner(out / RUNS, data_root=request.data_root, device=device or request.device, log=log,
                    on_record=on_record, root=out)
    # the manifest plans what is asked and what the folder's manifest already planned (a
    # study continued with fewer seeds or without its ablations keeps its stored runs in its
    # tables); only what is asked runs
    asked_ablations = [a["name"] for a in selected_ablations(spec, request.ablations)]
    asked = {"seeds": seed_list, "ablations": asked_ablations}
    if arms is not None:  # what `compare` of this folder compares (report.asked_selection), as replicate does
        asked["arms"] = list(arms)
    stored_seeds, stored_ablations = stored_scope(stored)
    planned_ablations = [a["name"] for a in spec.ablations
                         if a["name"] in asked_ablations or a["name"] in stored_ablations]
    plan = expand(spec, profile, sorted(set(seed_list) | stored_seeds), data, planned_ablations or False)
    for p in plan:  # every key's type and range, every method's section: before any data is loaded
        resolve(p.config)
    entries, pending, seen = [], [], set()
    ds = None
    for p in plan:  # validates every run (registries, taps, data) before any training
        _, rid, ds, _ = runner.prepare(p.config)
        entries.append({"arm": p.arm, "seed": p.seed, "ablation": p.ablation, "value": p.value, "run_id": rid,
                        "method": p.config["method"]})
        if not_asked(entries[-1], asked) is None and (arms is None or p.arm in arms) and rid not in seen:
            seen.add(rid)
            if complete_record(runner.out_dir, rid) is None:
                pending.append(p.config)
    _check_data_is_the_specs(spec, data, ds)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "spec_path": str(spec.path),
        "spec_sha256": spec.sha256,
        "spec": copy.deepcopy(spec.raw),
        "profile": profile,
        "seeds": sorted(set(seed_list) | stored_seeds),
        # what identifies the data, never where this machine read it from (--data: a local path)
        "data": {"name": ds.name, "sha256": ds.sha256, "spec_data": spec.data},
        "runs": entries,
        # what this invocation asked for (the runs it may train); ``runs`` may plan more
        "asked": asked,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return spec, runner, manifest, pending


def read_manifest(out: Path, spec, profile: str) -> dict | None:
    """The manifest in ``out``, of the shape ``manifest_problem`` checks, or None: none yet.
    One of another study or profile is refused (``check_folder_owner``). A damaged one
    (unreadable, not JSON, a key missing or of the wrong type) is refused where the folder
    holds run records: a new manifest would put this spec's plan, or another study's, over
    records it cannot vouch for; without records it is None (``replicate`` writes a new one)."""
    path = Path(out) / MANIFEST
    manifest = None
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None
    except OSError as e:
        problem = f"unreadable: {e.strerror or type(e).__name__}"
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start}"
    except json.JSONDecodeError as e:  # a truncated file among them
        problem = f"not JSON: {e.msg} at line {e.lineno} column {e.colno}"
    except (ValueError, RecursionError) as e:
        problem = f"not JSON: {type(e).__name__}"
    else:
        problem = manifest_problem(manifest)
    check_folder_owner(Path(out), spec, profile, manifest)
    if problem is None:
        return manifest
    if not any(p.is_file() for p in (Path(out) / RUNS).glob("*.json")):
        return None
    raise UserError(f"{path}: damaged study manifest ({problem}), in a study folder that holds run records: replicate "
                    "will not replace it (the tables would describe a new plan over those records); restore it from "
                    f"version control (git checkout -- {path}) or move the folder aside")


def manifest_problem(manifest) -> str | None:
    """What makes a stored manifest unusable, with the key's path (``runs[3].seed = "zero" is a
    string, not an integer >= 0``), or None: the one schema of manifests (``stored_schema``),
    which the tables read by as well: every key ``replicate`` and the tables read, of its JSON
    type, each run entry's run id, arm, seed, ablation and value, and their cross-checks."""
    return stored_manifest_problem(manifest)


def stored_scope(manifest: dict | None) -> tuple[set[int], set[str]]:
    """The seeds and ablation names that a folder's stored manifest plans (``read_manifest`` has
    checked its shape, and refused one of another study or profile); none when there is none."""
    if manifest is None:
        return set(), set()
    seeds = {s for s in manifest["seeds"] if s < MAX_SEEDS}
    return seeds, {e["ablation"] for e in manifest["runs"] if e["ablation"] is not None}


# what a manifest may differ in from the stored one of a study whose runs are all complete,
# without being written: what was asked, when, and the spec file's path and bytes (a comment)
_NOT_CONTENT = ("asked", "written_at", "spec_path", "spec_sha256")


def says_the_same(stored: dict | None, manifest: dict) -> bool:
    """Whether the folder's stored manifest says what ``manifest`` says: the same runs (every
    arm x seed x ablation value's run id, which covers the config and the data's checksum),
    seeds, data set and spec, of the spec only this profile's part (an edit of another
    profile changes nothing here). A ``replicate`` with nothing to train then keeps it as it
    is: it changes no file. Where the data was read from (a manifest written before held it)
    is no part of what it says."""
    if stored is None:
        return False

    def content(m: dict) -> dict:
        m = json.loads(json.dumps(m))  # a copy, in JSON's types as stored
        if isinstance(m["spec"].get("profiles"), dict):
            m["spec"]["profiles"] = {m["profile"]: m["spec"]["profiles"].get(m["profile"])}
        m["data"].pop("source", None)
        return {k: v for k, v in m.items() if k not in _NOT_CONTENT}

    return content(stored) == content(manifest)


def not_asked(entry: dict, asked: dict | None) -> str | None:
    """Why a manifest entry is outside what its ``replicate`` asked for (``asked``: the
    manifest's {seeds, ablations}): the option that left it out, "--seeds" or "--ablations";
    None when it was asked for (or the manifest predates ``asked``). The one test of it."""
    if asked is None:
        return None
    if entry["seed"] not in asked["seeds"]:
        return "--seeds"
    if entry["ablation"] is not None and entry["ablation"] not in asked["ablations"]:
        return "--ablations"
    return None


def is_asked(entry: dict, manifest: dict) -> bool:
    """Whether a manifest entry is in what its ``replicate`` asked for (``manifest["asked"]``)."""
    return not_asked(entry, manifest.get("asked")) is None


def check_folder_owner(out: Path, spec, profile: str, manifest) -> None:
    """A study folder belongs to one study and profile: ``replicate`` of another spec or profile
    into it would replace its manifest, and its table would describe the new study over the old
    records. ``manifest``: the folder's as parsed (None: none, or not JSON); one whose study and
    profile cannot be read is left to ``read_manifest``, which refuses it beside records."""
    try:
        name, held = manifest["spec"]["study"]["name"], manifest["profile"]
    except (KeyError, TypeError):
        return
    if isinstance(name, str) and isinstance(held, str) and (name, held) != (spec.name, profile):
        raise UserError(f"{out} holds the study {name}/{held} (from {manifest.get('spec_path', '?')}), not "
                        f"{spec.name}/{profile} (from {spec.path}): a study folder belongs to one study and profile; "
                        f"give {spec.name}/{profile} another --out, e.g. {default_out(spec.path, profile)}")


def _check_selected_arms(spec, profile: str, arms: list[str] | None) -> None:
    """``--arms`` names arms of the spec that run in ``profile``."""
    if arms is None:
        return
    if not arms:
        raise UserError("--arms names no arm; give a comma-separated list of arm names, or drop it to run every arm")
    names = [a["name"] for a in spec.arms]
    for name in arms:
        if name not in names:
            raise UserError(f"--arms: {spec.path} has no arm {name!r}; its arms are {', '.join(names)}")
        if not in_profile(spec.arm(name), profile):
            raise UserError(f"--arms: arm {name!r} of {spec.path} does not run in profile {profile!r} (it runs in "
                            f"{', '.join(spec.arm(name)['profiles'])}); choose another arm or profile")


def _check_data_is_the_specs(spec, data: str, ds) -> None:
    """The loaded data set ``ds`` (read from ``data``) must be the spec's data set or a copy
    of it: same class count and, where known, the same class names in order."""
    if ds is None:
        return
    problem = copy_problem(spec.data, ds, spec.classes)
    if problem:
        raise UserError(f"--data {data} is not a copy of {spec.data}, the data set of {spec.path} ({problem}); give "
                        f"--data a copy of {spec.data}, or run a spec written for this data set")


def dry_run(request: StudyRequest, *, log: Callable[[str], None] = print,
            progress: Callable[[str], None] | None = None) -> tuple[list[dict], float]:
    """The plan of a study, printed by ``replicate --dry-run``: one row per arm x seed x
    ablation value (its run id; "complete" when its record is in the study folder, "to run",
    or "same run as" an earlier row), each run to do with its estimated time on this machine,
    and their total; runs left out by ``--arms``, or planned by the folder's manifest beyond
    the asked seeds and ablations, are "not selected". Trains nothing, writes nothing but
    ``progress`` lines (a kind of run whose steps are timed)."""
    _, runner, manifest, pending = plan_study(request, log=log)
    timer = RunTimer(runner, progress=progress)
    estimates = {runner.prepare(cfg)[1]: est for cfg, est in zip(pending, timer.estimate_all(pending),
                                                                     strict=True)}
    rows, first_row = [], {}
    for e in manifest["runs"]:
        rid = e["run_id"]
        row = {"arm": e["arm"], "seed": e["seed"],
               "ablation": f"{e['ablation']}={e['value']}" if e["ablation"] else "", "run id": rid}
        if rid in first_row:
            row["status"], row["estimate"] = f"same run as row {first_row[rid]}", ""
        elif rid in estimates:
            est = estimates[rid]
            row["status"] = "to run"
            row["estimate"] = format_duration(est.train_s + est.eval_s)
        elif complete_record(runner.out_dir, rid) is None:
            why = not_asked(e, manifest["asked"]) or "--arms"
            row["status"], row["estimate"] = f"not selected ({why})", ""
        else:
            row["status"], row["estimate"] = "complete", ""
        first_row.setdefault(rid, len(rows) + 1)
        rows.append(row)
    return rows, sum(e.train_s + e.eval_s for e in estimates.values())


def in_plan_order(pending: list[dict], runner, manifest: dict, out: Path, spec_path: Path,
                  log: Callable[[str], None]) -> list[dict]:
    """``pending`` with the main runs that ``mutualbench plan`` orders first (those that complete
    the most claims soonest, ``planning.plan_order``), the rest after them in study order: what
    a time budget should spend its hours on. Unchanged when the folder has no results yet to
    plan from."""
    from ..analysis.results import has_complete_runs
    from .planning import plan_order

    if not has_complete_runs(out):
        return pending
    order = {key: i for i, key in enumerate(plan_order(out, spec_path))}
    where = {e["run_id"]: (e["arm"], e["seed"]) for e in manifest["runs"] if not e.get("ablation")}
    keyed = [(order.get(where.get(runner.prepare(c)[1]), len(order) + i), c) for i, c in enumerate(pending)]
    if order:
        log("runs in the order of `mutualbench plan` (the runs that complete the most claims first)")
    return [c for _, c in sorted(keyed, key=lambda kc: kc[0])]


def replicate(request: StudyRequest, *, plan_only: bool = False, announce_estimate: bool = True,
              on_record: Callable[[dict], None] | None = None, log: Callable[[str], None] = print) -> dict:
    """Run what ``request`` asks that its folder has no complete record of, here (in order,
    within ``--time-budget``) or as SLURM jobs, after writing the manifest; ``plan_only``: the
    manifest only. Returns the manifest, the counts, the errors of failed runs, and with
    SLURM without ``--wait`` the jobs submitted."""
    launcher, arms, out = request.launcher, request.arms, request.out
    # SLURM: the runs' device is the nodes' (a login node often has no GPU); planning needs none
    spec, runner, manifest, pending = plan_study(request, device="auto" if launcher == "slurm" else None,
                                                 on_record=on_record, log=log)
    profile = request.profile
    seen = {e["run_id"] for e in manifest["runs"] if is_asked(e, manifest)}
    # one with nothing to train keeps a stored manifest that says the same: it changes no file
    if request.shard is None and (pending or not says_the_same(read_manifest(out, spec, profile), manifest)):
        atomic_write_json(out / MANIFEST, manifest)
    total = len(seen)
    if plan_only:
        return {"manifest": manifest, "ran": 0, "total": total, "pending": len(pending), "errors": []}
    left = 0
    # with --arms, the counts are of the selected arms' runs, not of the whole study's
    selected = total if arms is None else len({e["run_id"] for e in manifest["runs"]
                                               if e["arm"] in arms and is_asked(e, manifest)})
    which = count_runs(selected) + ("" if arms is None else f" of the selected arms ({', '.join(arms)})")
    if not pending:
        every, are = ("the", "is") if selected == 1 else ("all", "are")
        log(f"{every} {which} of {spec.name}/{profile} {are} complete in {out}: nothing to run")
        errors = []
    else:
        log(f"{spec.name}/{profile}: {selected - len(pending)} of {which} complete, {len(pending)} to run")
        if launcher == "slurm":
            from .slurm import accounting_note, submit_study, wait_for_jobs

            submitted = submit_study(pending, runner, data_root=request.data_root, device=request.device, log=log,
                                     **request.slurm.submit_options(request.device))
            note = accounting_note()
            if note:
                log(note)
            if not request.slurm.wait:
                return {"manifest": manifest, "ran": 0, "left": len(pending), "total": total, "errors": [],
                        "submitted": submitted}
            errors = wait_for_jobs(runner.out_dir, [runner.prepare(c)[1] for c in pending], log)
        else:
            timer = RunTimer(runner, progress=log if announce_estimate else None)
            time_budget_s = request.time_budget_s
            if time_budget_s is not None and arms is None:
                pending = in_plan_order(pending, runner, manifest, out, request.spec_path, log)
            if announce_estimate:
                expected = sum(e.train_s + e.eval_s for e in timer.estimate_all(pending))
                log(f"estimated time for the {count_runs(len(pending))} to run: {format_duration(expected)} on this machine "
                    f"({device_name(runner.device)}; {estimate_sources('here')})")
            errors, left = run_local(pending, runner, log, time_budget_s,
                                     estimate=lambda c: timer.estimate(c).total_s)
    return {"manifest": manifest, "ran": len(pending) - left, "left": left, "total": total, "errors": errors}


def run_study(request: StudyRequest, *, announce_estimate: bool = True,
              on_record: Callable[[dict], None] | None = None, log: Callable[[str], None] = print) -> dict:
    """``replicate`` on this machine's devices: one process per GPU when there are several
    (each running every N-th seed), else ``replicate`` itself (local or SLURM). The request
    was checked as it was made; here only that a time budget has one device to time."""
    import torch

    gpus = torch.cuda.device_count() if request.device != "cpu" else 0
    if request.time_budget_s is not None and gpus > 1:
        raise UserError("--time-budget works with the local launcher on one device: drop it, or set "
                        "CUDA_VISIBLE_DEVICES to one GPU")
    if request.launcher == "local" and request.shard is None and gpus > 1:
        plan = replicate(request, plan_only=True, announce_estimate=announce_estimate, on_record=on_record, log=log)
        log(f"{plan['pending']} runs to do on {gpus} GPUs, one process each")
        return {"errors": run_per_gpu(request, gpus)}
    return replicate(request, announce_estimate=announce_estimate, on_record=on_record, log=log)
