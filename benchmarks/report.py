"""Turn a pytest-benchmark JSON file into a markdown table with ratios measured in the same run.

    python benchmarks/report.py results/bench/loader-cpu.json > results/bench/loader-cpu.md

Within each benchmark group, every row's ratio is ``baseline mean / row mean`` against each
row whose ``extra_info.role`` is ``baseline`` (so >1 means faster than that baseline)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    data = json.loads(open(path).read())
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {})
    print(f"# Benchmark: {path}\n")
    print(f"- machine: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} logical CPUs, {mi.get('system', '?')} {mi.get('release', '')}")
    print(f"- python {mi.get('python_version', '?')}; date {data.get('datetime', '?')}; commit {data.get('commit_info', {}).get('id', '?')}")
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b["group"]].append(b)
    for group, rows in groups.items():
        baselines = [b for b in rows if b.get("extra_info", {}).get("role") == "baseline"]
        print(f"\n## {group}\n")
        head = ["benchmark", "mean s", "stddev s", "rounds"] + [f"x vs {b['name']}" for b in baselines]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for b in rows:
            s = b["stats"]
            ratios = [f"{base['stats']['mean'] / s['mean']:.1f}" for base in baselines]
            print("| " + " | ".join([b["name"], f"{s['mean']:.4f}", f"{s['stddev']:.4f}", str(s["rounds"])] + ratios) + " |")
        info = rows[0].get("extra_info", {})
        if "data" in info:
            print(f"\ndata: {info['data']}, {info.get('images', '?')} images")


if __name__ == "__main__":
    main(sys.argv[1])
