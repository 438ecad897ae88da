"""``mutualbench plan``: how many seeds each claim needs, and which runs to do first.

For every claim of a stored study: its current estimate and seed-to-seed spread at each
statistic its rule names, and the seeds at which the rule's test would have 80% power for
an effect of that size (``stats.seeds_for_power``: the noncentral t of the paired test, in
the effect's own direction, at alpha / m, the first step of Holm's adjustment over the m
tests of its family, so the figure is on the safe side). Then the runs missing to bring
every arm that a claim, comparison or contrast uses to the profile's planned seeds, in the
order that completes the most (claim, seed) pairs soonest, each with the claims it serves,
its estimated time on this machine and the ``replicate`` command that runs it.

Planning reads the study folder only: run ids come from the spec and the manifest's data
checksum, times from the folder's own records (``recorded_times.RecordedTimes``): those made
on this kind of machine in the memory layout the run will train in (its models and stages
are built, untrained, to know it and its epochs: ``estimate.planned_run``), else runs of the
same kind for other epochs, per epoch, else a record from another machine or layout scaled
by the other kinds of run recorded both there and here; each with the margin ``replicate``
adds (``estimate.RUN_MARGIN``), so a plan and a dry run give a run the same time; nothing
is trained, measured or written.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..analysis.claims import parse_rule, planned_seeds, tests
from ..analysis.results import STATISTICS, Study, load_study
from ..analysis.stats import ALPHA, seeds_for_power
from ..core.config import run_id
from ..core.envinfo import current_machine_kind, record_machine_kind
from ..core.errors import UserError
from ..methods import get_method
from ..methods.pretrain import uses_teacher
from ..storage.layout import RUNS
from ..storage.records import complete_record
from ..training.estimate import RUN_MARGIN, format_duration
from ..training.recorded_times import RecordedTimes
from .spec import expand, load_spec

POWER = 0.8
LABELS = dict(STATISTICS)


@dataclass
class ClaimNeed:
    claim: str
    verdict: str
    n: int
    # per statistic: (mean difference, its seed-to-seed std, seeds for POWER or None)
    stats: dict[str, tuple[float, float, int | None]]

    @property
    def seeds_needed(self) -> int | None:
        """The most any statistic needs (the rule asks for all of them); None if unknown."""
        need = [s[2] for s in self.stats.values()]
        return None if not need or any(x is None for x in need) else max(need)


@dataclass
class MissingRun:
    arm: str
    seed: int
    run_id: str
    claims: list[str]
    tests: list[str]
    estimate_s: float | None
    estimate_how: str
    trains_teacher: bool = False
    command: str = ""
    teacher: tuple | None = None  # (run id, seconds, kind of machine its record came from) when not trained yet
    completes: list[str] = field(default_factory=list)


def claim_needs(study: Study, found: dict[str, dict] | None = None) -> list[ClaimNeed]:
    """Per claim: n, the estimate and spread at each statistic of its rule, and the seeds the
    rule's test needs for 80% power at an effect of the observed size."""
    from ..analysis.claims import evaluate

    found = tests(study) if found is None else found
    verdicts = evaluate(study, found).set_index("claim")["verdict"] if study.spec.get("claims") else {}
    out = []
    for c in study.spec.get("claims", []):
        key = c.get("comparison") or c.get("contrast")
        t = found.get(key)
        rule = parse_rule(c.get("rule"), c["name"])
        stats = {}
        for stat in rule.statistics:
            if t is None:
                stats[stat] = (math.nan, math.nan, None)
                continue
            m = sum(1 for o in found.values() if o["family"] == t["family"] and not math.isnan(o[stat]["p"])) or 1
            alpha = rule.alpha / m if rule.adjust == "holm" else rule.alpha
            stats[stat] = (t[stat]["diff"], t[stat]["std"], seeds_for_power(t[stat]["diff"], t[stat]["std"], alpha, POWER))
        n = min((t[s]["n"] for s in rule.statistics), default=0) if t else 0
        out.append(ClaimNeed(c["name"], str(verdicts[c["name"]]) if c["name"] in verdicts else "not run", n, stats))
    return out


def missing_runs(study: Study, spec_path: Path, *, data: str | None = None,
                 device: str = "cpu") -> tuple[int, list[MissingRun]]:
    """The profile's planned seeds and the runs missing to reach them for every arm a claim,
    comparison or contrast uses (main study), in plan order (see ``order_runs``)."""
    import torch

    from ..training.run import resolve, teacher_config

    spec = load_spec(spec_path)
    profile = study.manifest["profile"]
    if spec.name != study.spec["study"]["name"]:
        raise UserError(f"plan: {spec.path} is the study {spec.name}, but {study.folder} holds "
                        f"{study.spec['study']['name']}; give --spec the spec of that study")
    planned = planned_seeds(spec.raw, profile)
    sha = study.manifest["data"]["sha256"]
    runs_dir = study.folder / RUNS
    found = tests(study)
    claims_of: dict[str, list[str]] = {}
    for c in spec.raw.get("claims", []):
        key = c.get("comparison") or c.get("contrast")
        for arm in (found.get(key) or {}).get("weights", {}):
            claims_of.setdefault(arm, []).append(c["name"])
    tests_of: dict[str, list[str]] = {}
    for key, t in found.items():
        for arm in t["weights"]:
            tests_of.setdefault(arm, []).append(key)
    times = RecordedTimes.read(runs_dir, current_machine_kind(torch.device(device)))
    data_arg = f" --data {shlex.quote(data)}" if data else ""
    missing = []
    for p in expand(spec, profile, list(range(planned)), spec.data, False):
        if p.arm not in tests_of:
            continue
        resolved = resolve(p.config)
        rid = run_id(resolved, sha)
        if complete_record(runs_dir, rid) is not None:
            continue
        timed = times.find_run(p.config, resolved)
        teacher = None
        if uses_teacher(get_method(resolved["method"]), resolved) and not resolved["teacher"]["checkpoint"]:
            t_config = teacher_config(p.config)
            t_resolved = resolve(t_config)
            t_rid = run_id(t_resolved, sha)
            if not (runs_dir / t_rid / "final.pt").exists():
                t_rec = complete_record(runs_dir, t_rid)
                made_on = record_machine_kind(t_rec) if t_rec is not None else None
                t_s = _with_margin(times.find_run(t_config, t_resolved).seconds)
                teacher = (t_rid, t_s, made_on if made_on not in (None, times.here) else None)
        cmd = (f"mutualbench replicate {shlex.quote(str(spec.path))} --profile {profile} --seeds {p.seed + 1} "
               f"--no-ablations --arms {p.arm}{data_arg} --out {shlex.quote(str(study.folder))}")
        missing.append(MissingRun(p.arm, p.seed, rid, claims_of.get(p.arm, []), tests_of[p.arm],
                                  _with_margin(timed.seconds), timed.how,
                                  command=cmd, teacher=teacher))
    ran = pd.concat([study.runs, study.failed]) if not study.failed.empty else study.runs  # a failed run is run
    done = {(a, int(s)) for a, s in ran[ran["ablation"] == "main"][["arm", "seed"]].itertuples(index=False)}
    claims = spec.raw.get("claims", [])
    ordered = _with_teachers(order_runs(missing, done, found, claims))
    have, claim_arms = set(done), _claim_arms(found, claims)
    for r in ordered:  # what each run completes, in the final order
        r.completes = [name for name, arms in claim_arms.items()
                       if r.arm in arms and all((a, r.seed) in have or a == r.arm for a in arms)]
        have.add((r.arm, r.seed))
    return planned, ordered


def _with_margin(seconds: float | None) -> float | None:
    """A recorded time as ``replicate`` plans it (``estimate.RUN_MARGIN``), so the two agree."""
    return None if seconds is None else seconds * RUN_MARGIN


def _claim_arms(found: dict[str, dict], claims: list[dict]) -> dict[str, set[str]]:
    return {c["name"]: set((found.get(c.get("comparison") or c.get("contrast")) or {}).get("weights", {}))
            for c in claims}


def _with_teachers(runs: list[MissingRun]) -> list[MissingRun]:
    """A run that learns from a teacher whose weights are not there trains it first: the first
    such run in the order carries the teacher's time (and the teacher arm's own run, when it is
    missing too, moves up to just before it); later runs find the teacher trained. A teacher
    whose record was made on another kind of machine is retrained here, replacing its record,
    which ``replicate`` does only when told (MUTUALBENCH_RETRAIN_TEACHERS=1)."""
    from ..training.run import RETRAIN_TEACHERS_ENV

    by_id = {r.run_id: r for r in runs}
    trained: set[str] = set()
    out: list[MissingRun] = []
    for r in runs:
        if r in out:
            continue
        if r.teacher is not None and r.teacher[0] not in trained:
            t_rid, t_s, other = r.teacher
            own = by_id.get(t_rid)
            if own is not None and own not in out:
                out.append(own)
                trained.add(t_rid)
            else:
                r.trains_teacher = True
                r.estimate_s = None if r.estimate_s is None or t_s is None else r.estimate_s + t_s
                if other:
                    r.estimate_how += f"; retrains the seed's teacher first, replacing its record made on {other}"
                    r.command = f"{RETRAIN_TEACHERS_ENV}=1 " + r.command
                trained.add(t_rid)
        if r.teacher is None and r.run_id in by_id:
            trained.add(r.run_id)
        out.append(r)
    return out


def order_runs(missing: list[MissingRun], done: set[tuple[str, int]], found: dict[str, dict],
               claims: list[dict]) -> list[MissingRun]:
    """Greedy: next, the run that completes the most (claim, seed) pairs (every arm of the
    claim's test has that seed), then the one serving the most claims, then the lower seed,
    then spec order. A run completes a pair when it is the last arm of that seed missing."""
    claim_arms = _claim_arms(found, claims)
    have = set(done)
    left = list(enumerate(missing))
    ordered = []
    while left:
        def gain(item):
            i, r = item
            completes = [name for name, arms in claim_arms.items()
                         if r.arm in arms and all((a, r.seed) in have or a == r.arm for a in arms)]
            return (-len(completes), -len(r.claims), r.seed, i), completes

        best = min(left, key=lambda item: gain(item)[0])
        ordered.append(best[1])
        have.add((best[1].arm, best[1].seed))
        left.remove(best)
    return ordered


def _fmt(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:+.2f}"


def render(study: Study, spec_path: Path, *, data: str | None = None) -> str:
    """The plan as text: the claims' power table, the missing runs in order, the commands."""
    from tabulate import tabulate

    found = tests(study)
    needs = claim_needs(study, found)
    planned, runs = missing_runs(study, spec_path, data=data)
    name = f"{study.spec['study']['name']}/{study.manifest['profile']}"
    lines = [f"# Plan for {name} ({study.folder}): {planned} seeds planned", ""]
    rows = []
    for c in needs:
        cells = []
        for stat, (d, s, k) in c.stats.items():
            sd = "—" if s is None or math.isnan(s) else f"{s:.2f}"
            cells.append(f"{LABELS[stat]}: {_fmt(d)} (sd {sd}) → {k if k is not None else 'unknown'}")
        need = c.seeds_needed
        status = ("enough" if need is not None and need <= c.n else
                  f"{need - c.n} more" if need is not None else "unknown")
        rows.append([c.claim, c.verdict, c.n, "; ".join(cells), need if need is not None else "—", status])
    lines += [tabulate(rows, headers=["claim", "verdict now", "n", "estimate (seed sd) → seeds for 80% power",
                                      "seeds needed", "vs n"], tablefmt="github", disable_numparse=True), "",
              f"Seeds for {POWER:.0%} power: the paired t-test's noncentral t in the estimate's own direction, at "
              "alpha / m (the first step of Holm's adjustment over the m tests of the family), taking the estimate and "
              "its spread as the truth; the rule asks for every statistic, so the most any needs. An estimate from "
              "3 seeds is itself uncertain: read these as rough sizes, not promises.", ""]
    if not runs:
        lines.append(f"Every arm the claims, comparisons and contrasts use has its {planned} planned seeds: nothing to run.")
        return "\n".join(lines) + "\n"
    rows = []
    for i, r in enumerate(runs, 1):
        est = "unknown" if r.estimate_s is None else format_duration(r.estimate_s)
        how = r.estimate_how + ("; trains the seed's teacher first" if r.trains_teacher and "teacher" not in r.estimate_how
                                else "")
        rows.append([i, r.arm, r.seed, r.run_id, ", ".join(r.completes) or "—", ", ".join(r.claims) or "—",
                     f"{est} ({how})"])
    known = [r.estimate_s for r in runs if r.estimate_s is not None]
    total = format_duration(sum(known)) + ("" if len(known) == len(runs) else
                                           f" for the {len(known)} runs with an estimate")
    lines += [f"## {len(runs)} runs missing to reach n = {planned}, in plan order (about {total})", "",
              tabulate(rows, headers=["#", "arm", "seed", "run id", "completes (claim at this seed)", "serves claims",
                                      "estimate"], tablefmt="github", disable_numparse=True), "",
              "## Commands, in order (each stops on whole runs; add --time-budget SECONDS to bound one)", "", "```bash"]
    lines += [r.command for r in runs] + ["```"]
    return "\n".join(lines) + "\n"


def plan_order(folder: Path, spec_path: Path) -> list[tuple[str, int]]:
    """(arm, seed) of the missing runs in plan order; empty when the folder holds no study yet."""
    folder = Path(folder)
    if not (folder / "study.json").exists():
        return []
    study = load_study(folder)
    return [(r.arm, r.seed) for r in missing_runs(study, spec_path)[1]]


__all__ = ["ALPHA", "ClaimNeed", "MissingRun", "claim_needs", "missing_runs", "order_runs", "plan_order", "render"]
