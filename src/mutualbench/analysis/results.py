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
from dataclasses import field as dataclass_field
from pathlib import Path

import pandas as pd

from ..core.envinfo import MIXED, record_machine_kind
from ..core.errors import UserError
from ..storage.layout import MANIFEST, RUNS
from ..storage.records import RUN_ID, read_record, record_layout
from ..storage.spec_schema import name_problem
from ..storage.stored_schema import manifest_problem, record_entry_problem
from .stats import holm_by_family, one_sample, paired, significant, t_quantile

MAIN = "main"  # the ablation label of the main study's runs
# the member label of a cohort's ensemble row (mean of the members' softmaxes, final epoch only;
# recorded by runs made since it existed): reported beside the members, never averaged with them
ENSEMBLE = "ensemble (mean softmax)"


def load_manifest(folder: Path) -> dict:
    """The study manifest of ``folder``, checked (``stored_schema.Manifest``: every key the
    tables, claims, comparisons and ``status`` read, of its type, and its cross-checks); any
    problem is a one-line UserError naming the file, the key path and how to restore it."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise UserError(f"{folder}: no {MANIFEST}; give a folder written by `mutualbench replicate`")
    restore = (f"restore it from version control (git checkout -- {path}), or move the folder aside and rerun "
               "`mutualbench replicate`")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise UserError(f"{path}: unreadable study manifest ({e.strerror or type(e).__name__})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
        raise UserError(f"{path}: malformed study manifest ({type(e).__name__}); {restore}") from None
    problem = manifest_problem(manifest)
    if problem:
        raise UserError(f"{path}: malformed study manifest ({problem}); {restore}")
    for i, e in enumerate(manifest["runs"]):
        for field in ("run_id", "arm", "ablation", "value"):
            if e.get(field) is not None and name_problem(e[field]) and not (field == "run_id"
                                                                           and RUN_ID.match(e[field])):
                raise UserError(f"{path}: runs[{i}].{field} = {e[field]!r} cannot name a file ({name_problem(e[field])}); "
                                "restore the manifest (e.g. from version control) or rerun `mutualbench replicate`")
    from .claims import check_claims  # claims reads this module

    try:  # what the claims table reads of each claim (a spec's [[claims]], as the spec file is checked)
        check_claims(manifest["spec"], Path("spec"))
    except UserError as e:
        raise UserError(f"{path}: malformed study manifest ({e}); {restore}") from None
    return manifest


def load_records(folder: Path, manifest: dict) -> dict[str, dict]:
    """The manifest's run records that exist; a damaged one (not UTF-8, not JSON, the wrong
    shape, impossible values) or one that contradicts the manifest (another seed, method or
    data set) is a one-line UserError naming the file: a stored study is never silently
    partial, nor made of another study's runs."""
    records = {}
    fix = ("restore that file (e.g. from version control) or rerun the study with `mutualbench replicate`, which "
           "moves a damaged record of its own aside and reruns that run")
    for entry in manifest["runs"]:
        rid = entry["run_id"]
        path = Path(folder) / RUNS / f"{rid}.json"
        if not path.exists():
            continue
        if rid not in records:
            try:
                records[rid] = read_record(path)
            except UserError as e:
                raise UserError(f"{e}; {fix}") from None
        problem = record_entry_problem(records[rid], entry, manifest)
        if problem:
            raise UserError(f"{path}: impossible run record ({problem}); {fix}")
    return records


def has_complete_runs(folder: Path) -> bool:
    """Whether the study folder has at least one complete run (a table can be written)."""
    manifest = load_manifest(folder)
    return any(r["status"] == "complete" for r in load_records(folder, manifest).values())


LAST_K = 5  # the secondary statistic: the mean test accuracy of a run's last LAST_K epochs
LAST_LABEL = f"last-{LAST_K} mean"
# the two statistics every table, comparison and contrast reports: (column prefix, label)
STATISTICS = (("final", "final epoch"), ("last5", LAST_LABEL))
_ACC = {"final": "final_acc", "last5": "last5_acc"}


def last_epochs_mean(curves: list[dict], member: str, k: int = LAST_K) -> float:
    """The mean test accuracy of ``member`` over the last ``k`` epochs of the run's last stage
    (its final training stage), from the record's curves; NaN when that stage has fewer than
    ``k`` epochs (the statistic is then not defined, rather than a mean of fewer epochs)."""
    if not curves:
        return math.nan
    last_stage = curves[-1].get("stage")
    accs = [e["test_acc"].get(member) for e in curves if e.get("stage") == last_stage]
    accs = [a for a in accs if a is not None]
    if len(accs) < k:
        return math.nan
    return float(sum(accs[-k:]) / k)


def compared_members(config: dict, compare: list[str] | None = None) -> list[str] | None:
    """The models of a run that its arm is compared on: the arm's ``compare`` (its spec), else
    those the run's method declares from the run's config (``Method.compared_members``: e.g.
    ONE's branches, not its gated ensemble). None: every model the run records (a method not
    registered in this process, such as a plugin's, or a config without the architectures and
    cohort the declaration reads)."""
    if compare:
        return list(compare)
    from ..methods import METHODS, get_method

    method = config.get("method")
    if method not in METHODS or not isinstance(config.get("arch"), list) or "cohort" not in config:
        return None
    return get_method(method).compared_members(config)


def failed_below(manifest: dict) -> float | None:
    """The profile's rule for a run that failed to train (``failed_below``, accuracy in
    percent; None: the profile states none, and every complete run counts)."""
    spec = manifest.get("spec") or {}
    value = ((spec.get("profiles") or {}).get(manifest.get("profile")) or {}).get("failed_below")
    return None if value is None else float(value)


def failed_to_train(rec: dict, compared: list[str] | None, below: float | None) -> bool:
    """A complete run failed to train when its profile states ``failed_below`` and every
    model its arm is compared on ends at or below it (e.g. at chance: a network whose units
    died predicts one class). Stated in the spec before the runs it judges."""
    if below is None:
        return False
    names = compared if compared is not None else list(rec["models"])
    accs = [rec["models"][m]["final_test_acc"] for m in names if m in rec["models"]]
    return bool(accs) and all(a is not None and a <= below for a in accs)


def runs_frame(manifest: dict, records: dict[str, dict]) -> pd.DataFrame:
    """One row per (planned run, model) of a complete record; ``compared`` says whether the
    model is one its arm is compared on (``compared_members``), the mean-softmax ensemble's
    row never; ``failed`` whether the run failed to train (``failed_to_train``). A run that
    lacks a model its arm is compared on is a one-line UserError: the arm's mean would
    silently be over fewer models."""
    arms = (manifest.get("spec") or {}).get("arms") or []
    compare = {a.get("name"): a.get("compare") for a in arms if isinstance(a, dict)}
    below = failed_below(manifest)
    rows = []
    for entry in manifest["runs"]:
        rec = records.get(entry["run_id"])
        if rec is None or rec["status"] != "complete":
            continue
        curves = rec.get("curves") or []
        compared = compared_members(rec["config"], compare.get(entry["arm"]))
        missing = [m for m in compared or [] if m not in rec["models"]]
        if missing:
            raise UserError(f"run {entry['run_id']} of arm {entry['arm']!r} does not record {', '.join(missing)}, "
                            f"which the arm is compared on (it records {', '.join(rec['models'])}); name those in "
                            "the arm's compare = [...] in the spec")
        failed = failed_to_train(rec, compared, below)
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
                "last5_acc": last_epochs_mean(curves, member),
                "best_acc_test_selected": m["best_test_acc_test_selected"],
                "train_s": rec["timings"]["train_s"],
                "device": rec["env"]["device"],
                "machine": record_machine_kind(rec),
                "layout": record_layout(rec),
                "compared": compared is None or member in compared,
                "failed": failed,
            })
        ens = rec.get("ensemble")
        if isinstance(ens, dict) and ens.get("final_test_acc") is not None:
            rows.append(dict(rows[-1], member=ENSEMBLE, arch="+".join(rec["models"][m]["arch"] for m in ens["members"]),
                             params=ens["params"], final_acc=ens["final_test_acc"], last5_acc=math.nan,
                             best_acc_test_selected=math.nan, compared=False))
    cols = ["ablation", "value", "arm", "method", "member", "seed", "run_id", "arch", "params", "final_acc",
            "last5_acc", "best_acc_test_selected", "train_s", "device", "machine", "layout", "compared", "failed"]
    return pd.DataFrame(rows, columns=cols)


def compared_on(df: pd.DataFrame) -> dict[str, list[str]]:
    """Each main arm that is compared on fewer than all the models its runs record, with the
    models it is compared on, in the records' order (e.g. ``one``: its branches, without its
    gated ensemble); an arm compared on every model it records is not listed."""
    if df.empty or "compared" not in df:
        return {}
    models = df[(df["ablation"] == MAIN) & (df["member"] != ENSEMBLE)]
    out = {}
    for arm, g in models.groupby("arm", sort=False):
        chosen = list(dict.fromkeys(g.loc[g["compared"].astype(bool), "member"]))
        if chosen != list(dict.fromkeys(g["member"])):
            out[arm] = chosen
    return out


def summarize(df: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """Per (ablation, value, arm, member): n, final accuracy mean/std/95% CI, the last-5 mean's
    mean and std (over the seeds where it is defined), best-epoch accuracy (selected on the
    test set), parameters, training time, published number and difference."""
    published = {a["name"]: a.get("published", {}) for a in spec.get("arms", [])}
    order = {a["name"]: i for i, a in enumerate(spec.get("arms", []))}
    rows = []
    for (abl, val, arm, member), g in df.groupby(["ablation", "value", "arm", "member"], sort=False):
        n = len(g)
        mean, std = g["final_acc"].mean(), g["final_acc"].std(ddof=1) if n > 1 else math.nan
        half = t_quantile(n) * std / math.sqrt(n) if n > 1 else math.nan
        last5 = g["last5_acc"].dropna()
        pub = published.get(arm, {}).get(member) if abl == MAIN else None
        rows.append({
            "ablation": abl, "value": val, "arm": arm, "method": g["method"].iloc[0], "member": member,
            "arch": g["arch"].iloc[0], "params": int(g["params"].iloc[0]), "n": n,
            "final_mean": mean, "final_std": std, "ci95_low": mean - half, "ci95_high": mean + half,
            "last5_n": len(last5), "last5_mean": last5.mean() if len(last5) else math.nan,
            "last5_std": last5.std(ddof=1) if len(last5) > 1 else math.nan,
            "best_mean_test_selected": g["best_acc_test_selected"].mean(),
            "train_s_mean": g["train_s"].mean(),
            "published": pub, "diff_vs_published": (mean - pub) if pub is not None else None,
            "_order": (abl != MAIN, abl, order.get(arm, 99), val),
        })
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def arm_accuracy(df: pd.DataFrame, statistic: str = "final") -> pd.DataFrame:
    """Per (ablation, value, arm, seed): the accuracy at ``statistic`` (``final``: final epoch,
    ``last5``: the last-5 mean), averaged over the members the arm is compared on (column
    ``compared``, ``runs_frame``: a cohort's students, ONE's branches without its gated
    ensemble; every member of a frame without the column), in column ``final_acc`` /
    ``last5_acc``; seeds where the statistic is undefined are left out."""
    col = _ACC[statistic]
    if col not in df:  # a frame built without the statistic: undefined on every seed
        df = df.assign(**{col: math.nan})
    df = df[(df["member"] != ENSEMBLE) & df[col].notna()]
    if "compared" in df:  # NaN (a row of a frame without the column) counts, as it did before
        df = df[df["compared"].astype(bool)]
    return df.groupby(["ablation", "value", "arm", "seed"], sort=False)[col].mean().reset_index()


def seed_values(df: pd.DataFrame, weights: dict[str, float], statistic: str = "final") -> pd.Series:
    """Per seed, sum_a w_a * acc_a of the main study at ``statistic`` (a cohort as the mean of
    the members it is compared on, ``arm_accuracy``), over the seeds every arm of ``weights``
    has: a comparison a vs b is ``{a: 1, b: -1}``. The values behind a comparison's or
    contrast's test, for tests that need them whole (equivalence, power)."""
    main = df[df["ablation"] == MAIN] if not df.empty else df
    if main.empty:
        return pd.Series(dtype=float)
    acc = arm_accuracy(main, statistic)
    col = _ACC[statistic]
    per_arm = {arm: acc[acc["arm"] == arm].set_index("seed")[col] for arm in weights}
    common = sorted(set.intersection(*(set(s.index) for s in per_arm.values()))) if per_arm else []
    return pd.Series({s: sum(w * per_arm[a].loc[s] for a, w in weights.items()) for s in common}, dtype=float)


def profile_arms(spec: dict, profile: str | None) -> set[str]:
    """The arms that run in ``profile`` (every arm without ``profiles``, and those naming it)."""
    return {a["name"] for a in spec.get("arms", []) if profile is None or "profiles" not in a
            or profile in (a.get("profiles") or {})}


def agreement(row: dict | pd.Series) -> str:
    """Whether the two statistics of a comparison or contrast agree: ``agree``, ``sign differs``
    or ``significance differs`` (Holm-adjusted p below ALPHA at one statistic only); empty when
    either statistic is not computed."""
    d1, d2 = row["diff_mean"], row["last5_diff_mean"]
    p1, p2 = row["p_holm"], row["last5_p_holm"]
    if any(isinstance(x, float) and math.isnan(x) for x in (d1, d2)):
        return ""
    if (d1 > 0) != (d2 > 0) and d1 != 0 and d2 != 0:
        return "sign differs"
    if significant(p1) != significant(p2):
        return "significance differs"
    return "agree"


def _with_both(rows: list[dict], per_stat) -> None:
    """Fill each row's statistics at both STATISTICS (``per_stat(row, statistic)`` returns a
    ``paired``-shaped dict), the last-5 ones prefixed ``last5_``."""
    for row in rows:
        for stat, _ in STATISTICS:
            pre = "" if stat == "final" else f"{stat}_"
            for k, v in per_stat(row, stat).items():
                row[pre + k] = v


COMPARISON_COLUMNS = ["family", "a", "b", "n", "mean_a", "mean_b", "diff_mean", "diff_std", "ci95_low", "ci95_high",
                      "p_value", "p_holm", "a_wins", "b_wins", "last5_n", "last5_mean_a", "last5_mean_b", "last5_diff_mean",
                      "last5_diff_std", "last5_ci95_low", "last5_ci95_high", "last5_p_value", "last5_p_holm",
                      "last5_a_wins", "last5_b_wins", "statistics"]
DEFAULT_COMPARISON_FAMILY = "comparisons"
DEFAULT_CONTRAST_FAMILY = "contrasts"


def _adjust(out: pd.DataFrame) -> pd.DataFrame:
    """Holm-adjusted p-values within each family, at both statistics, and their agreement."""
    if out.empty:
        return out
    for stat, _ in STATISTICS:
        pre = "" if stat == "final" else f"{stat}_"
        out[f"{pre}p_holm"] = holm_by_family(out, f"{pre}p_value")
    out["statistics"] = [agreement(r) for _, r in out.iterrows()]
    return out


def paired_comparisons(df: pd.DataFrame, comparisons: list[dict], arms: set[str] | None = None) -> pd.DataFrame:
    """a vs b over the seeds both have (main study; each arm as ``arm_accuracy`` gives it, the
    mean of the members it is compared on), at both statistics: mean difference, its
    std and 95% t-interval, the paired t-test, and its Holm adjustment within the comparison's
    ``family`` (default ``comparisons``). ``arms``: the arms of the profile; a comparison
    naming another arm is not part of this profile and is left out (it is not a test made)."""
    main = df[df["ablation"] == MAIN] if not df.empty else df
    acc = {stat: arm_accuracy(main, stat) for stat, _ in STATISTICS} if not df.empty else {}
    rows = [{"family": c.get("family", DEFAULT_COMPARISON_FAMILY), "a": c["a"], "b": c["b"]}
            for c in comparisons if arms is None or {c["a"], c["b"]} <= arms]

    def per_stat(row, stat):
        if not acc:
            return paired(pd.Series(dtype=float), pd.Series(dtype=float))
        a_ = acc[stat][acc[stat]["arm"] == row["a"]].set_index("seed")[_ACC[stat]]
        b_ = acc[stat][acc[stat]["arm"] == row["b"]].set_index("seed")[_ACC[stat]]
        return paired(a_, b_)

    _with_both(rows, per_stat)
    return _adjust(pd.DataFrame(rows, columns=COMPARISON_COLUMNS))


CONTRAST_COLUMNS = ["family", "contrast", "weights", "n", "mean", "std", "ci95_low", "ci95_high", "p_value", "p_holm",
                    "seeds_positive", "seeds_negative", "last5_n", "last5_mean", "last5_std", "last5_ci95_low",
                    "last5_ci95_high", "last5_p_value", "last5_p_holm", "last5_seeds_positive", "last5_seeds_negative",
                    "statistics", "note"]


def linear_contrasts(df: pd.DataFrame, contrasts: list[dict], arms: set[str] | None = None) -> pd.DataFrame:
    """Each contrast sum_a w_a * acc_a evaluated per seed on the main arms (a cohort as the mean
    of the members it is compared on, ``arm_accuracy``), at both statistics, over the seeds
    every arm of it has: mean, std, 95% t-interval, the one-sample t-test of mean 0
    (two-sided), its Holm adjustment within the contrast's ``family`` (default ``contrasts``)
    and the seeds where it is > 0. An arm with fewer seeds than the others is named in
    ``note`` (the contrast then uses the seeds all its arms share, and says it is not computed
    when they share none). ``arms``: as for ``paired_comparisons``."""
    empty = pd.DataFrame(columns=["arm", "seed", "final_acc", "last5_acc"])
    main = df[df["ablation"] == MAIN] if not df.empty else df
    acc = {stat: (arm_accuracy(main, stat) if not df.empty else empty) for stat, _ in STATISTICS}
    rows = []
    for c in contrasts:
        weights = c["weights"]
        if arms is not None and not set(weights) <= arms:
            continue
        per_arm = {arm: acc["final"][acc["final"]["arm"] == arm].set_index("seed")["final_acc"] for arm in weights}
        seed_sets = {arm: set(s.index) for arm, s in per_arm.items()}
        common = sorted(set.intersection(*seed_sets.values())) if seed_sets else []
        widest = max((len(v) for v in seed_sets.values()), default=0)
        short = [f"{arm} has {len(v)} seed{'s' if len(v) != 1 else ''}" for arm, v in seed_sets.items()
                 if len(v) < widest]
        if short and common:
            note = "arms with fewer seeds: " + ", ".join(short) + f"; computed on the {len(common)} seed{'s' if len(common) != 1 else ''} they all share"
        elif short or not common:
            note = "not computed: its arms share no seed" + (" (" + ", ".join(short) + ")" if short else "")
        else:
            note = ""
        text = " ".join(f"{'+' if w > 0 else '−'} {abs(w):g}·{a}" for a, w in weights.items()).lstrip("+ ")
        rows.append({"family": c.get("family", DEFAULT_CONTRAST_FAMILY), "contrast": c["name"], "weights": text,
                     "_weights": weights, "note": note})

    def per_stat(row, stat):
        col = _ACC[stat]
        per_arm = {arm: acc[stat][acc[stat]["arm"] == arm].set_index("seed")[col] for arm in row["_weights"]}
        common = sorted(set.intersection(*(set(s.index) for s in per_arm.values())))
        values = pd.Series({s: sum(w * per_arm[a].loc[s] for a, w in row["_weights"].items()) for s in common},
                           dtype=float)
        r = one_sample(values)
        return {"n": r["n"], "mean": r["mean"], "std": r["std"], "ci95_low": r["ci95_low"],
                "ci95_high": r["ci95_high"], "p_value": r["p_value"], "seeds_positive": r["positive"],
                "seeds_negative": r["negative"]}

    _with_both(rows, per_stat)
    for r in rows:
        del r["_weights"]
    out = pd.DataFrame(rows, columns=CONTRAST_COLUMNS)
    if out.empty:
        return out
    # agreement() reads the comparison's column names
    for stat, _ in STATISTICS:
        pre = "" if stat == "final" else f"{stat}_"
        out[f"{pre}p_holm"] = holm_by_family(out, f"{pre}p_value")
    out["statistics"] = [agreement({"diff_mean": r["mean"], "last5_diff_mean": r["last5_mean"],
                                    "p_holm": r["p_holm"], "last5_p_holm": r["last5_p_holm"]})
                         for _, r in out.iterrows()]
    return out


def ablation_contrasts(df: pd.DataFrame, contrasts: list[dict], ablations: list[dict]) -> pd.DataFrame:
    """The spec's contrasts within each value of each ablation, for the contrasts whose arms the
    ablation varies (e.g. the factorial's effects under another schedule): ``linear_contrasts``
    on that value's runs, Holm within each (ablation, value) and family. Whether a reading holds
    when a setting changes, beside the main study's: never in its place. Columns: ablation,
    value, then ``CONTRAST_COLUMNS``."""
    out = []
    for abl in ablations:
        varied = set(abl.get("arms", []))
        chosen = [c for c in contrasts if set(c["weights"]) <= varied]
        if not chosen or df.empty:
            continue
        runs = df[df["ablation"] == abl["name"]]
        for value in dict.fromkeys(runs["value"]):
            found = linear_contrasts(runs[runs["value"] == value].assign(ablation=MAIN), chosen)
            if not found.empty:
                out.append(found.assign(ablation=abl["name"], value=value))
    columns = ["ablation", "value", *CONTRAST_COLUMNS]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


ABLATION_COLUMNS = ["ablation", "arm", "value", "reference", "n", "mean_value", "mean_reference", "diff_mean",
                    "diff_std", "p_value", "p_holm", "value_wins", "last5_n", "last5_mean_value",
                    "last5_mean_reference", "last5_diff_mean", "last5_diff_std", "last5_p_value", "last5_p_holm",
                    "last5_value_wins", "statistics"]


def ablation_comparisons(df: pd.DataFrame) -> pd.DataFrame:
    """Per ablation and arm: each value against the value that reproduces the main settings
    (the one whose runs are the main arm's runs), paired over the seeds both have, at both
    statistics; Holm-adjusted over all of the profile's ablation comparisons (one family)."""
    acc = {stat: arm_accuracy(df, stat) for stat, _ in STATISTICS}
    main_runs = {arm: set(g["run_id"]) for arm, g in df[df["ablation"] == MAIN].groupby("arm")}
    rows = []
    for (abl, arm), g in df[df["ablation"] != MAIN].groupby(["ablation", "arm"], sort=False):
        values = list(dict.fromkeys(g["value"]))
        reference = next((v for v in values if set(g.loc[g["value"] == v, "run_id"]) <= main_runs.get(arm, set())), None)
        if reference is None:
            continue
        rows += [{"ablation": abl, "arm": arm, "value": v, "reference": reference} for v in values if v != reference]

    def per_stat(row, stat):
        col = _ACC[stat]
        sel = acc[stat][(acc[stat]["ablation"] == row["ablation"]) & (acc[stat]["arm"] == row["arm"])]
        r = paired(sel[sel["value"] == row["value"]].set_index("seed")[col],
                   sel[sel["value"] == row["reference"]].set_index("seed")[col])
        return {"n": r["n"], "mean_value": r["mean_a"], "mean_reference": r["mean_b"], "diff_mean": r["diff_mean"],
                "diff_std": r["diff_std"], "p_value": r["p_value"], "value_wins": r["a_wins"]}

    _with_both(rows, per_stat)
    out = pd.DataFrame(rows, columns=ABLATION_COLUMNS)
    if out.empty:
        return out
    out["family"] = "ablations"
    out = _adjust(out).drop(columns="family")
    return out


def mixed_machine_notes(df: pd.DataFrame, spec: dict) -> list[str]:
    """One line per comparison, contrast or ablation whose runs came from more than one kind of
    machine, or that has a run resumed on another kind ("A + B"; float32 rounds differently
    on each: across kinds a difference carries that noise too, on top of the seeds'). A
    comparison or contrast counts only the runs of the seeds all its arms share, the ones its
    statistics use, so one not computed yet has no line. Empty when every one ran on one kind."""
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
        if len(kinds) > 1 or any(MIXED in k for k in kinds):
            notes.append(f"{what}: runs from {' and '.join(sorted(kinds))}")

    for comp in spec.get("comparisons", []):
        note(f"{comp['a']} vs {comp['b']}", (comp["a"], comp["b"]))
    for c in spec.get("contrasts", []):
        note(f"contrast {c['name']}", c["weights"])
    for (abl, arm), g in models[models["ablation"] != MAIN].groupby(["ablation", "arm"], sort=False):
        kinds = set(g["machine"])
        if len(kinds) > 1 or any(MIXED in k for k in kinds):
            notes.append(f"ablation {abl} on {arm}: runs from {' and '.join(sorted(kinds))}")
    return notes


def mixed_layout_notes(df: pd.DataFrame) -> list[str]:
    """One line per arm (of the main study or an ablation) whose runs trained in more than one
    memory layout (``records.record_layout``), e.g. seeds made before and after the
    single-model stages honoured ``speed.channels_last``: float32 rounds differently in each,
    as on each kind of machine. Arms of different methods may differ in layout; that is the
    method's setting, noted in the records, not a mix within an arm."""
    if df.empty or "layout" not in df:
        return []
    notes = []
    models = df[df["member"] != ENSEMBLE]
    for (abl, val, arm), g in models.groupby(["ablation", "value", "arm"], sort=False):
        by_layout = g.drop_duplicates("run_id").groupby("layout", sort=True)["seed"]
        if by_layout.ngroups < 2:
            continue
        where = arm if abl == MAIN else f"ablation {abl} = {val} on {arm}"
        parts = [f"{layout} (seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in sorted(seeds))})"
                 for layout, seeds in by_layout]
        notes.append(f"{where}: runs in {' and '.join(parts)}")
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
    # the contrasts within each ablation value (``ablation_contrasts``); empty where none applies
    ablation_contrasts: pd.DataFrame = dataclass_field(default_factory=pd.DataFrame)
    # the rows of runs that failed to train (``failed_to_train``): kept out of ``runs`` and so of
    # every mean, comparison and contrast, listed in table.md, counted as run by the claims
    failed: pd.DataFrame = dataclass_field(default_factory=pd.DataFrame)

    @property
    def spec(self) -> dict:
        return self.manifest["spec"]

    @property
    def tolerance(self) -> float:
        """The profile's fixed regression tolerance (``compare_tolerance`` widens it)."""
        return float(self.spec["profiles"][self.manifest["profile"]]["tolerance"])

    def mixed_machine_notes(self) -> list[str]:
        return mixed_machine_notes(self.runs, self.spec)

    def mixed_layout_notes(self) -> list[str]:
        return mixed_layout_notes(self.runs)

    def failed_seeds(self, arms) -> set[int]:
        """The seeds of the main study at which a run of one of ``arms`` failed to train while
        every one of ``arms`` has its run there (trained or not): seeds a test has run, though
        they are not in it."""
        if self.failed.empty:
            return set()
        arms = list(arms)
        both = pd.concat([self.runs, self.failed])
        main = both[(both["ablation"] == MAIN) & both["arm"].isin(arms)]
        failed = self.failed[(self.failed["ablation"] == MAIN) & self.failed["arm"].isin(arms)]
        return {int(s) for s in set(failed["seed"]) if set(main.loc[main["seed"] == s, "arm"]) == set(arms)}

    def failed_notes(self) -> list[str]:
        """One line per run that failed to train: arm (and ablation value), seed, run id and
        the final accuracy of each model its arm is compared on."""
        if self.failed.empty:
            return []
        notes = []
        rows = self.failed[(self.failed["member"] != ENSEMBLE) & self.failed["compared"].astype(bool)]
        for (abl, val, arm, seed, rid), g in rows.groupby(["ablation", "value", "arm", "seed", "run_id"], sort=False):
            where = arm if abl == MAIN else f"ablation {abl} = {val} on {arm}"
            accs = ", ".join(f"{m} {a:.2f}%" for m, a in zip(g["member"], g["final_acc"], strict=True))
            notes.append(f"{where}, seed {seed} (run {rid}): {accs}")
        return notes

    def machine_kinds(self) -> list[str]:
        """The kinds of machine (``envinfo.record_machine_kind``: GPU name, or CPU model and
        instruction set; "A + B" for a run resumed on another kind) that the study's complete
        runs came from."""
        return sorted({record_machine_kind(r) for r in self.records.values() if r["status"] == "complete"})

    def _main_records(self):
        """(manifest entry, record) of every complete run of the main study (no ablation) that
        did not fail to train (its curves are not in the arm's band, as its accuracy is not in
        the arm's mean)."""
        failed = set(self.failed["run_id"]) if not self.failed.empty else set()
        for entry in self.manifest["runs"]:
            rec = self.records.get(entry["run_id"])
            if not entry.get("ablation") and rec is not None and rec["status"] == "complete" \
                    and entry["run_id"] not in failed:
                yield entry, rec

    def compared_on(self) -> dict[str, list[str]]:
        return compared_on(self.runs)

    def curves(self) -> pd.DataFrame:
        """Test accuracy per epoch of every main run's models; ``compared``: whether the model
        is one its arm is compared on (``runs_frame``)."""
        runs = self.runs
        out = runs[~runs["compared"].astype(bool)] if "compared" in runs else runs.iloc[:0]
        left_out = set(zip(out["run_id"], out["member"], strict=True))
        rows = []
        for entry, rec in self._main_records():
            for e in rec["curves"]:
                for member, acc in e["test_acc"].items():
                    rows.append({"arm": entry["arm"], "member": member, "seed": entry["seed"], "epoch": e["epoch"],
                                 "stage": e["stage"], "acc": acc,
                                 "compared": (entry["run_id"], member) not in left_out})
        return pd.DataFrame(rows, columns=["arm", "member", "seed", "epoch", "stage", "acc", "compared"])

    def loss_terms(self) -> pd.DataFrame:
        """Every loss term per epoch of every main run's models (records made before the
        terms were recorded have none)."""
        rows = []
        for entry, rec in self._main_records():
            for e in rec["curves"]:
                for member, terms in (e.get("train_loss_terms") or {}).items():
                    rows += [{"arm": entry["arm"], "member": member, "seed": entry["seed"], "epoch": e["epoch"],
                              "stage": e["stage"], "term": term, "loss": value} for term, value in terms.items()]
        return pd.DataFrame(rows, columns=["arm", "member", "seed", "epoch", "stage", "term", "loss"])


def load_study(folder: Path) -> Study:
    """Read a study folder (manifest and records, each checked) and aggregate it."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    records = load_records(folder, manifest)
    everything = runs_frame(manifest, records)
    failed = everything[everything["failed"].astype(bool)].reset_index(drop=True)
    df = everything[~everything["failed"].astype(bool)].reset_index(drop=True)
    spec = manifest["spec"]
    arms = profile_arms(spec, manifest.get("profile"))
    return Study(folder, manifest, records, df, summarize(df, spec),
                 paired_comparisons(df, spec.get("comparisons", []), arms), ablation_comparisons(df),
                 linear_contrasts(df, spec.get("contrasts", []), arms),
                 ablation_contrasts(df, spec.get("contrasts", []), spec.get("ablations", [])), failed)


def _study(s: Path | Study) -> Study:
    return s if isinstance(s, Study) else load_study(s)


def machine_note(new: Path | Study, stored: Path | Study) -> str | None:
    """A note when the stored study's runs came from other kinds of machine than the new
    study's (float32 rounds differently on each kind); None when they are the same."""
    s_kinds, n_kinds = _study(stored).machine_kinds(), _study(new).machine_kinds()
    if not s_kinds or not n_kinds or s_kinds == n_kinds:
        return None
    return (f"note: stored results came from {' and '.join(s_kinds)}, these from {' and '.join(n_kinds)}; "
            "float32 results differ between kinds of machine, as between seeds")
