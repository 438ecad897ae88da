"""Copy generated tables into the documents (README.md, REPLICATION.md, docs/**/*.md) between
marker comments, so that they quote the tables exactly as `mutualbench table` wrote them
(nothing typed by hand).

    python replication/embed_tables.py            # after `mutualbench table results/<study>/<profile>`

Markers, for every study in results/: <!-- <study>/<profile>-table:start --> ...
<!-- <study>/<profile>-table:end --> for each results/<study>/<profile>/table.md, and
<!-- <study>/scale-comparison:start --> ... :end --> for the spec's paired comparisons at the
`cpu` and the `full` scale side by side, <!-- <study>/claims:start --> for the spec's claims
at both scales, <!-- seed_blog/<profile>-factorial:start --> for the 2x2 factorial, and
<!-- <study>/<profile>-provenance:start --> for which kind of machine ran which run of
results/<study>/<profile>, <!-- <study>/<profile>-ablation-<name>:start --> for one ablation's
section of a table.md (its values, paired comparisons and contrasts within each value), <!-- <study>/<profile>-headline:start --> for a profile's claims in a
few columns (the README's), <!-- registry:start --> for the registered methods and
architectures (all computed from the stored records and the code, like the tables).
The blog's study (seed_blog) also answers to the unprefixed names (<!-- cpu-table:start -->).
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _answer(row) -> str:
    if row is None or row["n"] == 0:
        return "not run yet"
    text = f"{row['diff_mean']:+.2f} ({row['mean_a']:.2f} vs {row['mean_b']:.2f}; {row['a_wins']}/{row['n']} seeds"
    if row["n"] > 1 and row["p_value"] == row["p_value"]:
        text += f", p = {row['p_value']:.3g}"
    return text + ")"


def _verdict(cpu, full) -> str:
    if full is None or full["n"] == 0 or cpu is None or cpu["n"] == 0:
        return "—"
    same = (cpu["diff_mean"] > 0) == (full["diff_mean"] > 0)
    word = "same direction" if same else "reversed"
    last5 = full.get("last5_diff_mean")
    if not same and last5 == last5 and last5 is not None and (last5 > 0) == (cpu["diff_mean"] > 0):
        word = "reversed at the final epoch only (the last-5 mean keeps the direction)"
    if full["n"] < 3:
        word += f" (n = {full['n']} at full scale: provisional)"
    return word


def scale_comparison(results: Path) -> str | None:
    """The spec's paired comparisons at the `cpu` and `full` scales, one row each."""
    sys.path.insert(0, str(ROOT / "src"))
    from mutualbench.analysis.results import load_study

    studies = {}
    for profile in ("cpu", "full"):
        if (results / profile / "study.json").exists():
            paired = load_study(results / profile).paired
            studies[profile] = {(r["a"], r["b"]): r for _, r in paired.iterrows()}
    if "cpu" not in studies:
        return None
    lines = ["| comparison | `cpu` profile: a − b | `full` profile: a − b | held at full scale? |",
             "|---|---|---|---|"]
    for key, cpu in studies["cpu"].items():
        full = studies.get("full", {}).get(key)
        lines.append(f"| {key[0]} vs {key[1]} | {_answer(cpu)} | {_answer(full)} | {_verdict(cpu, full)} |")
    return "\n".join(lines)


def _embed(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text:
        return text
    block = f"{start}\n{body.strip()}\n{end}"
    return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _, block=block: block, text, flags=re.S)


# The blog study's factorial (hints x learning alone / mutual, all with the DML optimizer)
# and its cohort sizes, as arm names of replication/seed_blog.toml.
FACTORIAL = {("no hints", "alone"): "student_dml_optimizer", ("no hints", "mutual"): "dml",
             ("hints", "alone"): "hint_student", ("hints", "mutual"): "hint_dml"}
COHORTS = {1: "student_dml_optimizer", 2: "dml", 3: "dml_k3", 4: "dml_k4"}


def _cell(acc, arm: str, last5=None) -> str:
    a = acc[acc["arm"] == arm]["final_acc"]
    if a.empty:
        return "not run yet"
    text = f"{a.iloc[0]:.2f} (n = 1)" if len(a) == 1 else f"{a.mean():.2f} ± {a.std(ddof=1):.2f} (n = {len(a)})"
    if last5 is not None:
        b = last5[last5["arm"] == arm]["last5_acc"]
        if len(b):
            text += f"; last-5 mean {b.mean():.2f}" + (f" ± {b.std(ddof=1):.2f}" if len(b) > 1 else "")
    return text


def factorial_table(folder: Path) -> str | None:
    """The 2x2 table of final accuracy (a cohort as its members' mean), mean ± std over seeds."""
    sys.path.insert(0, str(ROOT / "src"))
    from mutualbench.analysis.results import MAIN, arm_accuracy, load_study

    if not (folder / "study.json").exists():
        return None
    df = load_study(folder).runs
    main = df[df["ablation"] == MAIN]
    acc, last5 = arm_accuracy(main), arm_accuracy(main, "last5")
    lines = ["| | alone | mutual (DML, K = 2) |", "|---|---|---|"]
    for hints in ("no hints", "hints"):
        lines.append(f"| {hints} | {_cell(acc, FACTORIAL[(hints, 'alone')], last5)} | "
                     f"{_cell(acc, FACTORIAL[(hints, 'mutual')], last5)} |")
    return "\n".join(lines)


def cohort_size_plot(folder: Path) -> str | None:
    """Accuracy against the cohort size K (K = 1: the student alone with the DML optimizer),
    members' mean and the ensemble, with 95% t-intervals over seeds: cohort_size.png and a
    table of the plotted numbers."""
    sys.path.insert(0, str(ROOT / "src"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mutualbench.analysis.results import ENSEMBLE, MAIN, arm_accuracy, load_study
    from mutualbench.analysis.stats import t_quantile
    from mutualbench.storage.io_utils import atomic_write_bytes

    if not (folder / "study.json").exists():
        return None
    df = load_study(folder).runs
    main = df[df["ablation"] == MAIN]
    members = arm_accuracy(main)
    ensemble = main[main["member"] == ENSEMBLE]
    rows, points = [], {"members' mean": [], "ensemble (mean softmax)": []}
    for k, arm in COHORTS.items():
        for label, frame in (("members' mean", members), ("ensemble (mean softmax)", ensemble)):
            a = frame[frame["arm"] == arm]["final_acc"]
            if a.empty:
                continue
            half = t_quantile(len(a)) * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
            points[label].append((k, a.mean(), half))
            ci = f"[{a.mean() - half:.2f}, {a.mean() + half:.2f}]" if len(a) > 1 else ""
            rows.append(f"| {k} | {arm} | {label} | {len(a)} | {a.mean():.2f} | {ci} |")
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in points.items():
        if pts:
            ks, means, halves = zip(*pts, strict=True)
            ax.errorbar(ks, means, yerr=[0 if h != h else h for h in halves], marker="o", capsize=4, label=label)
    ax.set(xlabel="cohort size K (1: the student alone)", ylabel="final test accuracy (%)", xticks=list(COHORTS),
           title="seed_blog: accuracy against cohort size (95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    import io

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    path = folder / "cohort_size.png"
    if not path.is_file() or path.read_bytes() != buf.getvalue():  # a file left as it is when unchanged
        atomic_write_bytes(path, buf.getvalue())
    return "\n".join(["| K | arm | accuracy of | n | mean | 95% CI |", "|---|---|---|---|---|---|", *rows])


def _seed_list(seeds) -> str:
    return ", ".join(str(s) for s in sorted(seeds))


def provenance_markdown(manifest: dict, records: dict[str, dict], where: str) -> str | None:
    """Which kind of machine ran which of a study's complete runs, one row per kind
    (``envinfo.record_machine_kind``: CPU model and instruction set, or the GPU's name; a run
    resumed on other kinds is a row "A + B" of its own): its arms and seeds (an ablation's own
    runs as ``arm (ablation = value)``; a run the main study and an ablation share counts
    once, under its arm), native bfloat16 (the records' ``env.cpu.bf16_flags``), the number
    of runs and their summed training hours; then a line counting the kinds. ``where``
    names the study folder in that line (e.g. ``seed_blog/full``)."""
    sys.path.insert(0, str(ROOT / "src"))
    from mutualbench.core.envinfo import MIXED, record_machine_kind

    entries: dict[str, dict] = {}  # run id -> the manifest entry that names it (the main study's first)
    for entry in manifest["runs"]:
        known = entries.get(entry["run_id"])
        if known is None or (known.get("ablation") and not entry.get("ablation")):
            entries[entry["run_id"]] = entry
    order: dict[str, int] = {}  # labels in the manifest's order, the main study's arms first
    rows: dict[str, dict] = {}
    for rid, entry in sorted(entries.items(), key=lambda kv: bool(kv[1].get("ablation"))):
        rec = records.get(rid)
        if rec is None or rec.get("status") != "complete":
            continue
        label = entry["arm"] if not entry.get("ablation") else f"{entry['arm']} ({entry['ablation']} = {entry['value']})"
        order.setdefault(label, len(order))
        kind = record_machine_kind(rec)
        row = rows.setdefault(kind, {"seeds": {}, "runs": 0, "train_s": 0.0, "bf16": set()})
        row["seeds"].setdefault(label, set()).add(entry["seed"])
        row["runs"] += 1
        row["train_s"] += float((rec.get("timings") or {}).get("train_s") or 0.0)
        cpu = (rec.get("env") or {}).get("cpu")
        if (rec.get("env") or {}).get("cuda"):
            row["bf16"].add("(GPU)")
        elif MIXED in kind or not isinstance(cpu, dict) or "bf16_flags" not in cpu:
            row["bf16"].add("not recorded")
        else:
            row["bf16"].add(", ".join(f"`{f}`" for f in cpu["bf16_flags"]) or "none")
    if not rows:
        return None
    lines = ["| kind of machine | runs | training hours | native bf16 | arms and seeds |", "|---|---|---|---|---|"]
    for kind in sorted(rows):
        row = rows[kind]
        arms = "; ".join(f"{label} {_seed_list(row['seeds'][label])}" for label in sorted(row["seeds"], key=order.get))
        lines.append(f"| {kind} | {row['runs']} | {row['train_s'] / 3600:.1f} | {' / '.join(sorted(row['bf16']))} | {arms} |")
    runs, hours = sum(r["runs"] for r in rows.values()), sum(r["train_s"] for r in rows.values()) / 3600
    kinds = sorted({k for kind in rows for k in kind.split(MIXED)})
    lines += [f"| all | {runs} | {hours:.1f} | | |", "",
              f"{len(kinds)} kind{'s' if len(kinds) != 1 else ''} of machine ran the {runs} complete "
              f"run{'s' if runs != 1 else ''} in `{where}` ({hours:.1f} hours of training)"
              + ("; a run resumed on another kind is counted in a row of its own, \"A + B\"."
                 if any(MIXED in kind for kind in rows) else ".")]
    return "\n".join(lines)


def provenance_table(folder: Path) -> str | None:
    """``provenance_markdown`` of the study folder's manifest and stored records."""
    sys.path.insert(0, str(ROOT / "src"))
    from mutualbench.analysis.results import load_manifest, load_records

    if not (folder / "study.json").exists():
        return None
    manifest = load_manifest(folder)
    return provenance_markdown(manifest, load_records(folder, manifest), f"{folder.parent.name}/{folder.name}")


CLAIM_PROFILES = ("full", "cpu")  # the primary profile (the source's scale) first


def claims_table(results: Path) -> str | None:
    """The spec's claims at every stored profile of CLAIM_PROFILES (mutualbench.analysis.claims)."""
    sys.path.insert(0, str(ROOT / "src"))
    from mutualbench.analysis.claims import evaluate, markdown
    from mutualbench.analysis.results import load_study

    frames = {p: evaluate(load_study(results / p)) for p in CLAIM_PROFILES if (results / p / "study.json").exists()}
    return markdown(frames) or None


def _markers(study: str, name: str) -> list[str]:
    """Marker names of a block: ``<study>/<name>`` for any study; the blog's study also keeps
    its original unprefixed names."""
    return [f"{study}/{name}"] + ([name] if study == "seed_blog" else [])


def headline_claims(folder: Path) -> str | None:
    """The claims of one profile in a few columns, for the README: each claim, the source's
    number, the difference at the final epoch and the last-5 mean with their 95% intervals, and
    the verdict (labelled interim before the planned seeds)."""
    sys.path.insert(0, str(ROOT / "src"))
    from mutualbench.analysis.claims import evaluate, verdict_text
    from mutualbench.analysis.results import load_study

    if not (folder / "study.json").exists():
        return None
    frame = evaluate(load_study(folder))
    if frame.empty:
        return None

    def cell(r, pre: str) -> str:
        if int(r[f"{pre}n"]) < 2 or math.isnan(r[f"{pre}diff"]):
            return "not run" if int(r[f"{pre}n"]) == 0 else f"{r[f'{pre}diff']:+.2f} (n = 1)"
        return f"{r[f'{pre}diff']:+.2f} [{r[f'{pre}ci95_low']:+.2f}, {r[f'{pre}ci95_high']:+.2f}]"

    lines = [f"| claim | published | `{folder.name}`: final epoch | last-5 mean | verdict |", "|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        lines.append(f"| {r['text']} | {r['published'] or '—'} | {cell(r, '')} | {cell(r, 'last5_')} | "
                     f"{verdict_text(r, bold=True)} |")
    return "\n".join(lines)


def registry_block() -> str:
    """The registered methods (first sentence of each module's description) and architectures
    (parameters for 10 classes, feature taps), as `mutualbench methods` and `archs` list them."""
    sys.path.insert(0, str(ROOT / "src"))
    from mutualbench.archs import ARCHS, count_parameters, create_arch, pattern_descriptions
    from mutualbench.methods import METHODS

    lines = ["| method | teacher | what it trains |", "|---|---|---|"]
    for name in METHODS.names():
        cls = METHODS.get(name)
        if not cls.__module__.startswith("mutualbench."):
            continue  # a plugin registered from outside the package (a test's, a user's)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        doc = doc.replace("``", "`").split(": ", 1)[-1]
        lines.append(f"| `{name}` | {'yes' if cls.needs_teacher else ''} | {doc} |")
    lines += ["", "| architecture | family | params (10 classes) | taps |", "|---|---|---:|---|"]
    for name in ARCHS.names():
        if not ARCHS.get(name).factory.__module__.startswith("mutualbench."):
            continue
        model = create_arch(name, 10)
        lines.append(f"| `{name}` | {ARCHS.get(name).family} | {count_parameters(model):,} | "
                     f"{', '.join(model.tap_names)} |")
    lines += ["", "Also accepted by name: " + "; ".join(pattern_descriptions()) + "."]
    return "\n".join(lines)


def ablation_sections(table: Path) -> dict[str, str]:
    """Each "## Ablation: NAME" section of a table.md, without its heading, by NAME: the
    ablation's per-value table, its paired comparisons and its contrasts within each value,
    as `mutualbench table` wrote them (<!-- <study>/<profile>-ablation-NAME:start -->)."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in table.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = line[len("## Ablation: "):].strip() if line.startswith("## Ablation: ") else None
            if current is not None:
                sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {name: "\n".join(lines).strip() for name, lines in sections.items()}


def documents() -> list[Path]:
    """Every document that may hold generated blocks: the README, REPLICATION.md and docs/."""
    found = [ROOT / "README.md", ROOT / "REPLICATION.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in found if p.is_file()]


def embed_document(text: str, log=print) -> str:
    """Every generated block the text holds markers for, made from the stored records now."""
    for table in sorted((ROOT / "results").glob("*/*/table.md")):
        study, profile = table.parent.parent.name, table.parent.name
        body = table.read_text(encoding="utf-8").strip().splitlines()[1:]  # drop the title; the document has its own
        body = [("##" + line) if line.startswith("## ") else line for line in body]  # ## -> ####
        for marker in _markers(study, f"{profile}-table"):
            if f"<!-- {marker}:start -->" in text:
                text = _embed(text, marker, "\n".join(body))
                log(f"embedded {table.relative_to(ROOT)}")
        for name, section in ablation_sections(table).items():
            marker = f"{study}/{profile}-ablation-{name}"
            if f"<!-- {marker}:start -->" in text:
                text = _embed(text, marker, section)
                log(f"embedded the {name} ablation of {table.relative_to(ROOT)}")
    for results in sorted(p for p in (ROOT / "results").iterdir() if p.is_dir()):
        if any(f"<!-- {m}:start -->" in text for m in _markers(results.name, "scale-comparison")):
            scale = scale_comparison(results)
            for marker in _markers(results.name, "scale-comparison"):
                if scale is not None and f"<!-- {marker}:start -->" in text:
                    text = _embed(text, marker, scale)
                    log(f"embedded the cpu/full scale comparison of {results.name}")
        if f"<!-- {results.name}/claims:start -->" in text:
            claims = claims_table(results)
            if claims:
                text = _embed(text, f"{results.name}/claims", claims)
                log(f"embedded the claims table of {results.name}")
        for profile in sorted(p.name for p in results.iterdir() if p.is_dir()):
            marker = f"{results.name}/{profile}-headline"
            if f"<!-- {marker}:start -->" in text:
                body = headline_claims(results / profile)
                if body is not None:
                    text = _embed(text, marker, body)
                    log(f"embedded the headline claims of {results.name}/{profile}")
    for profile in ("cpu", "full"):
        blog = ROOT / "results" / "seed_blog" / profile
        for name, make in (("factorial", factorial_table), ("cohort-size", cohort_size_plot)):
            if f"<!-- seed_blog/{profile}-{name}:start -->" not in text:
                continue
            body = make(blog)
            if body is not None:
                text = _embed(text, f"seed_blog/{profile}-{name}", body)
                log(f"embedded the {name} block of {blog.relative_to(ROOT)}")
    for folder in sorted(p.parent for p in (ROOT / "results").glob("*/*/study.json")):
        marker = f"{folder.parent.name}/{folder.name}-provenance"
        if f"<!-- {marker}:start -->" not in text:
            continue
        body = provenance_table(folder)
        if body is not None:
            text = _embed(text, marker, body)
            log(f"embedded the provenance block of {folder.relative_to(ROOT)}")
    if "<!-- registry:start -->" in text:
        text = _embed(text, "registry", registry_block())
        log("embedded the registered methods and architectures")
    return text


def main() -> int:
    for doc in documents():
        text = doc.read_text(encoding="utf-8")
        new = embed_document(text, log=lambda m, doc=doc: print(f"{doc.relative_to(ROOT)}: {m}"))
        if new != text:
            doc.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
