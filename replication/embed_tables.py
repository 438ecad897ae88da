"""Copy generated tables into REPLICATION.md between marker comments, so that the report
quotes the tables exactly as `mutualbench table` wrote them (nothing typed by hand).

    python replication/embed_tables.py            # after `mutualbench table results/seed_blog/<profile>`

Markers: <!-- <profile>-table:start --> ... <!-- <profile>-table:end --> for every
results/seed_blog/<profile>/table.md that exists, and <!-- scale-comparison:start --> ...
<!-- scale-comparison:end --> for the spec's paired comparisons at the `cpu` and the `full`
scale side by side (computed from the stored records, like the tables).
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
    from mutualbench.results import study_summary

    studies = {}
    for profile in ("cpu", "full"):
        if (results / profile / "study.json").exists():
            manifest, _, _, paired = study_summary(results / profile)
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


def main() -> int:
    report = ROOT / "REPLICATION.md"
    text = report.read_text()
    for table in sorted((ROOT / "results" / "seed_blog").glob("*/table.md")):
        profile = table.parent.name
        start, end = f"<!-- {profile}-table:start -->", f"<!-- {profile}-table:end -->"
        if start not in text:
            continue
        body = table.read_text().strip().splitlines()[1:]  # drop the title; REPLICATION.md has its own
        body = [("##" + line) if line.startswith("## ") else line for line in body]  # ## -> ####
        block = f"{start}\n" + "\n".join(body).strip() + f"\n{end}"
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _, block=block: block, text, flags=re.S)
        print(f"embedded {table.relative_to(ROOT)}")
    scale = scale_comparison(ROOT / "results" / "seed_blog")
    if scale is not None and "<!-- scale-comparison:start -->" in text:
        text = _embed(text, "scale-comparison", scale)
        print("embedded the cpu/full scale comparison")
    report.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
