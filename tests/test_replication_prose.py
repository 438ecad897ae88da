"""The documents (README.md, REPLICATION.md, docs/**/*.md) quote numbers from the generated
tables by hand; these tests keep the quotes true. Every 95% interval ``[lo, hi]`` and every
``mean ± std`` written outside the embedded (generated) blocks must be one that a stored
study's CSV holds, at the two decimals the tables print, wherever a report moves. A number
that went stale when a record was added fails here, and so does a generated block that was
not regenerated."""

import csv
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUM = r"[−+-]?\d+\.\d+"


def prose(text: str) -> str:
    """The text without the blocks that ``replication/embed_tables.py`` generates."""
    return re.sub(r"<!-- (\S+):start -->.*?<!-- \1:end -->", "", text, flags=re.S)


def rows(pattern: str):
    for path in sorted(ROOT.glob(pattern)):
        with path.open(newline="") as fh:
            yield from csv.DictReader(fh)


def number(text: str) -> float:
    return round(float(text.replace("−", "-")), 2)


def stored_intervals() -> set[tuple[float, float]]:
    """Every (low, high) of a 95% interval in a stored study's CSVs: arms, comparisons,
    contrasts, ablations; final epoch and last-5 mean."""
    found = set()
    for row in rows("results/*/*/*.csv"):
        for key in row:
            if key and key.endswith("ci95_low") and row.get(key) and row.get(key[:-3] + "high"):
                found.add((number(row[key]), number(row[key[:-3] + "high"])))
    return found


def stored_means() -> set[tuple[float, float]]:
    found = set()
    for row in rows("results/*/*/table.csv"):
        for mean, std in (("final_mean", "final_std"), ("last5_mean", "last5_std")):
            if row.get(mean) and row.get(std):
                found.add((number(row[mean]), number(row[std])))
    return found


def quoted_intervals(text: str) -> list[tuple[str, tuple[float, float]]]:
    return [(m.group(0), (number(m.group(1)), number(m.group(2))))
            for m in re.finditer(rf"\[({NUM}), ({NUM})\]", prose(text))]


def quoted_means(text: str) -> list[tuple[str, tuple[float, float]]]:
    return [(m.group(0), (number(m.group(1)), number(m.group(2))))
            for m in re.finditer(rf"({NUM}) ± ({NUM})", prose(text))]


def documents() -> list[Path]:
    """Every document with prose: the README, REPLICATION.md and the docs/ pages and reports."""
    return embed_tables().documents()


def test_the_documents_are_the_readme_the_report_and_every_docs_page():
    names = {p.relative_to(ROOT).as_posix() for p in documents()}
    assert {"README.md", "REPLICATION.md", "docs/reports/cpu-profile.md", "docs/reports/full-runs.md"} <= names
    assert names == {"README.md", "REPLICATION.md"} | {p.relative_to(ROOT).as_posix()
                                                       for p in (ROOT / "docs").rglob("*.md")}


def test_every_interval_and_mean_quoted_in_the_prose_is_a_stored_tables():
    stored_i, stored_m = stored_intervals(), stored_means()
    found_i = found_m = 0
    stale = []
    for doc in documents():
        text = doc.read_text(encoding="utf-8")
        intervals, means = quoted_intervals(text), quoted_means(text)
        found_i, found_m = found_i + len(intervals), found_m + len(means)
        stale += [f"{doc.name}: {q}" for q, key in intervals if key not in stored_i]
        stale += [f"{doc.name}: {q}" for q, key in means if key not in stored_m]
    assert found_i >= 10 and found_m >= 3  # the prose does quote them
    assert stale == []


def test_a_stale_quote_is_caught():
    """The check itself: a number the tables do not hold, in prose, is found; the same
    number inside a generated block is not prose."""
    stale = "the peer adds +0.90 [+0.08, +1.70] and 79.39 ± 1.10\n"
    assert quoted_intervals(stale) == [("[+0.08, +1.70]", (0.08, 1.70))]
    assert quoted_means(stale) == [("79.39 ± 1.10", (79.39, 1.10))]
    assert (0.08, 1.70) not in stored_intervals() and (79.39, 1.10) not in stored_means()
    assert quoted_intervals(f"<!-- x/y:start -->\n{stale}<!-- x/y:end -->\n") == []


def embed_tables():
    """replication/embed_tables.py, the script that writes the generated blocks."""
    spec = importlib.util.spec_from_file_location("embed_tables", ROOT / "replication" / "embed_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_provenance_blocks_are_what_the_stored_records_give():
    """Which kind of machine ran which run is generated, never typed: every provenance block
    in the documents is what embed_tables.py makes of the stored records now, so a record
    added or replaced without regenerating the report fails here."""
    text = "\n".join(doc.read_text(encoding="utf-8") for doc in documents())
    blocks = dict(re.findall(r"<!-- (\S+/\S+)-provenance:start -->\n(.*?)\n<!-- \1-provenance:end -->",
                             text, flags=re.S))
    assert {"seed_blog/full", "online_kd/cpu"} <= set(blocks)
    embed = embed_tables()
    for folder, body in blocks.items():
        generated = embed.provenance_table(ROOT / "results" / folder)
        assert generated is not None and body == generated.strip(), f"{folder}-provenance is stale"


def test_the_provenance_block_counts_each_run_once_under_its_kind():
    """A run the main study and an ablation share counts once, under its arm; an ablation's own
    run is named with its value; a run resumed on another kind is a row "A + B" of its own;
    a planned run without a record is not counted."""
    def record(kind: str, flags: list[str], train_s: float, segments=()) -> dict:
        model, isa = kind.split()
        return {"status": "complete", "env": {"cpu": {"model": model, "isa": isa, "bf16_flags": flags}},
                "timings": {"train_s": train_s}, "segments": [{"machine": m} for m in segments]}

    def entry(run_id, arm, seed, ablation=None, value=None):
        return {"run_id": run_id, "arm": arm, "seed": seed, "ablation": ablation, "value": value}

    manifest = {"runs": [entry("a", "teacher", 0), entry("b", "dml", 0), entry("b", "dml", 0, "order", "simultaneous"),
                         entry("c", "dml", 0, "order", "sequential"), entry("d", "teacher", 1), entry("e", "dml", 1)]}
    records = {"a": record("EPYC AVX2", [], 3600), "b": record("EPYC AVX2", [], 1800),
               "c": record("Xeon AVX512", ["avx512_bf16"], 1080),
               "d": record("Xeon AVX512", ["avx512_bf16"], 3600, segments=("EPYC AVX2", "Xeon AVX512"))}
    assert embed_tables().provenance_markdown(manifest, records, "x/y").splitlines() == [
        "| kind of machine | runs | training hours | native bf16 | arms and seeds |",
        "|---|---|---|---|---|",
        "| EPYC AVX2 | 2 | 1.5 | none | teacher 0; dml 0 |",
        "| EPYC AVX2 + Xeon AVX512 | 1 | 1.0 | not recorded | teacher 1 |",
        "| Xeon AVX512 | 1 | 0.3 | `avx512_bf16` | dml (order = sequential) 0 |",
        "| all | 4 | 2.8 | | |",
        "",
        "2 kinds of machine ran the 4 complete runs in `x/y` (2.8 hours of training); a run resumed "
        'on another kind is counted in a row of its own, "A + B".',
    ]


def test_every_generated_block_is_what_the_stored_records_give_now():
    """Each document's generated blocks (tables, claims, the README's headline and registry,
    factorials, provenance) are what embed_tables.py makes of the stored records and the code
    now: a record added, or a method registered, without regenerating the documents fails."""
    embed = embed_tables()
    stale = []
    for doc in documents():
        text = doc.read_text(encoding="utf-8")
        if "<!-- " not in text:
            continue
        new = embed.embed_document(text, log=lambda _: None)
        stale += [f"{doc.relative_to(ROOT)}: {name}" for name, body in blocks(text).items()
                  if blocks(new).get(name) != body]
    assert stale == [], "run python replication/embed_tables.py"


def blocks(text: str) -> dict[str, str]:
    return dict(re.findall(r"<!-- (\S+):start -->(.*?)<!-- \1:end -->", text, flags=re.S))


def test_a_stale_block_is_caught():
    """The check itself: a headline block that says something else than the records is
    replaced by embed_document."""
    text = "<!-- seed_blog/full-headline:start -->\n| claim | stale |\n<!-- seed_blog/full-headline:end -->\n"
    new = embed_tables().embed_document(text, log=lambda _: None)
    assert blocks(new)["seed_blog/full-headline"] != blocks(text)["seed_blog/full-headline"]
    assert "the teacher beats the student trained alone" in new


def test_an_ablation_block_is_its_section_of_the_table_and_nothing_else(tmp_path):
    table = tmp_path / "table.md"
    table.write_text("# s: profile `p`\n\n## Main arms\n\n| a |\n\n## Ablation: schedule\n\n| value | arm |\n"
                     "|---|---|\n| cosine | dml |\n\nPaired over seeds\n\n## Ablation: init\n\n| value |\n",
                     encoding="utf-8")
    sections = embed_tables().ablation_sections(table)
    assert sections == {"schedule": "| value | arm |\n|---|---|\n| cosine | dml |\n\nPaired over seeds",
                        "init": "| value |"}
    text = "<!-- seed_blog/cpu-schedule-ablation-schedule:start -->\nstale\n<!-- seed_blog/cpu-schedule-ablation-schedule:end -->\n"
    new = embed_tables().embed_document(text, log=lambda _: None)
    stored = embed_tables().ablation_sections(ROOT / "results" / "seed_blog" / "cpu-schedule" / "table.md")
    assert blocks(new)["seed_blog/cpu-schedule-ablation-schedule"].strip() == stored["schedule"]


def schedule_paragraph(text: str) -> str:
    """REPLICATION.md's reading of the schedule ablation: the prose after its generated table,
    up to the provenance that follows."""
    start = text.index("<!-- seed_blog/cpu-schedule-ablation-schedule:end -->")
    return text[start:text.index("Which kind of machine ran which of its runs", start)].split("-->", 1)[1]


def schedule_figures(folder: Path) -> set[str]:
    """Every figure the schedule's reading may quote, as the tables print it (the regex that
    finds the quotes takes no sign): paired differences, Holm p values, contrast means,
    intervals and their widths, arm means."""
    figures: set[str] = set()
    for row in rows(f"{folder}/ablation_comparisons.csv"):
        for pre in ("", "last5_"):
            d = float(row[f"{pre}diff_mean"])
            figures |= {f"{abs(d):.2f}", f"{float(row[f'{pre}p_holm']):.3f}"}
    for row in rows(f"{folder}/ablation_contrasts.csv"):
        for pre in ("", "last5_"):
            lo, hi = number(row[f"{pre}ci95_low"]), number(row[f"{pre}ci95_high"])  # as printed
            figures |= {f"{abs(float(row[f'{pre}mean'])):.2f}", f"{abs(lo):.2f}", f"{abs(hi):.2f}", f"{hi - lo:.2f}",
                        f"{float(row[f'{pre}p_holm']):.3f}"}
    for row in rows(f"{folder}/table.csv"):
        figures |= {f"{float(row['final_mean']):.2f}"}
    return figures


def test_every_figure_of_the_schedule_reading_is_in_its_tables():
    """The schedule ablation's prose quotes differences, p values and widths, not only
    intervals: each one is a figure its stored CSVs give, and the count of pairs is theirs."""
    text = (ROOT / "REPLICATION.md").read_text(encoding="utf-8")
    paragraph = " ".join(schedule_paragraph(text).split())
    figures = schedule_figures("results/seed_blog/cpu-schedule")
    quoted = [m.group(0) for m in re.finditer(r"\d+\.\d+", paragraph)]
    assert len(quoted) >= 20 and [q for q in quoted if q not in figures] == []
    pairs = list(rows("results/seed_blog/cpu-schedule/ablation_comparisons.csv"))
    above, total = sum(int(r["value_wins"]) for r in pairs), sum(int(r["n"]) for r in pairs)
    assert f"({above} of {total} pairs above)" in paragraph
    # each cell's cosine - constant difference, where the prose names the cell
    names = {"student_dml_optimizer": "the control", "dml": "DML", "hint_student": "the hinted student",
             "hint_dml": "hint+DML"}
    said = {arm: re.search(rf"{re.escape(name)} by (\d+\.\d+)", paragraph) for arm, name in names.items()}
    assert {r["arm"]: said[r["arm"]].group(1) for r in pairs} == \
        {r["arm"]: f"{abs(float(r['diff_mean'])):.2f}" for r in pairs}


def test_a_stale_schedule_figure_is_caught():
    stale = "<!-- seed_blog/cpu-schedule-ablation-schedule:end -->\nthe control by 3.14 points\nWhich kind of machine " \
            "ran which of its runs"
    figures = schedule_figures("results/seed_blog/cpu-schedule")
    assert "3.13" in figures and [q for q in re.findall(r"\d+\.\d+", schedule_paragraph(stale))
                                  if q not in figures] == ["3.14"]


def online_kd_reading(text: str) -> str:
    """The online-KD report's reading of its `cpu` runs: the prose after the generated table,
    up to the provenance that follows."""
    start = text.index("<!-- online_kd/cpu-table:end -->")
    return text[start:text.index("## Which kind of machine ran which run", start)].split("-->", 1)[1]


def study_figures(folder: str) -> set[str]:
    """Every figure a study's reading may quote, as its tables print it (no sign): paired
    differences (between arms, and between an ablation's values) with their intervals,
    standard deviations, means and Holm p values; claims'
    equivalence p values; arms' means and standard deviations; each run's final accuracy."""
    figures: set[str] = set()
    paired = {"comparisons.csv": ("diff_mean", "diff_std", "ci95_low", "ci95_high", "mean_a", "mean_b"),
              "ablation_comparisons.csv": ("diff_mean", "diff_std", "mean_value", "mean_reference")}
    for name, keys in paired.items():
        for row in rows(f"{folder}/{name}"):
            for pre in ("", "last5_"):
                figures |= {f"{abs(number(row[pre + key])):.2f}" for key in keys if row[pre + key]}
                figures |= {f"{float(row[pre + 'p_holm']):.3f}"} if row[pre + "p_holm"] else set()
    for row in rows(f"{folder}/claims.csv"):
        figures |= {f"{float(row[key]):.3f}" for key in ("p_equiv_holm", "last5_p_equiv_holm") if row[key]}
    for row in rows(f"{folder}/table.csv"):
        figures |= {f"{float(row[key]):.2f}" for key in ("final_mean", "final_std", "last5_mean", "last5_std")
                    if row[key]}
    figures |= {f"{float(row['final_acc']):.2f}" for row in rows(f"{folder}/runs.csv")}
    return figures


def test_every_figure_of_the_online_kd_reading_is_in_its_tables():
    """The online-KD report's reading quotes means and single runs (and, as arms complete,
    differences and p values): each is a figure its stored CSVs give, and the figures it names
    are the right rows'."""
    text = (ROOT / "docs" / "reports" / "online-kd.md").read_text(encoding="utf-8")
    reading = " ".join(online_kd_reading(text).split())
    figures = study_figures("results/online_kd/cpu")
    quoted = re.findall(r"\d+\.\d+", reading)
    assert len(quoted) >= 20 and [q for q in quoted if q not in figures] == []
    # the figures it names: each classifier_he arm's mean, from the init ablation's rows
    table = {(r["value"], r["arm"], r["member"]): r for r in rows("results/online_kd/cpu/table.csv")
             if r["ablation"] == "init"}
    alone = table[("classifier_he", "individual", "model")]
    assert f"finished at {float(alone['final_mean']):.2f} ± {float(alone['final_std']):.2f}%" in reading
    dml = ", ".join(f"{float(table[('classifier_he', 'dml', f'student{k}')]['final_mean']):.2f} ± "
                    f"{float(table[('classifier_he', 'dml', f'student{k}')]['final_std']):.2f}" for k in (1, 2))
    assert f"DML's students finished at {dml} and" in reading
    # the main arm it is set against, and the paired difference between them
    main = next(r for r in rows("results/online_kd/cpu/table.csv") if r["ablation"] == "main" and r["arm"] == "individual")
    assert f"alone on the profile's 10,000 images finished at {float(main['final_mean']):.2f} ± " \
           f"{float(main['final_std']):.2f}%" in reading
    pair = next(r for r in rows("results/online_kd/cpu/ablation_comparisons.csv")
                if (r["ablation"], r["arm"]) == ("init", "individual"))
    assert f"finished at {float(alone['final_mean']):.2f} ± {float(alone['final_std']):.2f}%, " \
           f"{abs(float(pair['diff_mean'])):.2f} points below" in reading
    assert f"(the paired differences' std {float(pair['diff_std']):.2f})" in reading
    assert f"(Holm p {float(pair['p_holm']):.3f} at the final epoch" in reading


def test_a_stale_online_kd_figure_is_caught():
    stale = "<!-- online_kd/cpu-table:end -->\na network alone finished at 52.26 ± 3.15%\n" \
            "## Which kind of machine ran which run"
    figures = study_figures("results/online_kd/cpu")
    assert "52.25" in figures and [q for q in re.findall(r"\d+\.\d+", online_kd_reading(stale))
                                   if q not in figures] == ["52.26"]
