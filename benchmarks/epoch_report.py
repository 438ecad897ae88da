"""The epoch benchmark's report, ``results/bench/<cpu kind>.md``, from the pytest-benchmark JSON
of ``test_bench_epoch.py`` (``make bench`` writes both): the machine; this CPU's convolution
ceiling; the fastest way per method; then per method a row per way with the suite's epoch, the
hand-written loop's, their ratio (the suite's overhead), the epoch's FLOPs, its ceiling time
and the fraction of the ceiling each reaches.

Times are each measurement's fastest round: other work on the machine only ever slows an
epoch, so the fastest round is the closest to what the way costs.

    python benchmarks/epoch_report.py results/bench/amd-epyc-avx2.json > results/bench/amd-epyc-avx2.md
"""

from __future__ import annotations

import json
import sys


def _seconds(bench: dict) -> float:
    return float(bench["stats"]["min"])


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "?"


def _share(ceiling_s: float, seconds: float) -> str:
    return f"{100 * ceiling_s / seconds:.0f}%" if seconds > 0 else "?"


def collect(benchmarks: list[dict]) -> dict[str, dict[str, dict[str, dict]]]:
    """method -> way -> impl ("suite", "plain") -> benchmark, in the order they ran."""
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for b in benchmarks:
        info = b.get("extra_info") or {}
        if {"method", "way", "impl"} <= info.keys():
            out.setdefault(info["method"], {}).setdefault(info["way"], {})[info["impl"]] = b
    return out


def header(data: dict) -> list[str]:
    mi = data.get("machine_info") or {}
    mb = mi.get("mutualbench") or {}
    cpu = mb.get("cpu") or {}
    model = cpu.get("model") or (mi.get("cpu") or {}).get("brand_raw", "?")
    bf16 = f"yes ({', '.join(cpu.get('bf16_flags') or [])})" if cpu.get("bf16_native") else "no"
    logical = (mi.get("cpu") or {}).get("count", "?")
    return [
        f"# Training epochs on {mb.get('kind', model)}",
        "",
        f"- CPU: {model}; instruction set {cpu.get('isa', '?')}; bf16 native: {bf16}; "
        f"{cpu.get('threads', '?')} threads ({logical} logical CPUs)",
        f"- torch {mb.get('torch', '?')}, python {mi.get('python_version', '?')}; {data.get('datetime', '?')}; "
        f"commit {(data.get('commit_info') or {}).get('id', '?')}",
    ]


def fastest(ways: dict[str, dict[str, dict]]) -> tuple[str, float] | None:
    timed = {w: _seconds(r["suite"]) for w, r in ways.items() if "suite" in r}
    if not timed:
        return None
    best = min(timed, key=timed.get)
    return best, timed[best]


def report(data: dict) -> str:
    lines = header(data)
    methods = collect(data.get("benchmarks") or [])
    if not methods:
        return "\n".join([*lines, "", "No timings in this file (a smoke run, or no epoch benchmark in it)."]) + "\n"
    any_bench = next(r for ways in methods.values() for impls in ways.values() for r in impls.values())
    info = any_bench["extra_info"]
    lines += [
        f"- each time: one epoch of {info['images']:,} training images ({info['steps']} batches of {info['batch']}), "
        f"the fastest of {any_bench['stats']['rounds']} rounds; *suite*: the method's stage `step` as training runs "
        "it (`assemble`), *plain*: a hand-written PyTorch loop of the same models in the same way "
        "(`benchmarks/plain_loops.py`); *suite / plain*: the ratio of their times (above 1: the suite is slower)",
        "",
        "## Convolution ceiling",
        "",
        f"{info['conv_shape']}, forward and backward, the fastest of a few rounds. An epoch's *ceiling* is its "
        "FLOPs (forward and backward, counted on one step with `FlopCounterMode`) at this rate; *of ceiling* is "
        "the ceiling time over the measured time.",
        "",
        "| way | GFLOP/s |",
        "|---|---:|",
    ]
    conv = {}
    for ways in methods.values():
        for way, impls in ways.items():
            conv.setdefault(way, next(iter(impls.values()))["extra_info"]["conv_gflops"])
    lines += [f"| {way} | {gflops:.1f} |" for way, gflops in conv.items()]
    cpu = (data.get("machine_info") or {}).get("mutualbench", {}).get("cpu") or {}
    if "bf16" not in conv and not cpu.get("bf16_native", True):
        lines += ["", "bf16 autocast is not measured: this CPU has no native bf16 (avx512_bf16 or amx_bf16), and "
                      "emulated it is about 12x slower."]
    lines += ["", "## Fastest way per method", "", "| method | fastest way | epoch s | images/s | the other ways |",
              "|---|---|---:|---:|---|"]
    for method, ways in methods.items():
        best = fastest(ways)
        if best is None:
            continue
        way, seconds = best
        others = ", ".join(f"{w} {_ratio(_seconds(r['suite']), seconds)}x as long" for w, r in ways.items()
                           if w != way and "suite" in r)
        lines.append(f"| {method} | {way} | {seconds:.2f} | {info['images'] / seconds:.0f} | {others or '-'} |")
    for method, ways in methods.items():
        lines += method_table(method, ways)
    return "\n".join(lines) + "\n"


def method_table(method: str, ways: dict[str, dict[str, dict]]) -> list[str]:
    """One method's rows: per way, the suite and the plain loop against each other and the ceiling."""
    info = next(iter(next(iter(ways.values())).values()))["extra_info"]
    cohort = f", cohort {info['cohort']}" if info.get("cohort", 1) > 1 else ""
    lines = ["", f"## {method}: `{info['run_method']}`, {info['arch']}{cohort}, stage `{info['stage']}`", "",
             "| way | suite s | plain s | suite / plain | GFLOP per epoch | ceiling s | suite, of ceiling | "
             "plain, of ceiling |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for way, impls in ways.items():
        suite, plain = impls.get("suite"), impls.get("plain")
        ref = (suite or plain)["extra_info"]
        ceiling_s = float(ref["ceiling_s"])
        s = _seconds(suite) if suite else None
        p = _seconds(plain) if plain else None
        lines.append("| " + " | ".join([
            way, f"{s:.2f}" if s else "-", f"{p:.2f}" if p else "-", _ratio(s, p) if s and p else "-",
            f"{ref['flops_per_epoch'] / 1e9:.0f}", f"{ceiling_s:.2f}",
            _share(ceiling_s, s) if s else "-", _share(ceiling_s, p) if p else "-"]) + " |")
        if suite and plain:
            fs, fp = suite["extra_info"]["flops_per_step"], plain["extra_info"]["flops_per_step"]
            if abs(fs - fp) > 0.01 * max(fs, fp):
                notes.append(f"{way}: the plain loop counts {fp / 1e9:.2f} GFLOP per step, the suite {fs / 1e9:.2f}")
    best = fastest(ways)
    if best is not None:
        lines += ["", f"Fastest: {best[0]} ({best[1]:.2f} s per epoch)."]
    lines += [f"Note: {n}." for n in notes]
    return lines


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        sys.stdout.write(report(json.load(f)))


if __name__ == "__main__":
    main(sys.argv[1])
