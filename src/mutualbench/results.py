"""Study results: load a study folder (its manifest and run records), aggregate with pandas
(mean, std, n, 95% confidence interval over seeds), paired comparisons between arms, and the
regression comparison with a stored study.

A study folder holds ``study.json`` (the manifest written by ``replicate``: the spec, the
profile, and which run id is which arm, seed and ablation value) and ``runs/<run_id>.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .envinfo import machine_kind
from .errors import UserError
from .layout import MANIFEST, RUNS
from .records import RUN_ID, read_record
from .spec_schema import name_problem

MAIN = "main"  # the ablation label of the main study's runs
# the member label of a cohort's ensemble row (mean of the members' softmaxes, final epoch only;
# recorded by runs made since it existed): reported beside the members, never averaged with them
ENSEMBLE = "ensemble (mean softmax)"


def load_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise UserError(f"{folder}: no {MANIFEST}; give a folder written by `mutualbench replicate`")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
        assert isinstance(manifest, dict) and isinstance(manifest.get("runs"), list) and "spec" in manifest
        assert all(isinstance(e, dict) and isinstance(e.get("run_id"), str) and "arm" in e and "seed" in e
                   for e in manifest["runs"])
    except OSError as e:
        raise UserError(f"{path}: unreadable study manifest ({e.strerror or type(e).__name__})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, AssertionError) as e:
        raise UserError(f"{path}: malformed study manifest ({type(e).__name__}); rerun `mutualbench replicate`") from None
    for i, e in enumerate(manifest["runs"]):
        for field in ("run_id", "arm", "ablation", "value"):
            if e.get(field) is not None and name_problem(e[field]) and not (field == "run_id"
                                                                           and RUN_ID.match(e[field])):
                raise UserError(f"{path}: runs[{i}].{field} = {e[field]!r} cannot name a file ({name_problem(e[field])}); "
                                "restore the manifest (e.g. from version control) or rerun `mutualbench replicate`")
    return manifest


def load_records(folder: Path, manifest: dict) -> dict[str, dict]:
    """The manifest's run records that exist; a damaged one (not UTF-8, not JSON, the wrong
    shape) is a one-line UserError naming the file: a stored study is never silently partial."""
    records = {}
    for entry in manifest["runs"]:
        rid = entry["run_id"]
        path = Path(folder) / RUNS / f"{rid}.json"
        if rid in records or not path.exists():
            continue
        try:
            records[rid] = read_record(path)
        except UserError as e:
            raise UserError(f"{e}; restore that file (e.g. from version control) or rerun the study with "
                            "`mutualbench replicate`, which moves a damaged record of its own aside and reruns "
                            "that run") from None
    return records


def has_complete_runs(folder: Path) -> bool:
    """Whether the study folder has at least one complete run (a table can be written)."""
    manifest = load_manifest(folder)
    return any(r["status"] == "complete" for r in load_records(folder, manifest).values())


def runs_frame(manifest: dict, records: dict[str, dict]) -> pd.DataFrame:
    """One row per (planned run, model) of a complete record."""
    rows = []
    for entry in manifest["runs"]:
        rec = records.get(entry["run_id"])
        if rec is None or rec["status"] != "complete":
            continue
        for member, m in rec["models"].items():
            rows.append({
                "ablation": entry.get("ablation") or MAIN,
                "value": entry.get("value") or "",
                "arm": entry["arm"],
                "method": rec["config"]["method"],
                "member": member,
                "seed": entry["seed"],
                "run_id": entry["run_id"],
                "arch": m["arch"],
                "params": m["params"],
                "final_acc": m["final_test_acc"],
                "best_acc_test_selected": m["best_test_acc_test_selected"],
                "train_s": rec["timings"]["train_s"],
                "device": rec["env"]["device"],
                "machine": machine_kind(rec["env"]),
            })
        ens = rec.get("ensemble")
        if isinstance(ens, dict) and ens.get("final_test_acc") is not None:
            rows.append(dict(rows[-1], member=ENSEMBLE, arch="+".join(rec["models"][m]["arch"] for m in ens["members"]),
                             params=ens["params"], final_acc=ens["final_test_acc"], best_acc_test_selected=math.nan))
    cols = ["ablation", "value", "arm", "method", "member", "seed", "run_id", "arch", "params", "final_acc",
            "best_acc_test_selected", "train_s", "device", "machine"]
    return pd.DataFrame(rows, columns=cols)


def t_quantile(n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1)) if n > 1 else math.nan


def summarize(df: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """Per (ablation, value, arm, member): n, final accuracy mean/std/95% CI, best-epoch accuracy
    (selected on the test set), parameters, training time, published number and difference."""
    published = {a["name"]: a.get("published", {}) for a in spec.get("arms", [])}
    order = {a["name"]: i for i, a in enumerate(spec.get("arms", []))}
    rows = []
    for (abl, val, arm, member), g in df.groupby(["ablation", "value", "arm", "member"], sort=False):
        n = len(g)
        mean, std = g["final_acc"].mean(), g["final_acc"].std(ddof=1) if n > 1 else math.nan
        half = t_quantile(n) * std / math.sqrt(n) if n > 1 else math.nan
        pub = published.get(arm, {}).get(member) if abl == MAIN else None
        rows.append({
            "ablation": abl, "value": val, "arm": arm, "method": g["method"].iloc[0], "member": member,
            "arch": g["arch"].iloc[0], "params": int(g["params"].iloc[0]), "n": n,
            "final_mean": mean, "final_std": std, "ci95_low": mean - half, "ci95_high": mean + half,
            "best_mean_test_selected": g["best_acc_test_selected"].mean(),
            "train_s_mean": g["train_s"].mean(),
            "published": pub, "diff_vs_published": (mean - pub) if pub is not None else None,
            "_order": (abl != MAIN, abl, order.get(arm, 99), val),
        })
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def arm_accuracy(df: pd.DataFrame) -> pd.DataFrame:
    """Per (ablation, value, arm, seed): the final accuracy, averaged over a cohort's members."""
    df = df[df["member"] != ENSEMBLE]
    return df.groupby(["ablation", "value", "arm", "seed"], sort=False)["final_acc"].mean().reset_index()


def _paired(a: pd.Series, b: pd.Series) -> dict:
    """Accuracies ``a`` and ``b`` indexed by seed, over the seeds both have: n, means, the
    mean and std of a - b, the paired t-test p-value (none when every difference is equal),
    and on how many seeds a is higher."""
    from scipy import stats

    seeds = sorted(set(a.index) & set(b.index))
    n = len(seeds)
    a, b = a.loc[seeds], b.loc[seeds]
    d = a - b
    p = float(stats.ttest_rel(a, b).pvalue) if n > 1 and d.std(ddof=1) > 0 else math.nan
    return {"n": n, "mean_a": a.mean() if n else math.nan, "mean_b": b.mean() if n else math.nan,
            "diff_mean": d.mean() if n else math.nan, "diff_std": d.std(ddof=1) if n > 1 else math.nan,
            "p_value": p, "a_wins": int((d > 0).sum())}


def paired_comparisons(df: pd.DataFrame, comparisons: list[dict]) -> pd.DataFrame:
    """a vs b over the seeds both have (main study): mean difference, its std, paired t-test."""
    acc = arm_accuracy(df[df["ablation"] == MAIN])
    rows = []
    for comp in comparisons:
        a = acc[acc["arm"] == comp["a"]].set_index("seed")["final_acc"]
        b = acc[acc["arm"] == comp["b"]].set_index("seed")["final_acc"]
        rows.append({"a": comp["a"], "b": comp["b"], **_paired(a, b)})
    return pd.DataFrame(rows)


CONTRAST_COLUMNS = ["contrast", "weights", "n", "mean", "std", "ci95_low", "ci95_high", "p_value", "seeds_positive",
                    "note"]


def linear_contrasts(df: pd.DataFrame, contrasts: list[dict]) -> pd.DataFrame:
    """Each contrast sum_a w_a * acc_a evaluated per seed on the main arms' final accuracy (a
    cohort as its members' mean), over the seeds every arm of it has: mean, std, 95%
    t-interval, the one-sample t-test of mean 0 (two-sided) and the seeds where it is > 0.
    An arm with fewer seeds than the others is named in ``note`` (the contrast then uses the
    seeds all its arms share, and says it is not computed when they share none)."""
    from scipy import stats

    acc = arm_accuracy(df[df["ablation"] == MAIN]) if not df.empty else pd.DataFrame(columns=["arm", "seed",
                                                                                               "final_acc"])
    rows = []
    for c in contrasts:
        weights = c["weights"]
        per_arm = {arm: acc[acc["arm"] == arm].set_index("seed")["final_acc"] for arm in weights}
        seed_sets = {arm: set(s.index) for arm, s in per_arm.items()}
        common = sorted(set.intersection(*seed_sets.values())) if seed_sets else []
        widest = max((len(v) for v in seed_sets.values()), default=0)
        short = [f"{arm} has {len(v)} seed{'s' if len(v) != 1 else ''}" for arm, v in seed_sets.items()
                 if len(v) < widest]
        if short and common:
            note = "arms with fewer seeds: " + ", ".join(short) + f"; computed on the {len(common)} seeds all share"
        elif short:
            note = "not computed: its arms share no seed (" + ", ".join(short) + ")"
        else:
            note = ""
        values = pd.Series({s: sum(w * per_arm[a].loc[s] for a, w in weights.items()) for s in common}, dtype=float)
        n = len(values)
        mean = values.mean() if n else math.nan
        std = values.std(ddof=1) if n > 1 else math.nan
        half = t_quantile(n) * std / math.sqrt(n) if n > 1 else math.nan
        p = float(stats.ttest_1samp(values, 0.0).pvalue) if n > 1 and std > 0 else math.nan
        text = " ".join(f"{'+' if w > 0 else '−'} {abs(w):g}·{a}" for a, w in weights.items()).lstrip("+ ")
        rows.append({"contrast": c["name"], "weights": text, "n": n, "mean": mean, "std": std,
                     "ci95_low": mean - half, "ci95_high": mean + half, "p_value": p,
                     "seeds_positive": int((values > 0).sum()), "note": note})
    return pd.DataFrame(rows, columns=CONTRAST_COLUMNS)


def ablation_comparisons(df: pd.DataFrame) -> pd.DataFrame:
    """Per ablation and arm: each value against the value that reproduces the main settings
    (the one whose runs are the main arm's runs), paired over the seeds both have."""
    acc = arm_accuracy(df)
    main_runs = {arm: set(g["run_id"]) for arm, g in df[df["ablation"] == MAIN].groupby("arm")}
    rows = []
    for (abl, arm), g in df[df["ablation"] != MAIN].groupby(["ablation", "arm"], sort=False):
        values = list(dict.fromkeys(g["value"]))
        reference = next((v for v in values if set(g.loc[g["value"] == v, "run_id"]) <= main_runs.get(arm, set())), None)
        if reference is None:
            continue
        sel = acc[(acc["ablation"] == abl) & (acc["arm"] == arm)]
        b = sel[sel["value"] == reference].set_index("seed")["final_acc"]
        for value in values:
            if value == reference:
                continue
            a = sel[sel["value"] == value].set_index("seed")["final_acc"]
            stats = _paired(a, b)
            rows.append({"ablation": abl, "arm": arm, "value": value, "reference": reference, "n": stats["n"],
                         "mean_value": stats["mean_a"], "mean_reference": stats["mean_b"],
                         "diff_mean": stats["diff_mean"], "diff_std": stats["diff_std"], "p_value": stats["p_value"],
                         "value_wins": stats["a_wins"]})
    return pd.DataFrame(rows, columns=["ablation", "arm", "value", "reference", "n", "mean_value", "mean_reference",
                                       "diff_mean", "diff_std", "p_value", "value_wins"])


def mixed_machine_notes(df: pd.DataFrame, spec: dict) -> list[str]:
    """One line per comparison, contrast or ablation whose runs came from more than one kind of
    machine (float32 rounds differently on each: across kinds a difference carries that noise
    too, on top of the seeds'). A comparison or contrast counts only the runs of the seeds all its
    arms share, the ones its statistics use, so one not computed yet has no line. Empty when
    every one ran on one kind."""
    if df.empty:
        return []
    models = df[df["member"] != ENSEMBLE]
    main = models[models["ablation"] == MAIN]
    by_arm_seed = {arm: {seed: set(gs["machine"]) for seed, gs in g.groupby("seed")}
                   for arm, g in main.groupby("arm")}
    notes = []

    def note(what: str, arms) -> None:
        per_arm = [by_arm_seed.get(a, {}) for a in arms]
        shared = set.intersection(*(set(seeds) for seeds in per_arm))
        kinds = set().union(*(seeds[s] for seeds in per_arm for s in shared))
        if len(kinds) > 1:
            notes.append(f"{what}: runs from {' and '.join(sorted(kinds))}")

    for comp in spec.get("comparisons", []):
        note(f"{comp['a']} vs {comp['b']}", (comp["a"], comp["b"]))
    for c in spec.get("contrasts", []):
        note(f"contrast {c['name']}", c["weights"])
    for (abl, arm), g in models[models["ablation"] != MAIN].groupby(["ablation", "arm"], sort=False):
        kinds = set(g["machine"])
        if len(kinds) > 1:
            notes.append(f"ablation {abl} on {arm}: runs from {' and '.join(sorted(kinds))}")
    return notes


@dataclass
class Study:
    """A study folder loaded once: what the table, the plots, ``compare`` and ``publish`` all
    render from. ``runs`` has one row per (planned run, model) with its run id (runs.csv)."""

    folder: Path
    manifest: dict
    records: dict[str, dict]
    runs: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    ablations: pd.DataFrame
    contrasts: pd.DataFrame

    @property
    def spec(self) -> dict:
        return self.manifest["spec"]

    @property
    def tolerance(self) -> float:
        """The profile's fixed regression tolerance (``compare_tolerance`` widens it)."""
        return float(self.spec["profiles"][self.manifest["profile"]]["tolerance"])

    def mixed_machine_notes(self) -> list[str]:
        return mixed_machine_notes(self.runs, self.spec)

    def machine_kinds(self) -> list[str]:
        """The kinds of machine (``envinfo.machine_kind``: GPU name, or CPU model and
        instruction set) that the study's complete runs came from."""
        return sorted({machine_kind(r.get("env") or {}) for r in self.records.values() if r["status"] == "complete"})

    def curves(self) -> pd.DataFrame:
        """Test accuracy per epoch of every main run's models."""
        rows = []
        for entry in self.manifest["runs"]:
            rec = self.records.get(entry["run_id"])
            if entry.get("ablation") or rec is None or rec["status"] != "complete":
                continue
            for e in rec["curves"]:
                for member, acc in e["test_acc"].items():
                    rows.append({"arm": entry["arm"], "member": member, "seed": entry["seed"], "epoch": e["epoch"],
                                 "stage": e["stage"], "acc": acc})
        return pd.DataFrame(rows, columns=["arm", "member", "seed", "epoch", "stage", "acc"])


def load_study(folder: Path) -> Study:
    """Read a study folder (manifest and records, each checked) and aggregate it."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    records = load_records(folder, manifest)
    df = runs_frame(manifest, records)
    spec = manifest["spec"]
    return Study(folder, manifest, records, df, summarize(df, spec), paired_comparisons(df, spec.get("comparisons", [])),
                 ablation_comparisons(df), linear_contrasts(df, spec.get("contrasts", [])))


SPREAD_SIGMAS = 3.0  # how many standard errors of a difference of means the compare tolerance allows


def compare_tolerance(s_sum: pd.DataFrame, fixed: float) -> tuple[float, str]:
    """The tolerance a rerun can honestly meet on any machine. float32 kernels round
    differently on each kind of CPU or GPU, and in a chaotic regime (few steps, a network
    near its plateau) those differences act like another seed: so the tolerance is the larger
    of the profile's fixed one and SPREAD_SIGMAS standard errors of the difference of two
    n-seed means, s * sqrt(2 / n), with s the stored study's seed std pooled over every row
    with n > 1. Exact regressions are the golden-trajectory check's job (tests/test_golden.py)."""
    multi = s_sum[s_sum["n"] > 1]
    if multi.empty:
        return fixed, f"the profile's {fixed:g} points"
    pooled = math.sqrt(float((multi["final_std"] ** 2).mean()))
    n = int(multi["n"].mode().iloc[0])
    spread = SPREAD_SIGMAS * pooled * math.sqrt(2 / n)
    how = (f"the larger of the profile's {fixed:g} and {SPREAD_SIGMAS:g} x the stored seeds' pooled std "
           f"{pooled:.2f} x sqrt(2/{n}) = {spread:.2f}")
    return round(max(fixed, spread), 2), how


def compare_studies(new: Path | Study, stored: Path | Study) -> tuple[bool, list[str], float]:
    """Every (ablation, value, arm, member) of the stored study must be present in the new one
    with the same n and a mean final accuracy within ``compare_tolerance``."""
    stored, new = _study(stored), _study(new)
    s_sum, n_sum = stored.summary, new.summary
    if s_sum.empty:
        raise UserError(f"{stored.folder}: no complete runs to compare against")
    tol, _ = compare_tolerance(s_sum, stored.tolerance)
    key = ["ablation", "value", "arm", "member"]
    merged = s_sum.merge(n_sum, on=key, how="left", suffixes=("_stored", "_new"), indicator=True)
    problems = []
    for _, r in merged.iterrows():
        name = f"{r['arm']}/{r['member']}" + ("" if r["ablation"] == MAIN else f" [{r['ablation']}={r['value']}]")
        if r["_merge"] != "both":
            problems.append(f"{name}: missing from {new.folder}")
            continue
        if r["n_stored"] != r["n_new"]:
            problems.append(f"{name}: n = {int(r['n_new'])} seeds, stored {int(r['n_stored'])}")
        delta = r["final_mean_new"] - r["final_mean_stored"]
        if not abs(delta) <= tol:
            problems.append(f"{name}: final accuracy {r['final_mean_new']:.2f}% vs stored {r['final_mean_stored']:.2f}% "
                            f"({delta:+.2f} points, tolerance {tol})")
    return not problems, problems, tol


def _study(s: Path | Study) -> Study:
    return s if isinstance(s, Study) else load_study(s)


def tolerance_explained(stored: Path | Study) -> str:
    stored = _study(stored)
    return compare_tolerance(stored.summary, stored.tolerance)[1]


def new_only_notes(new: Path | Study, stored: Path | Study) -> list[str]:
    """One note per (ablation, value, arm, member) of the new study that the stored study lacks:
    not a failure (there is nothing to compare it with), but worth saying."""
    new, stored = _study(new), _study(stored)
    s_sum, n_sum = stored.summary, new.summary
    if n_sum.empty:
        return []
    key = ["ablation", "value", "arm", "member"]
    stored_keys = set() if s_sum.empty else set(map(tuple, s_sum[key].astype(str).itertuples(index=False)))
    notes = []
    for _, r in n_sum.iterrows():
        if tuple(str(r[k]) for k in key) in stored_keys:
            continue
        name = f"{r['arm']}/{r['member']}" + ("" if r["ablation"] == MAIN else f" [{r['ablation']}={r['value']}]")
        notes.append(f"note: {name} is in {new.folder} but not in the stored results")
    return notes


def machine_note(new: Path | Study, stored: Path | Study) -> str | None:
    """A note when the stored study's runs came from other kinds of machine than the new
    study's (float32 rounds differently on each kind); None when they are the same."""
    s_kinds, n_kinds = _study(stored).machine_kinds(), _study(new).machine_kinds()
    if not s_kinds or not n_kinds or s_kinds == n_kinds:
        return None
    return (f"note: stored results came from {' and '.join(s_kinds)}, these from {' and '.join(n_kinds)}; "
            "float32 results differ between kinds of machine, the tolerance covers that")
