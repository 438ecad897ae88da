"""A float32 rerun against a stored study: the statistical tier of ``compare``.

float32 kernels round differently on each kind of CPU or GPU and a training run amplifies
that like another seed, so a rerun on another machine cannot match number for number. What
it can answer, and what this module asks:

1. **Per arm and member**, is the new seeds' mean accuracy consistent with the stored seeds'?
   The difference new - stored gets its 95% Welch interval (``stats.welch``; with one seed on
   a side, the other side's prediction interval for one more run). A row *differs* when that
   interval excludes 0 **and** the difference is larger than the profile's ``tolerance``, the
   smallest difference that matters; otherwise it is *consistent*. Both statistics are
   tested: the final-epoch accuracy and the last-5 mean.
2. **Claims**: each of the spec's comparisons and contrasts is recomputed on the new runs, and
   its outcome (positive / negative / not significant under the claim's rule, ``claims.outcome``)
   is set against the stored one: "claims reproduced: k of n".

The exact tier (float64 profiles, run by run) is ``exact.py``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..core.errors import UserError
from .claims import DEFAULT_RULE, outcome, parse_rule, tests
from .results import _ACC, LAST_LABEL, MAIN, STATISTICS, Study, load_study
from .stats import consistency, welch

KEY = ["ablation", "value", "arm", "member"]


def _name(key: tuple) -> str:
    abl, val, arm, member = key
    return f"{arm}/{member}" + ("" if abl == MAIN else f" [{abl}={val}]")


def _seeds(seeds) -> str:
    seeds = sorted(int(s) for s in seeds)
    return ", ".join(map(str, seeds)) if seeds else "none"


@dataclass
class ClaimCheck:
    test: str
    stored: str
    new: str

    why: str = ""  # why the new runs cannot make the test (then it is not counted)

    @property
    def testable(self) -> bool:
        return self.new != "not computed"

    @property
    def reproduced(self) -> bool:
        return self.stored == self.new


@dataclass
class StudyComparison:
    new: Study
    stored: Study
    tolerance: float
    rows: pd.DataFrame
    missing: list[str] = field(default_factory=list)  # stored rows the new study lacks
    new_only: list[str] = field(default_factory=list)  # new rows the stored study lacks
    claims: list[ClaimCheck] = field(default_factory=list)
    machine_note: str | None = None

    @property
    def ok(self) -> bool:
        """No (arm, member) row differs, at either statistic."""
        return not self.rows.empty and not (self.rows[[f"{s}_verdict" for s, _ in STATISTICS]] == "differs").any().any()

    def lines(self) -> list[str]:
        """What ``compare`` and ``replicate`` print: the seed sets, the per-row table, the
        rows only one side has (one line each), and the claims line."""
        from tabulate import tabulate

        out = [f"compared with {self.stored.folder} (statistical: float32 runs differ between machines; "
               f"tolerance {self.tolerance:g} points = the smallest difference that matters)",
               f"  seeds: here {_seeds(self.new.runs['seed'].unique())}; stored {_seeds(self.stored.runs['seed'].unique())}"]
        if self.machine_note:
            out.append(f"  {self.machine_note}")
        table = [[_name(tuple(r[k] for k in KEY)), f"{r['n_new']} / {r['n_stored']}",
                  _f(r["final_new"]), _f(r["final_stored"]), _interval(r, "final"), r["final_verdict"],
                  _interval(r, "last5"), r["last5_verdict"]] for _, r in self.rows.iterrows()]
        if table:
            out += ["  " + line for line in tabulate(
                table, headers=["arm/member", "n here / stored", "final here", "final stored",
                                "here − stored [95% CI]", "final epoch", f"{LAST_LABEL}: here − stored [95% CI]",
                                LAST_LABEL], tablefmt="github", disable_numparse=True).splitlines()]
        hows = set(self.rows["final_how"]) if not self.rows.empty else set()
        if "prediction" in hows:
            out.append("  where one side has one seed, the interval is the other side's prediction interval "
                       "for one more run")
        if "no spread" in hows:
            out.append("  where both sides have one seed there is no spread to test: only the tolerance decides")
        if self.missing:
            out.append(f"  not in this study (not compared): {', '.join(self.missing)}")
        if self.new_only:
            out.append(f"  not in the stored study (nothing to compare with): {', '.join(self.new_only)}")
        counts = {s: int((self.rows[f"{s}_verdict"] == "differs").sum()) for s, _ in STATISTICS} \
            if not self.rows.empty else {}
        out.append(f"{'consistent' if self.ok else 'DIFFERENT'}: "
                   f"{len(self.rows) - max(counts.values(), default=0)} of {len(self.rows)} arm/member rows "
                   "consistent with the stored seeds" + (
                       "" if self.ok else " (" + ", ".join(f"{counts[s]} differ at the {label}"
                                                           for s, label in STATISTICS if counts.get(s)) + ")"))
        out.append(self.claims_line())
        return out

    def claims_line(self) -> str:
        if not self.claims:
            return "claims reproduced: none to check (the stored study has no computed comparison or contrast)"
        tested = [c for c in self.claims if c.testable]
        good = [c for c in tested if c.reproduced]
        line = f"claims reproduced: {len(good)} of {len(tested)}"
        bad = [f"{c.test} (stored: {c.stored}; here: {c.new})" for c in tested if not c.reproduced]
        untested = [f"{c.test} ({c.why})" for c in self.claims if not c.testable]
        return (line + ("; not reproduced: " + "; ".join(bad) if bad else "")
                + ("; not testable on these runs: " + "; ".join(untested) if untested else ""))


def _f(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _interval(r, stat: str) -> str:
    d, low, high = r[f"{stat}_diff"], r[f"{stat}_low"], r[f"{stat}_high"]
    if math.isnan(d):
        return ""
    return f"{d:+.2f}" + ("" if math.isnan(low) else f" [{low:+.2f}, {high:+.2f}]")


def _per_seed(study: Study, stat: str) -> pd.DataFrame:
    """(ablation, value, arm, member, seed) -> accuracy at ``stat``, ensemble rows included for
    the final epoch."""
    col = _ACC[stat]
    return study.runs[study.runs[col].notna()][KEY + ["seed", col]]


def compare_studies(new: Path | Study, stored: Path | Study) -> StudyComparison:
    """``new`` (a rerun) against ``stored``, per (ablation, value, arm, member) row of the stored
    study the new one has, at both statistics; and the outcome of each of the stored spec's
    comparisons and contrasts on both (``ClaimCheck``)."""
    from .results import machine_note

    stored = stored if isinstance(stored, Study) else load_study(stored)
    new = new if isinstance(new, Study) else load_study(new)
    if stored.summary.empty:
        raise UserError(f"{stored.folder}: no complete runs to compare against")
    tol = stored.tolerance
    stored_keys = list(dict.fromkeys(map(tuple, stored.summary[KEY].itertuples(index=False))))
    new_keys = set(map(tuple, new.summary[KEY].itertuples(index=False))) if not new.summary.empty else set()
    per_seed = {(side, stat): _per_seed(study, stat) for side, study in (("new", new), ("stored", stored))
                for stat, _ in STATISTICS}
    rows, missing = [], []
    for key in stored_keys:
        if key not in new_keys:
            missing.append(_name(key))
            continue
        row = dict(zip(KEY, key, strict=True))
        for stat, _ in STATISTICS:
            col = _ACC[stat]

            def values(side, stat=stat, col=col, key=key):
                f = per_seed[(side, stat)]
                return f[(f[KEY] == pd.Series(key, index=KEY)).all(axis=1)][col]

            w = welch(values("new"), values("stored"))
            row.update({"n_new": row.get("n_new", w["n_new"]), "n_stored": row.get("n_stored", w["n_stored"]),
                        f"{stat}_new": values("new").mean(), f"{stat}_stored": values("stored").mean(),
                        f"{stat}_diff": w["diff"], f"{stat}_low": w["ci95_low"], f"{stat}_high": w["ci95_high"],
                        f"{stat}_how": w["how"],
                        f"{stat}_verdict": consistency(w, tol) if w["n_new"] and w["n_stored"] else ""})
        rows.append(row)
    new_only = [_name(k) for k in sorted(new_keys - set(stored_keys), key=str)]
    return StudyComparison(new, stored, tol, pd.DataFrame(rows), missing, new_only, claim_checks(new, stored),
                           machine_note(new, stored))


def claim_checks(new: Study, stored: Study) -> list[ClaimCheck]:
    """The outcome of each comparison and contrast computed in the stored study, on both sides,
    under the rule of the claim that names it (the default rule for the others)."""
    rules = {c.get("comparison") or c.get("contrast"): parse_rule(c.get("rule"), c["name"])
             for c in stored.spec.get("claims", [])}
    stored_tests, new_tests = tests(stored), tests(new)
    checks = []
    for name, t in stored_tests.items():
        rule = rules.get(name, DEFAULT_RULE)
        s = outcome(t, rule)
        if s == "not computed":
            continue
        label = name if t["kind"] == "comparison" else f"contrast {name}"
        mine = new_tests.get(name)
        n = min((mine[stat]["n"] for stat in rule.statistics), default=0) if mine else 0
        why = "no runs of its arms here" if n == 0 else f"{n} seed{'s' if n != 1 else ''} here; a test needs 2"
        checks.append(ClaimCheck(label, s, outcome(mine, rule), why))
    return checks

