"""Claims as data: what a study's source says, tested against its records.

A spec states the claims it tests as ``[[claims]]`` tables::

    [[claims]]
    name = "hint_dml_beats_dml"
    text = "hint-pretrained DML beats plain DML"
    comparison = "hint_dml vs dml"      # a [[comparisons]] pair "a vs b", or: contrast = "<name>"
    expect = "positive"                 # the sign the source claims: positive or negative
    published = "+3.28 (76.87 vs 73.59)"  # the source's own number, as text (optional)
    rule = { alpha = 0.05, adjust = "holm", every_seed = true, statistics = ["final", "last5"] }  # optional

A test (a comparison or contrast) *reaches a sign* under a rule when, at every statistic the
rule names, its p-value (Holm-adjusted within its family unless ``adjust = "none"``) is below
``alpha``, and, with ``every_seed``, every seed's difference has that sign. A claim is
**supported** when its test reaches the expected sign, **contradicted** when it reaches the
opposite one, **undecided** otherwise, and **not run** when a profile lacks the runs. The same
outcome (positive / negative / not significant) is what ``compare`` asks a rerun to reach for
each of the spec's comparisons and contrasts ("claims reproduced: k of n").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import UserError
from .results import STATISTICS, Study
from .stats import ALPHA

CLAIM_KEYS = {"name", "text", "comparison", "contrast", "expect", "published", "rule"}
RULE_KEYS = {"alpha", "adjust", "every_seed", "statistics"}
STAT_NAMES = {s for s, _ in STATISTICS}
LABELS = dict(STATISTICS)


@dataclass(frozen=True)
class Rule:
    alpha: float = ALPHA
    adjust: str = "holm"
    every_seed: bool = True
    statistics: tuple[str, ...] = ("final", "last5")

    def describe(self) -> str:
        p = "Holm-adjusted p" if self.adjust == "holm" else "p"
        seeds = " and every seed the same sign" if self.every_seed else ""
        return f"{p} < {self.alpha:g}{seeds}, at the {' and the '.join(LABELS[s] for s in self.statistics)}"


DEFAULT_RULE = Rule()


def parse_rule(raw: object, where: str) -> Rule:
    if raw is None:
        return DEFAULT_RULE
    if not isinstance(raw, dict):
        raise UserError(f"{where}: rule must be a table, e.g. rule = {{ alpha = 0.05, adjust = \"holm\" }}")
    unknown = set(raw) - RULE_KEYS
    if unknown:
        raise UserError(f"{where}: rule: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                        f"{', '.join(sorted(RULE_KEYS))}")
    alpha = raw.get("alpha", ALPHA)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise UserError(f"{where}: rule.alpha = {alpha!r} is not allowed; it must be a number in (0, 1), e.g. 0.05")
    adjust = raw.get("adjust", "holm")
    if adjust not in ("holm", "none"):
        raise UserError(f"{where}: rule.adjust = {adjust!r} is not allowed; use \"holm\" or \"none\"")
    every = raw.get("every_seed", True)
    if not isinstance(every, bool):
        raise UserError(f"{where}: rule.every_seed = {every!r} is not allowed; use true or false")
    stats = raw.get("statistics", list(DEFAULT_RULE.statistics))
    if (not isinstance(stats, list) or not stats or any(not isinstance(s, str) or s not in STAT_NAMES for s in stats)
            or len(set(stats)) != len(stats)):
        raise UserError(f"{where}: rule.statistics = {stats!r} is not allowed; list one or both of "
                        f"{', '.join(repr(s) for s, _ in STATISTICS)}")
    return Rule(float(alpha), adjust, every, tuple(s for s, _ in STATISTICS if s in stats))


def check_claims(raw: dict, path: Path) -> None:
    """Validate a spec's ``[[claims]]`` against its comparisons and contrasts (UserError)."""
    claims = raw.get("claims", [])
    if not isinstance(claims, list) or any(not isinstance(c, dict) for c in claims):
        raise UserError(f"{path}: claims must be [[claims]] tables")
    comparisons = {f"{c.get('a')} vs {c.get('b')}" for c in raw.get("comparisons", []) if isinstance(c, dict)}
    contrasts = {c.get("name") for c in raw.get("contrasts", []) if isinstance(c, dict)}
    seen = set()
    for i, c in enumerate(claims):
        where = f"{path}: [[claims]] #{i + 1}"
        unknown = set(c) - CLAIM_KEYS
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                            f"{', '.join(sorted(CLAIM_KEYS))}")
        name = c.get("name")
        if not isinstance(name, str) or not name:
            raise UserError(f"{where}: name must be a non-empty string, e.g. name = \"hint_dml_beats_dml\"")
        if name in seen:
            raise UserError(f"{where}: claim name {name!r} is used twice; give each claim its own name")
        seen.add(name)
        where = f"{path}: [[claims]] {name}"
        if not isinstance(c.get("text"), str) or not c["text"]:
            raise UserError(f"{where}: text must say the claim in words, e.g. text = \"hint+DML beats DML\"")
        if ("comparison" in c) == ("contrast" in c):
            raise UserError(f"{where}: name exactly one test: comparison = \"<a> vs <b>\" or contrast = \"<name>\"")
        if "comparison" in c and c["comparison"] not in comparisons:
            raise UserError(f"{where}: comparison = {c['comparison']!r} is not one of the spec's [[comparisons]] "
                            f"({', '.join(sorted(comparisons)) or 'none'}); add it there or name one of those")
        if "contrast" in c and c["contrast"] not in contrasts:
            raise UserError(f"{where}: contrast = {c['contrast']!r} is not one of the spec's [[contrasts]] "
                            f"({', '.join(sorted(str(x) for x in contrasts)) or 'none'})")
        if c.get("expect") not in ("positive", "negative"):
            raise UserError(f"{where}: expect = {c.get('expect')!r} is not allowed; use \"positive\" or \"negative\" "
                            "(the sign of a - b, or of the contrast, that the claim states)")
        if "published" in c and not isinstance(c["published"], str):
            raise UserError(f"{where}: published must be text, e.g. published = \"+3.28 (76.87 vs 73.59)\"")
        parse_rule(c.get("rule"), where)


def tests(study: Study) -> dict[str, dict]:
    """Every comparison ("a vs b") and contrast (its name) of the study, each as
    {statistic: {n, diff, low, high, p, p_holm, pos, neg}} plus its family."""
    out = {}
    for _, r in study.paired.iterrows():
        out[f"{r['a']} vs {r['b']}"] = {"kind": "comparison", "family": r["family"], **{
            stat: _numbers(r, "" if stat == "final" else f"{stat}_", "diff_mean", "a_wins", "b_wins")
            for stat, _ in STATISTICS}}
    for _, r in study.contrasts.iterrows():
        out[r["contrast"]] = {"kind": "contrast", "family": r["family"], **{
            stat: _numbers(r, "" if stat == "final" else f"{stat}_", "mean", "seeds_positive", "seeds_negative")
            for stat, _ in STATISTICS}}
    return out


def _numbers(r: pd.Series, pre: str, diff: str, pos: str, neg: str) -> dict:
    return {"n": int(r[f"{pre}n"]), "diff": float(r[f"{pre}{diff}"]), "low": float(r[f"{pre}ci95_low"]),
            "high": float(r[f"{pre}ci95_high"]), "p": float(r[f"{pre}p_value"]), "p_holm": float(r[f"{pre}p_holm"]),
            "pos": int(r[f"{pre}{pos}"]), "neg": int(r[f"{pre}{neg}"])}


def outcome(test: dict | None, rule: Rule = DEFAULT_RULE) -> str:
    """``positive`` / ``negative`` (the test reaches that sign under ``rule``), ``not
    significant``, or ``not computed`` (missing, or fewer than 2 seeds at a statistic)."""
    if test is None:
        return "not computed"
    signs = set()
    for stat in rule.statistics:
        t = test[stat]
        if t["n"] < 2 or math.isnan(t["diff"]):
            return "not computed"
        p = t["p_holm"] if rule.adjust == "holm" else t["p"]
        sign = "positive" if t["diff"] > 0 else "negative" if t["diff"] < 0 else None
        if sign is None or math.isnan(p) or p >= rule.alpha:
            signs.add(None)
            continue
        if rule.every_seed and (t["pos"] if sign == "positive" else t["neg"]) != t["n"]:
            signs.add(None)
            continue
        signs.add(sign)
    return signs.pop() if len(signs) == 1 and None not in signs else "not significant"


def verdict(claim: dict, test: dict | None) -> str:
    o = outcome(test, parse_rule(claim.get("rule"), claim["name"]))
    if o == "not computed":
        return "not run"
    if o == "not significant":
        return "undecided"
    return "supported" if o == claim["expect"] else "contradicted"


CLAIM_COLUMNS = ["claim", "text", "test", "expect", "published", "verdict", "rule", "n", "diff", "ci95_low",
                 "ci95_high", "p_holm", "seeds_expected_sign", "last5_n", "last5_diff", "last5_ci95_low",
                 "last5_ci95_high", "last5_p_holm", "last5_seeds_expected_sign"]


def evaluate(study: Study) -> pd.DataFrame:
    """One row per claim of the study's spec: its test's numbers at both statistics and the
    verdict. Empty when the spec states no claims."""
    found = tests(study)
    rows = []
    for c in study.spec.get("claims", []):
        key = c.get("comparison") or c.get("contrast")
        t = found.get(key)
        rule = parse_rule(c.get("rule"), c["name"])
        row = {"claim": c["name"], "text": c["text"], "test": key if "comparison" in c else f"contrast {key}",
               "expect": c["expect"], "published": c.get("published", ""), "verdict": verdict(c, t),
               "rule": rule.describe()}
        for stat, _ in STATISTICS:
            pre = "" if stat == "final" else f"{stat}_"
            n = t[stat] if t else None
            row.update({f"{pre}n": n["n"] if n else 0, f"{pre}diff": n["diff"] if n else math.nan,
                        f"{pre}ci95_low": n["low"] if n else math.nan, f"{pre}ci95_high": n["high"] if n else math.nan,
                        f"{pre}p_holm": n["p_holm"] if n else math.nan,
                        f"{pre}seeds_expected_sign": (n["pos"] if c["expect"] == "positive" else n["neg"]) if n else 0})
        rows.append(row)
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def _cell(r: pd.Series, pre: str) -> str:
    n = int(r[f"{pre}n"])
    if n == 0 or math.isnan(r[f"{pre}diff"]):
        return "not run"
    d = f"{r[f'{pre}diff']:+.2f}"
    if n < 2:
        return f"{d} (n = 1)"
    p = r[f"{pre}p_holm"]
    p_text = "" if math.isnan(p) else f", p_Holm {_p(p)}"
    return f"{d} [{r[f'{pre}ci95_low']:+.2f}, {r[f'{pre}ci95_high']:+.2f}]{p_text}, {int(r[f'{pre}seeds_expected_sign'])}/{n}"


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def markdown(frames: dict[str, pd.DataFrame]) -> str:
    """The claims table of one or more profiles (``{profile: evaluate(study)}``, the primary
    profile first): each claim, the source's number, the primary profile's difference with its
    95% CI, Holm-adjusted p and seeds of the claimed sign at both statistics, its verdict, and
    each other profile's numbers and verdict."""
    from tabulate import tabulate

    profiles = list(frames)
    if not profiles or all(f.empty for f in frames.values()):
        return ""
    primary = frames[profiles[0]]
    others = {p: frames[p].set_index("claim") for p in profiles[1:] if not frames[p].empty}
    headers = ["claim", "published", f"`{profiles[0]}`: final epoch", f"`{profiles[0]}`: {LABELS['last5']}",
               f"verdict (`{profiles[0]}`)"] + [f"`{p}`: final epoch; {LABELS['last5']}; verdict" for p in others]
    rows = []
    for _, r in primary.iterrows():
        row = [f"{r['text']} (`{r['test']}`)", r["published"] or "—", _cell(r, ""), _cell(r, "last5_"),
               f"**{r['verdict']}**"]
        for f in others.values():
            if r["claim"] in f.index:
                o = f.loc[r["claim"]]
                row.append(f"{_cell(o, '')}; {_cell(o, 'last5_')}; {o['verdict']}")
            else:
                row.append("—")
        rows.append(row)
    rules = sorted(set(primary["rule"]))
    lines = [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), "",
             "Each cell: difference in accuracy points [95% t-interval], Holm-adjusted p within the test's "
             "family, seeds with the claimed sign. A claim is supported when its test meets the rule ("
             + "; ".join(rules) + ") in the claimed direction, contradicted when it meets it in the other "
             "direction, undecided otherwise."]
    return "\n".join(lines) + "\n"
