"""Tables (markdown via tabulate, CSV) and accuracy-curve plots of a study folder."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from ..storage.io_utils import atomic_write_bytes, safe_child
from .exact import ExactComparison
from .results import ENSEMBLE, LAST_K, LAST_LABEL, MAIN, Study, load_study
from .stats import ALPHA


def _f(x, digits: int = 2) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pm(r) -> str:
    return f"{r['final_mean']:.2f} ± {_f(r['final_std'])}" if r["n"] > 1 else f"{r['final_mean']:.2f}"


def _ci(r) -> str:
    return f"[{r['ci95_low']:.2f}, {r['ci95_high']:.2f}]" if r["n"] > 1 else ""


def _last5(r) -> str:
    if not r.get("last5_n"):
        return ""
    return f"{r['last5_mean']:.2f} ± {_f(r['last5_std'])}" if r["last5_n"] > 1 else f"{r['last5_mean']:.2f}"


def _diff_ci(r, pre: str = "", diff: str = "diff_mean") -> str:
    if not r[f"{pre}n"]:
        return ""
    d = f"{r[f'{pre}{diff}']:+.2f}"
    return f"{d} [{r[f'{pre}ci95_low']:+.2f}, {r[f'{pre}ci95_high']:+.2f}]" if r[f"{pre}n"] > 1 else d


def _pp(r, pre: str = "") -> str:
    """raw p / Holm-adjusted p"""
    if math.isnan(r[f"{pre}p_value"]):
        return ""
    return f"{_f(r[f'{pre}p_value'], 4)} / {_f(r[f'{pre}p_holm'], 4)}"


def _pending(frame: pd.DataFrame, name) -> list[str]:
    """One line naming the comparisons or contrasts with no runs yet (rather than empty rows)."""
    todo = [name(r) for _, r in frame.iterrows() if not r["n"]]
    return [f"\nNot computed yet (an arm has no complete run in this profile): {', '.join(todo)}."] if todo else []


STATS_NOTE = (f"Each statistic is tested on its own: the final-epoch accuracy (primary) and the {LAST_LABEL} "
              f"(the mean test accuracy of each run's last {LAST_K} epochs, which averages out most of the "
              "epoch-to-epoch noise of a constant learning rate). p: two-sided t-test over seeds, raw / "
              "Holm-adjusted within the family; `statistics` says where the two disagree in sign or in "
              f"significance (Holm p < {ALPHA:g}).")


def markdown(manifest: dict, summary: pd.DataFrame, paired: pd.DataFrame,
             ablation_paired: pd.DataFrame | None = None, contrasts: pd.DataFrame | None = None,
             machine_notes: list[str] | None = None, claims: str = "",
             ablation_contrasts: pd.DataFrame | None = None, compared: dict[str, list[str]] | None = None,
             layout_notes: list[str] | None = None, failed_notes: list[str] | None = None) -> str:
    """table.md. ``compared``: the arms compared on fewer than all their models, with those
    models (``results.compared_on``), named in one line under the main table. ``layout_notes``:
    the arms whose runs mix memory layouts (``results.mixed_layout_notes``)."""
    from tabulate import tabulate

    spec, prof = manifest["spec"], manifest["profile"]
    data = manifest["data"]
    devices = ", ".join(manifest.get("record_devices", [])) or "see records"
    lines = [
        f"# {spec['study']['name']}: profile `{prof}`",
        "",
        f"{spec['profiles'][prof].get('description', '')}",
        "",
        f"Data: `{data['name']}` (sha256 `{data['sha256'][:16]}…`); seeds {manifest['seeds']}; device(s): {devices}.",
        "Accuracy is top-1 test accuracy (%) at the final epoch, mean ± std over seeds with a 95% t-interval;",
        f"the {LAST_LABEL} is each run's mean test accuracy over its last {LAST_K} epochs (a secondary statistic);",
        "\"best (test-selected)\" picks each run's best epoch on the test set and is optimistic by construction.",
        "",
    ]
    if claims:
        lines += ["## Claims", "", claims, ""]
    lines += ["## Main arms", ""]
    main = summary[summary["ablation"] == MAIN] if not summary.empty else summary
    headers = ["arm", "method", "member", "params", "n", "final acc", "95% CI", LAST_LABEL, "best (test-selected)",
               "published", "diff", "train s"]
    rows = [[r["arm"], r["method"], r["member"], f"{r['params']:,}", r["n"], _pm(r), _ci(r), _last5(r),
             _f(r["best_mean_test_selected"]), _f(r["published"]), _f(r["diff_vs_published"]),
             _f(r["train_s_mean"], 1)] for _, r in main.iterrows()]
    lines.append(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    if not main.empty and (main["member"] == ENSEMBLE).any():
        lines += ["", f"`{ENSEMBLE}`: the cohort's prediction, the mean of its members' softmaxes, at the final "
                  "epoch; an extra column of the cohort, not averaged into the cohort's accuracy that the "
                  "comparisons and contrasts use."]
    if compared:
        lines += ["", "Compared on: " + "; ".join(f"`{arm}` on {', '.join(members)}" for arm, members in compared.items())
                  + ". An arm's accuracy in the comparisons, contrasts and claims is the mean of these models (as "
                  "its method declares them, or its spec's `compare` names them); its other rows above are reported, "
                  "not averaged in. Every other arm is compared on all its models."]
    done = paired[paired["n"] > 0] if not paired.empty else paired
    if not paired.empty:
        lines += ["", "## Paired comparisons (same seeds; a cohort counts as its members' mean)", ""]
        prow = [[r["family"], f"{r['a']} vs {r['b']}", r["n"], _f(r["mean_a"]), _f(r["mean_b"]), _diff_ci(r),
                 _pp(r), f"{r['a_wins']}/{r['n']}", _diff_ci(r, "last5_"), _pp(r, "last5_"),
                 f"{r['last5_a_wins']}/{r['last5_n']}" if r["last5_n"] else "", r["statistics"]]
                for _, r in done.iterrows()]
        if prow:
            lines.append(tabulate(prow, headers=["family", "comparison", "n", "mean a", "mean b", "a − b [95% CI]",
                                                 "p / Holm p", "seeds a > b", f"{LAST_LABEL}: a − b [95% CI]",
                                                 "p / Holm p", "seeds a > b", "statistics"],
                                  tablefmt="github", disable_numparse=True))
        lines += _pending(paired, lambda r: f"{r['a']} vs {r['b']}")
    if contrasts is not None and not contrasts.empty:
        lines += ["", "## Contrasts (per seed, a cohort as its members' mean; t-test of mean 0)", ""]
        crow = [[r["family"], r["contrast"], r["weights"], r["n"], _diff_ci(r, diff="mean"), _pp(r),
                 f"{r['seeds_positive']}/{r['n']}", _diff_ci(r, "last5_", "mean"), _pp(r, "last5_"),
                 f"{r['last5_seeds_positive']}/{r['last5_n']}" if r["last5_n"] else "", r["statistics"]]
                for _, r in contrasts.iterrows() if r["n"]]
        if crow:
            lines.append(tabulate(crow, headers=["family", "contrast", "weights", "n", "mean [95% CI]", "p / Holm p",
                                                 "seeds > 0", f"{LAST_LABEL}: mean [95% CI]", "p / Holm p",
                                                 "seeds > 0", "statistics"], tablefmt="github", disable_numparse=True))
        lines += [f"\n{r['contrast']}: {r['note']}" for _, r in contrasts.iterrows() if r["note"] and r["n"]]
        lines += _pending(contrasts, lambda r: r["contrast"])
    if not done.empty or (contrasts is not None and not contrasts.empty):
        lines += ["", STATS_NOTE]
    abl = summary[summary["ablation"] != MAIN] if not summary.empty else summary
    for name, g in abl.groupby("ablation", sort=False):
        lines += ["", f"## Ablation: {name}", ""]
        rows = [[r["value"], r["arm"], r["member"], r["n"], _pm(r), _ci(r), _last5(r), _f(r["best_mean_test_selected"])]
                for _, r in g.iterrows()]
        lines.append(tabulate(rows, headers=["value", "arm", "member", "n", "final acc", "95% CI", LAST_LABEL,
                                             "best (test-selected)"], tablefmt="github", disable_numparse=True))
        ap = ablation_paired[ablation_paired["ablation"] == name] if ablation_paired is not None else None
        if ap is not None and not ap.empty:
            prow = [[r["arm"], f"{r['value']} vs {r['reference']}", r["n"], _f(r["mean_value"]), _f(r["mean_reference"]),
                     _f(r["diff_mean"]), _f(r["diff_std"]), _pp(r), f"{r['value_wins']}/{r['n']}",
                     _f(r["last5_diff_mean"]), _pp(r, "last5_"), r["statistics"]]
                    for _, r in ap.iterrows()]
            lines += ["", "Paired over seeds against the main settings (a cohort counts as its members' mean; "
                      "Holm over all of the profile's ablation comparisons):", ""]
            lines.append(tabulate(prow, headers=["arm", "comparison", "n", "mean", "mean (main)", "difference",
                                                 "std of difference", "p / Holm p", "seeds higher",
                                                 f"{LAST_LABEL}: difference", "p / Holm p", "statistics"],
                                  tablefmt="github", disable_numparse=True))
        ac = ablation_contrasts[ablation_contrasts["ablation"] == name] if ablation_contrasts is not None \
            and not ablation_contrasts.empty else None
        if ac is not None and not ac[ac["n"] > 0].empty:
            crow = [[r["value"], r["contrast"], r["weights"], r["n"], _diff_ci(r, diff="mean"), _pp(r),
                     f"{r['seeds_positive']}/{r['n']}", _diff_ci(r, "last5_", diff="mean"), _pp(r, "last5_"),
                     r["statistics"]]
                    for _, r in ac.iterrows() if r["n"]]
            lines += ["", "The contrasts within each value (the runs of that value only; Holm within each value "
                      "and family): whether a reading of the main study holds when this setting changes, beside "
                      "the main study, never in its place:", ""]
            lines.append(tabulate(crow, headers=["value", "contrast", "weights", "n", "mean [95% CI]", "p / Holm p",
                                                 "seeds > 0", f"{LAST_LABEL}: mean [95% CI]", "p / Holm p",
                                                 "statistics"], tablefmt="github", disable_numparse=True))
            lines += [f"\n{r['value']}, {r['contrast']}: {r['note']}" for _, r in ac.iterrows()
                      if r["note"] and r["n"]]
    if machine_notes:
        lines += ["", "## Runs from different kinds of machine", "",
                  "float32 rounds differently on each kind of CPU or GPU, so where the runs of a comparison "
                  "came from more than one kind, their difference carries that noise as well as the seeds':", ""]
        lines += [f"- {n}" for n in machine_notes]
    if failed_notes:
        below = (spec["profiles"].get(prof) or {}).get("failed_below")
        lines += ["", "## Runs that failed to train", "",
                  f"The profile's rule, stated before these runs: a run whose every compared model ends at or below "
                  f"{below}% test accuracy failed to train. Such a run is counted here, left out of its arm's mean "
                  "and of every comparison and contrast at its seed (they are conditional on training), never "
                  "replaced by another seed, and counted as run by the claims' planned n:", ""]
        lines += [f"- {n}" for n in failed_notes]
    if layout_notes:
        lines += ["", "## Runs in different memory layouts", "",
                  "float32 rounds differently in the NCHW and channels-last layouts, as on different kinds of "
                  "machine, so where an arm's runs mix them its seeds carry that noise as well:", ""]
        lines += [f"- {n}" for n in layout_notes]
    return "\n".join(lines) + "\n"


def plot_curves(curves: pd.DataFrame, out: Path, title: str) -> list[Path]:
    """``curves.png``: every main arm (a cohort as the mean of the members it is compared on,
    column ``compared``), mean ± std band over seeds; ``curves_<arm>.png`` for each cohort arm,
    one line per member, every member (the blog's figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if curves.empty:
        return written

    def band(ax, frame, label):
        g = frame.groupby("epoch")["acc"]
        mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
        ax.plot(mean.index, mean.values, label=label)
        ax.fill_between(mean.index, mean - std, mean + std, alpha=0.2)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    chosen = curves[curves["compared"].astype(bool)] if "compared" in curves else curves
    per_arm = chosen.groupby(["arm", "seed", "epoch"], sort=False)["acc"].mean().reset_index()
    for arm, g in per_arm.groupby("arm", sort=False):
        band(ax, g, arm)
    ax.set(xlabel="epoch (all stages)", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, out / "curves.png"))
    for arm, g in curves.groupby("arm", sort=False):
        if g["member"].nunique() < 2:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for member, gm in g.groupby("member", sort=False):
            band(ax, gm, member)
        if (g["stage"] == "hint").any():
            hint_end = g.loc[g["stage"] == "hint", "epoch"].max()
            ax.axvline(hint_end + 0.5, color="grey", ls="--", lw=0.8, label="end of hint pretraining")
        ax.set(xlabel="epoch (all stages)", ylabel="test accuracy (%)", title=f"{title}: {arm}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, safe_child(out, f"curves_{arm}.png", f"arm {arm!r}: plot")))
    return written


def plot_loss_terms(terms: pd.DataFrame, out: Path, title: str) -> list[Path]:
    """``loss_terms_<arm>.png`` for each main arm whose records carry loss terms: one panel per
    term (``ce``, ``kl``, ``hint``, ...), one line per member, the mean over seeds with a ± std
    band; e.g. the peers' KL over training shows when mutual learning stops teaching."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for arm, g in terms.groupby("arm", sort=False):
        names = list(dict.fromkeys(g["term"]))
        fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
        for ax, term in zip(axes[0], names, strict=True):
            for member, gm in g[g["term"] == term].groupby("member", sort=False):
                stats = gm.groupby("epoch")["loss"]
                mean, std = stats.mean(), stats.std(ddof=1).fillna(0.0)
                ax.plot(mean.index, mean.values, label=member)
                ax.fill_between(mean.index, mean - std, mean + std, alpha=0.2)
            ax.set(xlabel="epoch (all stages)", ylabel="mean training loss per batch", title=term)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{title}: {arm}, loss terms", fontsize=10)
        written.append(_save(fig, safe_child(out, f"loss_terms_{arm}.png", f"arm {arm!r}: plot")))
    return written


def _write_changed(path: Path, data: bytes, root: Path) -> None:
    """``atomic_write_bytes`` unless ``path`` holds ``data`` already: tables and plots that come
    out the same (a ``replicate`` with nothing to train, ``table`` run twice) change no file,
    not even its time."""
    try:
        if path.is_file() and not path.is_symlink() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(path, data, root=root)


def _save(fig, path: Path) -> Path:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    _write_changed(path, buf.getvalue(), root=path.parent)
    return path


def write_report(folder: Path | Study) -> dict[str, Path]:
    """Write table.md, table.csv (+ comparisons.csv, ablation_comparisons.csv, contrasts.csv),
    runs.csv (the run ids behind every table row), the accuracy curve plots and, for arms whose
    records carry them, the loss-term plots into the study folder."""
    study = folder if isinstance(folder, Study) else load_study(folder)
    folder, df = study.folder, study.runs
    manifest = dict(study.manifest, record_devices=sorted(set(df["device"])))
    from .claims import evaluate
    from .claims import markdown as claims_markdown

    claims = evaluate(study)
    md = markdown(manifest, study.summary, study.paired, study.ablations, study.contrasts,
                  study.mixed_machine_notes(), claims_markdown({manifest["profile"]: claims}),
                  study.ablation_contrasts, study.compared_on(), study.mixed_layout_notes(), study.failed_notes())
    _write_changed(folder / "table.md", md.encode(), root=folder)
    _write_changed(folder / "table.csv", study.summary.to_csv(index=False, float_format="%.4f").encode(), root=folder)
    _write_changed(folder / "comparisons.csv", study.paired.to_csv(index=False, float_format="%.6f").encode(),
                   root=folder)
    _write_changed(folder / "ablation_comparisons.csv",
                   study.ablations.to_csv(index=False, float_format="%.6f").encode(), root=folder)
    if not study.contrasts.empty:
        _write_changed(folder / "contrasts.csv", study.contrasts.to_csv(index=False, float_format="%.6f").encode(),
                       root=folder)
    if not study.ablation_contrasts.empty:
        _write_changed(folder / "ablation_contrasts.csv",
                       study.ablation_contrasts.to_csv(index=False, float_format="%.6f").encode(), root=folder)
    if not claims.empty:
        _write_changed(folder / "claims.csv", claims.to_csv(index=False, float_format="%.6f").encode(), root=folder)
    # every table row's runs: (ablation, value, arm, member) -> seed, run id, the record's numbers
    # runs.csv keeps the columns it had before the layout and compared columns existed (the records hold both)
    runs = df.drop(columns=["device", "layout", "compared", "failed"], errors="ignore")
    runs = runs.sort_values(["ablation", "value", "arm", "member", "seed"], kind="stable")
    _write_changed(folder / "runs.csv", runs.to_csv(index=False, float_format="%.4f").encode(), root=folder)
    title = f"{manifest['spec']['study']['name']} ({manifest['profile']}, {manifest['data']['name']})"
    plots = plot_curves(study.curves(), folder, title) + plot_loss_terms(study.loss_terms(), folder, title)
    out = {name: folder / name for name in ("table.md", "table.csv", "comparisons.csv", "ablation_comparisons.csv",
                                            "runs.csv")}
    if not study.contrasts.empty:
        out["contrasts.csv"] = folder / "contrasts.csv"
    if not study.ablation_contrasts.empty:
        out["ablation_contrasts.csv"] = folder / "ablation_contrasts.csv"
    if not claims.empty:
        out["claims.csv"] = folder / "claims.csv"
    out.update({p.name: p for p in plots})
    return out


@dataclass
class StudyReport:
    written: dict[str, Path]
    table: str
    comparison: object | None  # compare.StudyComparison, or None when there was nothing to compare with
    exact: ExactComparison | None = None  # in place of ``comparison`` when the stored study is float64


def _selected(arm: str, ablation: str | None, arms: list[str] | None, ablations: bool | list[str]) -> bool:
    """Whether a run or row of ``arm`` (``ablation``: None or MAIN for the main study) is among
    what ``replicate --arms/--ablations/--no-ablations`` ran."""
    if arms is not None and arm not in arms:
        return False
    main = not ablation or ablation == MAIN
    return main or ablations is True or (ablations is not False and ablation in ablations)


def selected_rows(study: Study, arms: list[str] | None, ablations: bool | list[str]) -> Study:
    """``study`` with its summary cut to what a ``replicate --arms/--ablations/--no-ablations``
    ran: those arms, the main runs and those ablations (the others are not missing, only not
    selected)."""
    summary = study.summary
    if summary.empty:
        return study
    keep = [_selected(r["arm"], r["ablation"], arms, ablations) for _, r in summary.iterrows()]
    return replace(study, summary=summary[keep].reset_index(drop=True))


def asked_selection(manifest: dict, other: dict | None = None) -> tuple[list[str] | None, bool | list[str]]:
    """What the ``replicate`` that wrote ``manifest`` asked for, as ``replicate``'s own
    ``arms`` and ``ablations`` arguments (``_selected``): its ``asked`` arms (None: every arm)
    and ablations; every arm and ablation for a manifest written before ``asked`` existed.
    Arms and ablations of ``other`` (the manifest compared with) that ``manifest``'s spec does
    not have at all were not left out by the replicate: they stay selected (and are then
    named as not in this study, as before)."""
    asked = manifest.get("asked")
    if asked is None:
        return None, True
    spec = manifest["spec"]
    ours = {a["name"] for a in spec.get("arms", [])}, {a.get("name") for a in spec.get("ablations", [])}
    theirs = [] if other is None else other["runs"]
    arms = asked.get("arms")
    if arms is not None:
        arms = list(dict.fromkeys([*arms, *(e["arm"] for e in theirs if e["arm"] not in ours[0])]))
    ablations = list(dict.fromkeys([*asked["ablations"], *(e["ablation"] for e in theirs
                                                           if e.get("ablation") and e["ablation"] not in ours[1])]))
    return arms, ablations


def not_selected_note(new: Study, stored: Study, arms: list[str] | None, ablations: bool | list[str]) -> str | None:
    """One line naming the arms and ablations of ``stored``'s complete runs that a study of
    ``arms`` and ``ablations`` (``asked_selection``) does not compare; None when it compares
    them all."""
    left = [e for e in stored.manifest["runs"] if not _selected(e["arm"], e.get("ablation"), arms, ablations)
            and (stored.records.get(e["run_id"]) or {}).get("status") == "complete"]
    if not left:
        return None
    arms_out = list(dict.fromkeys(e["arm"] for e in left if arms is not None and e["arm"] not in arms))
    ablations_out = list(dict.fromkeys(e["ablation"] for e in left if e["arm"] not in arms_out and e.get("ablation")))
    what = ([f"the arm{'s' if len(arms_out) > 1 else ''} {', '.join(arms_out)}"] if arms_out else []) + (
        [f"the ablation{'s' if len(ablations_out) > 1 else ''} {', '.join(ablations_out)}"] if ablations_out else [])
    return (f"not compared: {'; '.join(what)} of {stored.folder} (the replicate that made {new.folder} did not ask "
            "for them)")


def compare_selected(new: Study, stored: Study, arms: list[str] | None = None, ablations: bool | list[str] = True):
    """``new`` against ``stored`` on what ``replicate --arms/--ablations/--no-ablations`` (or
    a manifest's ``asked``, ``asked_selection``) selected, after ``check_comparable``: a float64
    stored study run by run (``exact.ExactComparison``, its selected runs only), else
    statistically (``compare.StudyComparison``, its selected rows only; None when the stored
    study has none of them)."""
    from .comparable import check_comparable
    from .compare import compare_studies
    from .exact import compare_exact, is_exact

    check_comparable(new, stored)
    if is_exact(stored):  # a float64 study: run by run, the selected runs only
        chosen = [e for e in stored.manifest["runs"] if _selected(e["arm"], e.get("ablation"), arms, ablations)]
        return compare_exact(new, replace(stored, manifest=dict(stored.manifest, runs=chosen)))
    stored = selected_rows(stored, arms, ablations)
    if stored.summary.empty:  # the stored study has none of the selected rows
        return None
    return compare_studies(selected_rows(new, arms, ablations), stored)


def report_study(folder: Path, against: Path | None = None, arms: list[str] | None = None,
                 ablations: bool | list[str] = True) -> StudyReport | None:
    """After ``replicate``: the tables and plots, and the comparison with the stored study
    ``against`` when it exists (None: no complete run yet, nothing written); with ``arms`` or
    ``ablations``, only the rows selected are compared (``compare_selected``)."""
    from ..storage.layout import MANIFEST
    from .results import has_complete_runs

    folder = Path(folder)
    if not has_complete_runs(folder):
        return None
    study = load_study(folder)
    written = write_report(study)
    comparison = None
    if against is not None and (Path(against) / MANIFEST).exists() and Path(against).resolve() != folder.resolve():
        result = compare_selected(study, load_study(against), arms, ablations)
        if isinstance(result, ExactComparison):
            return StudyReport(written, (folder / "table.md").read_text(encoding="utf-8"), None, result)
        comparison = result
    return StudyReport(written, (folder / "table.md").read_text(encoding="utf-8"), comparison)
