"""Copy generated tables into REPLICATION.md between marker comments, so that the report
quotes the tables exactly as `mutualbench table` wrote them (nothing typed by hand).

    python replication/embed_tables.py            # after `mutualbench table results/seed_blog/<profile>`

Markers: <!-- <profile>-table:start --> ... <!-- <profile>-table:end --> for every
results/seed_blog/<profile>/table.md that exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    report.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
