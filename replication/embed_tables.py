"""Copy generated tables into REPLICATION.md between marker comments, so that the report
quotes the tables exactly as `mutualbench table` wrote them (nothing typed by hand).

    python replication/embed_tables.py            # after `mutualbench table results/<study>/<profile>`

Markers, for every study in results/: <!-- <study>/<profile>-table:start --> ...
<!-- <study>/<profile>-table:end --> for each results/<study>/<profile>/table.md, and
<!-- <study>/scale-comparison:start --> ... :end --> for the spec's paired comparisons at the
`cpu` and the `full` scale side by side (computed from the stored records, like the tables).
The blog's study (seed_blog) also answers to the unprefixed names (<!-- cpu-table:start -->).
"""

from __future__ import annotations

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
    if full["n"] < 3:
        word += f" (n = {full['n']} at full scale: provisional)"
    return word


def scale_comparison(results: Path) -> str | None:
    """The spec's paired comparisons at the `cpu` and `full` scales, one row each."""
    sys.path.insert(0, str(ROOT / "src"))
    from mutualbench.results import load_study

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


def _markers(study: str, name: str) -> list[str]:
    """Marker names of a block: ``<study>/<name>`` for any study; the blog's study also keeps
    its original unprefixed names."""
    return [f"{study}/{name}"] + ([name] if study == "seed_blog" else [])


def main() -> int:
    report = ROOT / "REPLICATION.md"
    text = report.read_text()
    for table in sorted((ROOT / "results").glob("*/*/table.md")):
        study, profile = table.parent.parent.name, table.parent.name
        body = table.read_text().strip().splitlines()[1:]  # drop the title; REPLICATION.md has its own
        body = [("##" + line) if line.startswith("## ") else line for line in body]  # ## -> ####
        for marker in _markers(study, f"{profile}-table"):
            if f"<!-- {marker}:start -->" in text:
                text = _embed(text, marker, "\n".join(body))
                print(f"embedded {table.relative_to(ROOT)}")
    for results in sorted(p for p in (ROOT / "results").iterdir() if p.is_dir()):
        scale = scale_comparison(results)
        for marker in _markers(results.name, "scale-comparison"):
            if scale is not None and f"<!-- {marker}:start -->" in text:
                text = _embed(text, marker, scale)
                print(f"embedded the cpu/full scale comparison of {results.name}")
    report.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
