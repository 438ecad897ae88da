"""REPLICATION.md's prose quotes numbers from the generated tables by hand; these tests
keep the quotes true. Every 95% interval ``[lo, hi]`` and every ``mean ± std`` written
outside the embedded (generated) tables must be one that a stored study's CSV holds, at the
two decimals the tables print. A number that went stale when a record was added fails here."""

import csv
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


def test_every_interval_and_mean_quoted_in_the_prose_is_a_stored_tables():
    text = (ROOT / "REPLICATION.md").read_text(encoding="utf-8")
    intervals, means = quoted_intervals(text), quoted_means(text)
    assert len(intervals) >= 10 and len(means) >= 3  # the prose does quote them
    stored_i, stored_m = stored_intervals(), stored_means()
    assert [q for q, key in intervals if key not in stored_i] == []
    assert [q for q, key in means if key not in stored_m] == []


def test_a_stale_quote_is_caught():
    """The check itself: a number the tables do not hold, in prose, is found; the same
    number inside a generated block is not prose."""
    stale = "the peer adds +0.90 [+0.08, +1.70] and 79.39 ± 1.10\n"
    assert quoted_intervals(stale) == [("[+0.08, +1.70]", (0.08, 1.70))]
    assert quoted_means(stale) == [("79.39 ± 1.10", (79.39, 1.10))]
    assert (0.08, 1.70) not in stored_intervals() and (79.39, 1.10) not in stored_means()
    assert quoted_intervals(f"<!-- x/y:start -->\n{stale}<!-- x/y:end -->\n") == []
