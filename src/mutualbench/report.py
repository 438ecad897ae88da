"""Tables (markdown via tabulate, CSV) and accuracy-curve plots of a study folder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .exact import ExactComparison
from .io_utils import atomic_write_bytes
from .results import ENSEMBLE, MAIN, Study, load_study


def _f(x, digits: int = 2) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pm(r) -> str:
    return f"{r['final_mean']:.2f} ± {_f(r['final_std'])}" if r["n"] > 1 else f"{r['final_mean']:.2f}"


def _ci(r) -> str:
    return f"[{r['ci95_low']:.2f}, {r['ci95_high']:.2f}]" if r["n"] > 1 else ""


def markdown(manifest: dict, summary: pd.DataFrame, paired: pd.DataFrame,
             ablation_paired: pd.DataFrame | None = None, contrasts: pd.DataFrame | None = None,
             machine_notes: list[str] | None = None) -> str:
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
        "\"best (test-selected)\" picks each run's best epoch on the test set and is optimistic by construction.",
        "",
        "## Main arms",
        "",
    ]
    main = summary[summary["ablation"] == MAIN] if not summary.empty else summary
    headers = ["arm", "method", "member", "params", "n", "final acc", "95% CI", "best (test-selected)",
               "published", "diff", "train s"]
    rows = [[r["arm"], r["method"], r["member"], f"{r['params']:,}", r["n"], _pm(r), _ci(r),
             _f(r["best_mean_test_selected"]), _f(r["published"]), _f(r["diff_vs_published"]),
             _f(r["train_s_mean"], 1)] for _, r in main.iterrows()]
    lines.append(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    if not main.empty and (main["member"] == ENSEMBLE).any():
        lines += ["", f"`{ENSEMBLE}`: the cohort's prediction, the mean of its members' softmaxes, at the final "
                  "epoch; an extra column of the cohort, not averaged into the cohort's accuracy that the "
                  "comparisons and contrasts use."]
    if not paired.empty:
        lines += ["", "## Paired comparisons (same seeds; a cohort counts as its members' mean)", ""]
        prow = [[f"{r['a']} vs {r['b']}", r["n"], _f(r["mean_a"]), _f(r["mean_b"]), _f(r["diff_mean"]),
                 _f(r["diff_std"]), _f(r["p_value"], 4), f"{r['a_wins']}/{r['n']}"] for _, r in paired.iterrows()]
        lines.append(tabulate(prow, headers=["comparison", "n", "mean a", "mean b", "a − b", "std of a − b",
                                             "p (paired t)", "seeds a > b"], tablefmt="github", disable_numparse=True))
    if contrasts is not None and not contrasts.empty:
        lines += ["", "## Contrasts (per seed, a cohort as its members' mean; t-test of mean 0)", ""]
        crow = [[r["contrast"], r["weights"], r["n"], _f(r["mean"]), _f(r["std"]),
                 f"[{r['ci95_low']:.2f}, {r['ci95_high']:.2f}]" if r["n"] > 1 else "", _f(r["p_value"], 4),
                 f"{r['seeds_positive']}/{r['n']}"] for _, r in contrasts.iterrows()]
        lines.append(tabulate(crow, headers=["contrast", "weights", "n", "mean", "std", "95% CI", "p (t)",
                                             "seeds > 0"], tablefmt="github", disable_numparse=True))
        lines += [f"\n{r['contrast']}: {r['note']}" for _, r in contrasts.iterrows() if r["note"]]
    abl = summary[summary["ablation"] != MAIN] if not summary.empty else summary
    for name, g in abl.groupby("ablation", sort=False):
        lines += ["", f"## Ablation: {name}", ""]
        rows = [[r["value"], r["arm"], r["member"], r["n"], _pm(r), _ci(r), _f(r["best_mean_test_selected"])]
                for _, r in g.iterrows()]
        lines.append(tabulate(rows, headers=["value", "arm", "member", "n", "final acc", "95% CI",
                                             "best (test-selected)"], tablefmt="github", disable_numparse=True))
        ap = ablation_paired[ablation_paired["ablation"] == name] if ablation_paired is not None else None
        if ap is not None and not ap.empty:
            prow = [[r["arm"], f"{r['value']} vs {r['reference']}", r["n"], _f(r["mean_value"]), _f(r["mean_reference"]),
                     _f(r["diff_mean"]), _f(r["diff_std"]), _f(r["p_value"], 4), f"{r['value_wins']}/{r['n']}"]
                    for _, r in ap.iterrows()]
            lines += ["", "Paired over seeds against the main settings (a cohort counts as its members' mean):", ""]
            lines.append(tabulate(prow, headers=["arm", "comparison", "n", "mean", "mean (main)", "difference",
                                                 "std of difference", "p (paired t)", "seeds higher"],
                                  tablefmt="github", disable_numparse=True))
    if machine_notes:
        lines += ["", "## Runs from different kinds of machine", "",
                  "float32 rounds differently on each kind of CPU or GPU, so where the runs of a comparison "
                  "came from more than one kind, their difference carries that noise as well as the seeds':", ""]
        lines += [f"- {n}" for n in machine_notes]
    return "\n".join(lines) + "\n"


def plot_curves(curves: pd.DataFrame, out: Path, title: str) -> list[Path]:
    """``curves.png``: every main arm (a cohort as its members' mean), mean ± std band over
    seeds; ``curves_<arm>.png`` for each cohort arm, one line per member (the blog's figures)."""
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
    per_arm = curves.groupby(["arm", "seed", "epoch"], sort=False)["acc"].mean().reset_index()
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
        written.append(_save(fig, out / f"curves_{arm}.png"))
    return written


def _save(fig, path: Path) -> Path:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_report(folder: Path | Study) -> dict[str, Path]:
    """Write table.md, table.csv (+ comparisons.csv, ablation_comparisons.csv, contrasts.csv),
    runs.csv (the run ids behind every table row) and the curve plots into the study folder."""
    study = folder if isinstance(folder, Study) else load_study(folder)
    folder, df = study.folder, study.runs
    manifest = dict(study.manifest, record_devices=sorted(set(df["device"])))
    md = markdown(manifest, study.summary, study.paired, study.ablations, study.contrasts,
                  study.mixed_machine_notes())
    atomic_write_bytes(folder / "table.md", md.encode())
    atomic_write_bytes(folder / "table.csv", study.summary.to_csv(index=False, float_format="%.4f").encode())
    atomic_write_bytes(folder / "comparisons.csv", study.paired.to_csv(index=False, float_format="%.6f").encode())
    atomic_write_bytes(folder / "ablation_comparisons.csv",
                       study.ablations.to_csv(index=False, float_format="%.6f").encode())
    if not study.contrasts.empty:
        atomic_write_bytes(folder / "contrasts.csv", study.contrasts.to_csv(index=False, float_format="%.6f").encode())
    # every table row's runs: (ablation, value, arm, member) -> seed, run id, the record's numbers
    runs = df.drop(columns=["device"]).sort_values(["ablation", "value", "arm", "member", "seed"], kind="stable")
    atomic_write_bytes(folder / "runs.csv", runs.to_csv(index=False, float_format="%.4f").encode())
    plots = plot_curves(study.curves(), folder,
                        f"{manifest['spec']['study']['name']} ({manifest['profile']}, {manifest['data']['name']})")
    out = {name: folder / name for name in ("table.md", "table.csv", "comparisons.csv", "ablation_comparisons.csv",
                                            "runs.csv")}
    if not study.contrasts.empty:
        out["contrasts.csv"] = folder / "contrasts.csv"
    out.update({p.name: p for p in plots})
    return out


@dataclass
class StudyReport:
    written: dict[str, Path]
    table: str
    comparison: tuple[bool, list[str], float, str | None] | None  # ok, problems, tolerance, machine note
    exact: ExactComparison | None = None  # in place of ``comparison`` when the stored study is float64


def report_study(folder: Path, against: Path | None = None) -> StudyReport | None:
    """After ``replicate``: the tables and plots, and the comparison with the stored study
    ``against`` when it exists (None: no complete run yet, nothing written)."""
    from .exact import compare_exact, is_exact
    from .layout import MANIFEST
    from .results import compare_studies, has_complete_runs, machine_note

    folder = Path(folder)
    if not has_complete_runs(folder):
        return None
    study = load_study(folder)
    written = write_report(study)
    comparison = None
    if against is not None and (Path(against) / MANIFEST).exists() and Path(against).resolve() != folder.resolve():
        stored = load_study(against)
        if is_exact(stored):  # a float64 study: run by run
            return StudyReport(written, (folder / "table.md").read_text(), None, compare_exact(study, stored))
        ok, problems, tol = compare_studies(study, stored)
        comparison = (ok, problems, tol, machine_note(study, stored))
    return StudyReport(written, (folder / "table.md").read_text(), comparison)
