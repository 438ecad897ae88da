"""Claims as data: what a study's source says, tested against its records.

A spec states the claims it tests as ``[[claims]]`` tables::

    [[claims]]
    name = "hint_dml_beats_dml"
    text = "hint-pretrained DML beats plain DML"
    comparison = "hint_dml vs dml"      # a [[comparisons]] pair "a vs b", or: contrast = "<name>"
    expect = "positive"                 # the sign the source claims: positive or negative
    published = "+3.28 (76.87 vs 73.59)"  # the source's own number, as text (optional)
    delta = 1.0                         # the smallest effect that matters (optional; default: the profile's)
    rule = { alpha = 0.05, adjust = "holm", statistics = ["final", "last5"] }  # optional

A test (a comparison or contrast) *reaches a sign* under a rule when, at every statistic the
rule names, its p-value (Holm-adjusted within its family unless ``adjust = "none"``) is below
``alpha`` with the mean difference of that sign (and, only when the rule asks for it with
``seeds_fraction``, at least that fraction of seeds share the sign). How many seeds share the
sign is always reported, never required by default: "every seed" gets harder to meet as seeds
are added even for a real effect, so a rule with it loses power with n; this one gains it.

A test is *equivalent* when, at every statistic, two one-sided t-tests against +-delta
(TOST, Holm-adjusted within the family like the other tests) put its mean inside the band.
A claim is **supported** when its test reaches the expected sign, **contradicted** when it
reaches the opposite one, **negligible** when it reaches neither and is equivalent (any
effect is smaller than the smallest that matters), **undecided** otherwise, and **not run**
when a profile lacks the runs.

A profile plans its number of seeds (``seeds``, else ``[study] seeds``). The claims are
decided at the planned n only, at the stated alpha: a look with fewer seeds, in its own test or
in another test of its Holm family (whose p-values adjust its own), is labelled *interim*
everywhere it is shown, and is information, not a decision (adding seeds until a claim first
looks decided would inflate its error rate).

The same outcome (positive / negative / not significant) is what ``compare`` asks a rerun to
reach for each of the spec's comparisons and contrasts ("claims reproduced: k of n").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..core.errors import UserError
from ..storage.spec_schema import label_problem
from .results import STATISTICS, Study, seed_values
from .stats import ALPHA, equivalence_p, holm

CLAIM_KEYS = {"name", "text", "comparison", "contrast", "expect", "published", "rule", "delta"}
RULE_KEYS = {"alpha", "adjust", "seeds_fraction", "statistics"}
STAT_NAMES = {s for s, _ in STATISTICS}
LABELS = dict(STATISTICS)


@dataclass(frozen=True)
class Rule:
    alpha: float = ALPHA
    adjust: str = "holm"
    seeds_fraction: float | None = None  # None: the seeds' signs are reported, not required
    statistics: tuple[str, ...] = ("final", "last5")

    def describe(self) -> str:
        p = "Holm-adjusted p" if self.adjust == "holm" else "p"
        seeds = (f" and at least {self.seeds_fraction:.0%} of seeds with the claimed sign"
                 if self.seeds_fraction is not None else "")
        return (f"{p} < {self.alpha:g} in the claimed direction{seeds}, at the "
                f"{' and the '.join(LABELS[s] for s in self.statistics)}")


DEFAULT_RULE = Rule()


def parse_rule(raw: object, where: str) -> Rule:
    if raw is None:
        return DEFAULT_RULE
    if not isinstance(raw, dict):
        raise UserError(f"{where}: rule must be a table, e.g. rule = {{ alpha = 0.05, adjust = \"holm\" }}")
    if "every_seed" in raw:
        raise UserError(f"{where}: rule.every_seed is no longer a rule key: requiring every seed to share the sign "
                        "gets harder to meet as seeds are added; drop it (the seeds are reported anyway) or state "
                        "a fraction, e.g. seeds_fraction = 0.8")
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
    fraction = raw.get("seeds_fraction")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0 < fraction < 1):
        raise UserError(f"{where}: rule.seeds_fraction = {fraction!r} is not allowed; it must be a fraction in "
                        "(0, 1), e.g. 0.8 (a rule that every seed share the sign loses power as seeds are added)")
    stats = raw.get("statistics", list(DEFAULT_RULE.statistics))
    if (not isinstance(stats, list) or not stats or any(not isinstance(s, str) or s not in STAT_NAMES for s in stats)
            or len(set(stats)) != len(stats)):
        raise UserError(f"{where}: rule.statistics = {stats!r} is not allowed; list one or both of "
                        f"{', '.join(repr(s) for s, _ in STATISTICS)}")
    return Rule(float(alpha), adjust, None if fraction is None else float(fraction),
                tuple(s for s, _ in STATISTICS if s in stats))


def parse_delta(raw: object, where: str) -> float | None:
    """A claim's (or profile's) smallest effect that matters, in accuracy points; None: not stated."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw <= 0:
        raise UserError(f"{where}: delta = {raw!r} is not allowed; it must be a number of accuracy points > 0, "
                        "e.g. delta = 1.0 (the smallest effect that matters)")
    return float(raw)


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
        for key in ("name", "text"):
            problem = label_problem(c.get(key, ""))
            if problem:
                raise UserError(f"{where}: {key} = {c[key]!r} is not allowed ({problem}); it must be one line "
                                "without '|'")
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
        parse_delta(c.get("delta"), where)


def planned_seeds(spec: dict, profile: str | None) -> int:
    """The seeds a profile plans (what ``replicate`` runs without --seeds): its ``seeds``, else
    the spec's ``[study] seeds``, else 3."""
    p = (spec.get("profiles") or {}).get(profile) or {}
    return int(p.get("seeds") or (spec.get("study") or {}).get("seeds") or 3)


def profile_delta(spec: dict, profile: str | None) -> float | None:
    return ((spec.get("profiles") or {}).get(profile) or {}).get("delta")


def tests(study: Study) -> dict[str, dict]:
    """Every comparison ("a vs b") and contrast (its name) of the study, each as
    {statistic: {n, diff, std, low, high, p, p_holm, pos, neg, p_equiv, p_equiv_holm}} plus its
    family, its per-seed weights and its delta. ``p_equiv`` is the TOST p-value against +-delta
    (a claim's own ``delta``, else the profile's), Holm-adjusted within the family at each
    statistic like ``p_holm``; NaN where no delta is stated."""
    out = {}
    for _, r in study.paired.iterrows():
        out[f"{r['a']} vs {r['b']}"] = {"kind": "comparison", "family": r["family"],
                                        "weights": {r["a"]: 1.0, r["b"]: -1.0}, **{
            stat: _numbers(r, "" if stat == "final" else f"{stat}_", "diff_mean", "diff_std", "a_wins", "b_wins")
            for stat, _ in STATISTICS}}
    weights = {c["name"]: c["weights"] for c in study.spec.get("contrasts", [])}
    for _, r in study.contrasts.iterrows():
        if r["contrast"] in out:  # specs refuse this; a stored manifest's spec may not have been checked
            raise UserError(f"{study.folder}: contrast {r['contrast']!r} has a comparison's name; they share one "
                            "namespace: rename the contrast in the spec and rerun `mutualbench table`")
        out[r["contrast"]] = {"kind": "contrast", "family": r["family"], "weights": weights[r["contrast"]], **{
            stat: _numbers(r, "" if stat == "final" else f"{stat}_", "mean", "std", "seeds_positive",
                           "seeds_negative")
            for stat, _ in STATISTICS}}
    _equivalence(study, out)
    return out


def _equivalence(study: Study, found: dict[str, dict]) -> None:
    base = profile_delta(study.spec, study.manifest.get("profile"))
    own = {c.get("comparison") or c.get("contrast"): c.get("delta") for c in study.spec.get("claims", [])}
    for key, t in found.items():
        t["delta"] = own.get(key) or base
        for stat, _ in STATISTICS:
            t[stat]["p_equiv"] = (equivalence_p(seed_values(study.runs, t["weights"], stat), t["delta"])
                                  if t["delta"] else math.nan)
    families: dict[str, list[str]] = {}
    for key, t in found.items():
        families.setdefault(t["family"], []).append(key)
    for stat, _ in STATISTICS:
        for keys in families.values():
            for key, p in zip(keys, holm([found[k][stat]["p_equiv"] for k in keys]), strict=True):
                found[key][stat]["p_equiv_holm"] = p


def _numbers(r: pd.Series, pre: str, diff: str, std: str, pos: str, neg: str) -> dict:
    return {"n": int(r[f"{pre}n"]), "diff": float(r[f"{pre}{diff}"]), "std": float(r[f"{pre}{std}"]),
            "low": float(r[f"{pre}ci95_low"]), "high": float(r[f"{pre}ci95_high"]), "p": float(r[f"{pre}p_value"]),
            "p_holm": float(r[f"{pre}p_holm"]), "pos": int(r[f"{pre}{pos}"]), "neg": int(r[f"{pre}{neg}"])}


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
        if rule.seeds_fraction is not None and (t["pos"] if sign == "positive" else t["neg"]) < rule.seeds_fraction * t["n"]:
            signs.add(None)
            continue
        signs.add(sign)
    return signs.pop() if len(signs) == 1 and None not in signs else "not significant"


def equivalent(test: dict | None, rule: Rule = DEFAULT_RULE) -> bool:
    """Whether the test's mean lies within +-delta at every statistic of ``rule`` (TOST p,
    Holm-adjusted unless the rule says ``adjust = "none"``, below its alpha)."""
    if test is None:
        return False
    for stat in rule.statistics:
        t = test[stat]
        p = t.get("p_equiv_holm" if rule.adjust == "holm" else "p_equiv", math.nan)
        if t["n"] < 2 or math.isnan(p) or p >= rule.alpha:
            return False
    return True


def verdict(claim: dict, test: dict | None) -> str:
    rule = parse_rule(claim.get("rule"), claim["name"])
    o = outcome(test, rule)
    if o == "not computed":
        return "not run"
    if o != "not significant":
        return "supported" if o == claim["expect"] else "contradicted"
    return "negligible" if equivalent(test, rule) else "undecided"


def look(n: int, planned: int) -> str:
    """``final`` at (or past) the planned seeds, else ``interim``."""
    return "interim" if n < planned else "final"


CLAIM_COLUMNS = ["claim", "text", "test", "expect", "published", "verdict", "look", "achieved_n", "planned_n", "rule", "delta",
                 "n", "diff", "ci95_low", "ci95_high", "p_holm", "p_equiv_holm", "seeds_expected_sign", "last5_n",
                 "last5_diff", "last5_ci95_low", "last5_ci95_high", "last5_p_holm", "last5_p_equiv_holm",
                 "last5_seeds_expected_sign"]


def evaluate(study: Study, found: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per claim of the study's spec: its test's numbers at both statistics, the
    verdict, and whether this look is final (the profile's planned seeds reached by every
    statistic the rule names, in every test of the claim's Holm family) or interim. Empty when
    the spec states no claims."""
    found = tests(study) if found is None else found
    planned = planned_seeds(study.spec, study.manifest.get("profile"))
    rows = []
    for c in study.spec.get("claims", []):
        key = c.get("comparison") or c.get("contrast")
        t = found.get(key)
        if t is not None and t["kind"] != ("comparison" if "comparison" in c else "contrast"):
            t = None  # the claim names a comparison and finds a contrast of that name, or the reverse
        rule = parse_rule(c.get("rule"), c["name"])
        achieved = min((t[s]["n"] for s in rule.statistics), default=0) if t else 0
        # a seed whose run failed to train (the profile's rule) is run: it is out of the test, and
        # no other seed replaces it, so the look is final once the rest of the planned seeds are in;
        # and once every test of its Holm family is, since each one's adjusted p moves the others'
        family = [f for f in found.values() if f["family"] == t["family"]] if t else []
        reached = min((_reached(study, f, rule) for f in family), default=0)
        row = {"claim": c["name"], "text": c["text"], "test": key if "comparison" in c else f"contrast {key}",
               "expect": c["expect"], "published": c.get("published", ""), "verdict": verdict(c, t),
               "look": look(reached, planned), "achieved_n": achieved, "planned_n": planned,
               "rule": rule.describe(), "delta": t["delta"] if t and t["delta"] else math.nan}
        for stat, _ in STATISTICS:
            pre = "" if stat == "final" else f"{stat}_"
            n = t[stat] if t else None
            row.update({f"{pre}n": n["n"] if n else 0, f"{pre}diff": n["diff"] if n else math.nan,
                        f"{pre}ci95_low": n["low"] if n else math.nan, f"{pre}ci95_high": n["high"] if n else math.nan,
                        f"{pre}p_holm": n["p_holm"] if n else math.nan,
                        f"{pre}p_equiv_holm": n.get("p_equiv_holm", math.nan) if n else math.nan,
                        f"{pre}seeds_expected_sign": (n["pos"] if c["expect"] == "positive" else n["neg"]) if n else 0})
        rows.append(row)
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def _reached(study: Study, t: dict, rule) -> int:
    """The seeds a test has at the statistics ``rule`` names, counting those whose run failed to
    train (they are run, and out of the test)."""
    return min(t[s]["n"] for s in rule.statistics) + len(study.failed_seeds(t["weights"]))


def _cell(r: pd.Series, pre: str) -> str:
    n = int(r[f"{pre}n"])
    if n == 0 or math.isnan(r[f"{pre}diff"]):
        return "not run"
    d = f"{r[f'{pre}diff']:+.2f}"
    if n < 2:
        return f"{d} (n = 1)"
    p = r[f"{pre}p_holm"]
    p_text = "" if math.isnan(p) else f", p_Holm {_p(p)}"
    e = r.get(f"{pre}p_equiv_holm", math.nan)
    e_text = "" if e is None or math.isnan(e) else f", equivalence p_Holm {_p(e)}"
    return (f"{d} [{r[f'{pre}ci95_low']:+.2f}, {r[f'{pre}ci95_high']:+.2f}]{p_text}{e_text}, "
            f"{int(r[f'{pre}seeds_expected_sign'])}/{n}")


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def verdict_text(r: pd.Series, bold: bool = False) -> str:
    """The verdict as the report shows it: an interim look says so first, with its n of the
    planned, so that it cannot be read as the decision."""
    v = f"**{r['verdict']}**" if bold else r["verdict"]
    planned = r.get("planned_n", math.nan)
    if r.get("look") != "interim" or planned is None or math.isnan(planned):
        return v
    if r["achieved_n"] >= planned:  # its own test is complete, another of its Holm family is not
        return f"interim, n = {int(planned)} but its Holm family incomplete: {v} so far"
    return f"interim, n = {int(r['achieved_n'])} of {int(planned)}: {v} so far"


def markdown(frames: dict[str, pd.DataFrame]) -> str:
    """The claims table of one or more profiles (``{profile: evaluate(study)}``, the primary
    profile first): each claim, the source's number, the primary profile's difference with its
    95% CI, Holm-adjusted p (of the difference, and of equivalence within +-delta) and seeds of
    the claimed sign at both statistics, its verdict (labelled interim before the planned
    seeds), and each other profile's numbers and verdict."""
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
               verdict_text(r, bold=True)]
        for f in others.values():
            if r["claim"] in f.index:
                o = f.loc[r["claim"]]
                row.append(f"{_cell(o, '')}; {_cell(o, 'last5_')}; {verdict_text(o)}")
            else:
                row.append("—")
        rows.append(row)
    rules = sorted(set(primary["rule"]))
    deltas = sorted({f"{d:g}" for f in frames.values() if not f.empty for d in f["delta"] if not math.isnan(d)})
    lines = [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), "",
             "Each cell: difference in accuracy points [95% t-interval], Holm-adjusted p within the test's "
             "family, Holm-adjusted p of equivalence within ±delta (two one-sided tests) where a delta is stated, "
             "seeds with the claimed sign (reported, not required). A claim is supported when its test meets "
             "the rule (" + "; ".join(rules) + "), contradicted when it meets it in the other direction, "
             "negligible when it meets neither and is equivalent within ±delta at every statistic "
             f"(delta: {' or '.join(deltas) + (' point' if deltas == ['1'] else ' points') if deltas else 'none stated, so never'}), undecided "
             "otherwise. A look is interim until every test of the claim's Holm family has the seeds the profile "
             "plans: the claims are decided at the planned n only, so an interim verdict is information, not a "
             "decision."]
    return "\n".join(lines) + "\n"
