"""The statistics behind tables, claims and `compare`, against hand-computed numbers: the
last-5 mean, Holm's adjustment within families, the agreement of the two statistics, claim
verdicts, and the Welch / prediction intervals of the statistical compare."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as sps

from mutualbench.analysis.claims import Rule, check_claims, evaluate, outcome
from mutualbench.analysis.compare import compare_studies
from mutualbench.analysis.results import (
    last_epochs_mean,
    linear_contrasts,
    load_study,
    paired_comparisons,
)
from mutualbench.analysis.stats import consistency, holm, welch
from mutualbench.cli import main
from mutualbench.core.errors import UserError

ENV = {"device": "CPU: AMD EPYC 7B13 (2 threads)",
       "cpu": {"model": "AMD EPYC 7B13", "isa": "AVX2", "bf16_native": False, "bf16_flags": [], "threads": 2}}


def curve(final_stage: list[float], hint: int = 0) -> list[dict]:
    """Curves of a one-model run: ``hint`` epochs of a hint stage at 10%, then the final stage."""
    accs = [("hint", 10.0)] * hint + [("train", a) for a in final_stage]
    return [{"epoch": i + 1, "stage": s, "test_acc": {"model": a}} for i, (s, a) in enumerate(accs)]


def fake_study(folder: Path, arms: dict[str, list[list[float]]], spec_extra: dict | None = None,
               tolerance: float = 0.5) -> Path:
    """A study folder: per arm, one complete one-model record per seed whose curve is the given
    accuracies (the final accuracy is the last one)."""
    runs = []
    (folder / "runs").mkdir(parents=True)
    for arm, seeds in arms.items():
        for seed, accs in enumerate(seeds):
            rid = f"individual-{arm}{seed:04d}"
            runs.append({"run_id": rid, "arm": arm, "method": "individual", "seed": seed, "ablation": None,
                         "value": None})
            record = {"schema": 1, "run_id": rid, "status": "complete", "seed": seed, "data": {},
                      "curves": curve(accs), "config": {"method": "individual"}, "timings": {"train_s": 1.0},
                      "env": ENV, "models": {"model": {"role": "individual", "arch": "seed_vgg_student", "params": 1,
                                                       "final_test_acc": accs[-1],
                                                       "best_test_acc_test_selected": max(accs)}}}
            (folder / "runs" / f"{rid}.json").write_text(json.dumps(record))
    spec = {"arms": [{"name": a} for a in arms], "profiles": {"cpu": {"tolerance": tolerance}}, **(spec_extra or {})}
    spec.setdefault("study", {"name": "fake"})
    manifest = {"spec": spec, "profile": "cpu", "runs": runs, "seeds": sorted({r["seed"] for r in runs}),
                "data": {"name": "synthetic", "sha256": "0" * 64}}
    (folder / "study.json").write_text(json.dumps(manifest))
    return folder


# -- the last-5 mean -------------------------------------------------------------------------------

def test_last_5_mean_is_the_mean_of_the_final_stages_last_five_epochs():
    c = curve([50.0, 60.0, 61.0, 62.0, 63.0, 64.0, 70.0], hint=3)
    assert last_epochs_mean(c, "model") == pytest.approx((62 + 63 + 64 + 70 + 61) / 5)
    # the hint stage never counts: four epochs of the final stage are not five
    assert math.isnan(last_epochs_mean(curve([60.0, 61.0, 62.0, 63.0], hint=3), "model"))
    assert math.isnan(last_epochs_mean([], "model"))


# -- Holm ------------------------------------------------------------------------------------------

def test_holm_by_hand_and_not_computed_tests_do_not_count():
    # sorted 0.01, 0.03, 0.04, 0.20 times 4, 3, 2, 1 = 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.20
    assert holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    out = holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def frame(acc: dict[str, list[float]], last5: dict[str, list[float]] | None = None) -> pd.DataFrame:
    rows = []
    for arm, values in acc.items():
        for seed, v in enumerate(values):
            rows.append({"ablation": "main", "value": "", "arm": arm, "member": "model", "seed": seed,
                         "run_id": f"{arm}{seed}", "final_acc": v,
                         "last5_acc": (last5 or acc)[arm][seed], "machine": "m"})
    return pd.DataFrame(rows)


def test_comparisons_holm_within_their_family_at_both_statistics():
    df = frame({"a": [60.0, 62.0, 61.0], "b": [50.0, 53.0, 50.5], "c": [59.0, 62.5, 60.0], "d": [55.0, 55.5, 57.0]},
               last5={"a": [60.0, 61.0, 62.0], "b": [61.0, 61.5, 62.5], "c": [59.0, 62.5, 60.0],
                      "d": [55.0, 55.5, 57.0]})
    comps = [{"a": "a", "b": "b", "family": "f1"}, {"a": "a", "b": "c", "family": "f1"},
             {"a": "a", "b": "d"}]
    out = paired_comparisons(df, comps).set_index(["a", "b"])
    raw = {k: sps.ttest_rel(df[df.arm == k[0]].final_acc.values, df[df.arm == k[1]].final_acc.values).pvalue
           for k in [("a", "b"), ("a", "c"), ("a", "d")]}
    lo, hi = sorted([raw[("a", "b")], raw[("a", "c")]])
    adj = {p: None for p in (lo, hi)}
    adj[lo] = min(1.0, 2 * lo)
    adj[hi] = min(1.0, max(adj[lo], hi))
    assert out.loc[("a", "b"), "p_holm"] == pytest.approx(adj[raw[("a", "b")]])
    assert out.loc[("a", "c"), "p_holm"] == pytest.approx(adj[raw[("a", "c")]])
    # alone in the default family: its Holm p is its raw p
    assert out.loc[("a", "d"), "family"] == "comparisons"
    assert out.loc[("a", "d"), "p_holm"] == pytest.approx(raw[("a", "d")])
    # a - b by hand at the last-5 mean: -1.0, -0.5, -0.5 -> mean -2/3; the final epoch says +9.83
    assert out.loc[("a", "b"), "last5_diff_mean"] == pytest.approx(-2 / 3)
    assert out.loc[("a", "b"), "diff_mean"] == pytest.approx((10 + 9 + 10.5) / 3)
    assert out.loc[("a", "b"), "statistics"] == "sign differs"
    assert out.loc[("a", "b"), "last5_b_wins"] == 3


def test_a_comparison_outside_the_profile_is_not_a_test_and_pending_ones_stay_pending():
    df = frame({"a": [60.0, 62.0], "b": [50.0, 53.0]})
    out = paired_comparisons(df, [{"a": "a", "b": "b"}, {"a": "a", "b": "z"}, {"a": "a", "b": "y"}],
                             arms={"a", "b", "y"})
    assert out[["a", "b"]].values.tolist() == [["a", "b"], ["a", "y"]]
    assert out.iloc[1]["n"] == 0 and math.isnan(out.iloc[1]["p_holm"])
    # the pending test does not enlarge the family: the computed one keeps its raw p
    assert out.iloc[0]["p_holm"] == pytest.approx(out.iloc[0]["p_value"])


def test_contrasts_get_the_last_5_mean_and_holm():
    df = frame({"a": [60.0, 62.0, 61.0], "b": [50.0, 53.0, 50.5]},
               last5={"a": [60.0, 61.0, 62.0], "b": [59.0, 60.5, 60.0]})
    out = linear_contrasts(df, [{"name": "ab", "weights": {"a": 1, "b": -1}},
                                {"name": "ba", "weights": {"a": -1, "b": 1}, "family": "other"}])
    row = out.set_index("contrast").loc["ab"]
    assert row["last5_mean"] == pytest.approx((1.0 + 0.5 + 2.0) / 3)
    assert row["last5_seeds_positive"] == 3
    # two contrasts in two families: each its own family of one
    assert row["p_holm"] == pytest.approx(row["p_value"])
    assert out.set_index("contrast").loc["ba", "seeds_negative"] == 3


# -- claims ----------------------------------------------------------------------------------------

def numbers(diff, n=3, p=0.01, pos=3, neg=0):
    t = {"n": n, "diff": diff, "low": diff - 1, "high": diff + 1, "p": p, "p_holm": p, "pos": pos, "neg": neg}
    return {"final": t, "last5": dict(t)}


def test_outcome_needs_significance_at_both_statistics_not_every_seed():
    assert outcome(numbers(2.0)) == "positive"
    assert outcome(numbers(-2.0, pos=0, neg=3)) == "negative"
    assert outcome(numbers(2.0, p=0.2)) == "not significant"
    assert outcome(numbers(2.0, pos=2, neg=1)) == "positive"  # one seed the other way: reported, not required
    assert outcome(numbers(2.0, pos=2, neg=1), Rule(seeds_fraction=0.8)) == "not significant"  # 2/3 < 0.8
    assert outcome(numbers(2.0, pos=2, neg=1), Rule(seeds_fraction=0.6)) == "positive"
    t = numbers(2.0)
    t["last5"]["p_holm"] = 0.3
    assert outcome(t) == "not significant"
    assert outcome(t, Rule(statistics=("final",))) == "positive"
    assert outcome(numbers(2.0, n=1)) == "not computed" and outcome(None) == "not computed"


def claims_spec():
    return {"comparisons": [{"a": "a", "b": "b"}, {"a": "a", "b": "c"}],
            "contrasts": [{"name": "ab", "weights": {"a": 1, "b": -1}}],
            "claims": [{"name": "a_beats_b", "text": "a beats b", "comparison": "a vs b", "expect": "positive",
                        "published": "+5"},
                       {"name": "b_beats_a", "text": "b beats a", "contrast": "ab", "expect": "negative"},
                       {"name": "a_beats_c", "text": "a beats c", "comparison": "a vs c", "expect": "positive"}]}


def test_claim_verdicts_from_records(tmp_path):
    folder = fake_study(tmp_path / "s", {
        "a": [[60, 61, 62, 63, 64], [61, 62, 63, 64, 66], [59, 60, 61, 62, 63]],
        "b": [[50, 51, 52, 53, 54], [50, 50, 51, 52, 53], [49, 50, 51, 52, 52]],
        "c": [[60, 61, 62, 63, 65], [61, 62, 63, 64, 64], [59, 60, 61, 62, 64]]}, claims_spec())
    out = evaluate(load_study(folder)).set_index("claim")
    assert out.loc["a_beats_b", "verdict"] == "supported"
    assert out.loc["b_beats_a", "verdict"] == "contradicted"
    assert out.loc["a_beats_c", "verdict"] == "undecided"
    assert out.loc["a_beats_b", "diff"] == pytest.approx((10 + 13 + 11) / 3)
    assert out.loc["a_beats_b", "last5_diff"] == pytest.approx(((62 - 52) + (63.2 - 51.2) + (61 - 50.8)) / 3)
    assert out.loc["a_beats_b", "published"] == "+5"
    # the claims table is part of table.md and claims.csv
    assert main(["table", str(folder)]) == 0
    assert "## Claims" in (folder / "table.md").read_text()
    assert (folder / "claims.csv").read_text().count("\n") == 4


@pytest.mark.parametrize("change, message", [
    (lambda s: s["claims"][0].update(comparison="a vs z"), "comparison = 'a vs z' is not one of the spec's"),
    (lambda s: s["claims"][1].update(contrast="zz"), "contrast = 'zz' is not one of the spec's"),
    (lambda s: s["claims"][0].update(expect="up"), "expect = 'up' is not allowed"),
    (lambda s: s["claims"][1].update(name="a_beats_b"), "claim name 'a_beats_b' is used twice"),
    (lambda s: s["claims"][0].update(contrast="ab"), "name exactly one test"),
    (lambda s: s["claims"][0].update(rule={"alpha": 2}), "rule.alpha = 2 is not allowed"),
    (lambda s: s["claims"][0].update(rule={"statistics": ["best"]}), "rule.statistics = ['best'] is not allowed"),
    (lambda s: s["claims"][0].update(colour=1), "unknown key(s) colour"),
])
def test_bad_claims_are_one_line_errors(change, message):
    spec = claims_spec()
    change(spec)
    with pytest.raises(UserError, match=None) as e:
        check_claims(spec, Path("s.toml"))
    assert message in str(e.value) and "\n" not in str(e.value)


# -- the statistical compare -----------------------------------------------------------------------

def test_welch_interval_by_hand():
    new, stored = pd.Series([1.0, 2.0, 3.0]), pd.Series([2.0, 4.0, 6.0])
    w = welch(new, stored)
    se2 = 1 / 3 + 4 / 3
    dof = se2 ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)
    half = sps.t.ppf(0.975, dof) * math.sqrt(se2)
    assert w["diff"] == pytest.approx(-2.0) and w["how"] == "welch"
    assert (w["ci95_low"], w["ci95_high"]) == pytest.approx((-2 - half, -2 + half))


def test_one_new_seed_is_judged_against_the_stored_spread():
    stored = pd.Series([70.0, 72.0, 74.0])  # s = 2
    half = sps.t.ppf(0.975, 2) * 2 * math.sqrt(1 + 1 / 3)  # 9.94
    w = welch(pd.Series([80.0]), stored)
    assert w["how"] == "prediction" and (w["ci95_low"], w["ci95_high"]) == pytest.approx((8 - half, 8 + half))
    assert consistency(w, 0.5) == "consistent"
    assert consistency(welch(pd.Series([90.0]), stored), 0.5) == "differs"
    # a detectable difference smaller than the tolerance does not matter
    tight = welch(pd.Series([72.5, 72.6, 72.7]), pd.Series([72.0, 72.1, 72.2]))
    assert tight["ci95_low"] > 0 and consistency(tight, 1.0) == "consistent"
    assert consistency(tight, 0.1) == "differs"
    # one seed on each side: no spread, only the tolerance decides
    one = welch(pd.Series([73.0]), pd.Series([72.0]))
    assert one["how"] == "no spread" and consistency(one, 0.5) == "differs" and consistency(one, 2.0) == "consistent"


def arms_with(shift: float, seeds: int = 3):
    base = {"a": [60, 61, 62, 63, 64], "b": [50, 51, 52, 53, 54]}
    noise = {"a": [0.0, 0.7, -0.6], "b": [0.2, -0.4, 0.5]}
    return {arm: [[x + shift * (arm == "a") + noise[arm][s] for x in accs] for s in range(seeds)]
            for arm, accs in base.items()}


def test_compare_reports_per_row_consistency_and_claims_reproduced(tmp_path, capsys):
    spec = {"comparisons": [{"a": "a", "b": "b"}],
            "claims": [{"name": "a_beats_b", "text": "a beats b", "comparison": "a vs b", "expect": "positive"}]}
    stored = fake_study(tmp_path / "stored", arms_with(0.0), spec, tolerance=1.0)
    same = fake_study(tmp_path / "same", arms_with(0.3), spec)
    assert main(["compare", str(same), "--against", str(stored)]) == 0
    out = capsys.readouterr().out
    assert "seeds: here 0, 1, 2; stored 0, 1, 2" in out
    assert "consistent: 2 of 2 arm/member rows consistent with the stored seeds" in out
    assert "claims reproduced: 1 of 1" in out
    # a lost to b: a differs, and the claim is not reproduced
    worse = fake_study(tmp_path / "worse", arms_with(-20.0), spec)
    assert main(["compare", str(worse), "--against", str(stored)]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT: 1 of 2 arm/member rows consistent" in out
    assert "claims reproduced: 0 of 1; not reproduced: a vs b (stored: positive; here: negative)" in out
    result = compare_studies(worse, stored)
    row = result.rows.set_index("arm").loc["a"]
    assert row["final_diff"] == pytest.approx(-20.0) and row["final_verdict"] == "differs"


def test_compare_of_one_new_seed_says_so(tmp_path, capsys):
    spec = {"comparisons": [{"a": "a", "b": "b"}]}
    stored = fake_study(tmp_path / "stored", arms_with(0.0), spec)
    one = fake_study(tmp_path / "one", arms_with(0.0, seeds=1), spec)
    assert main(["compare", str(one), "--against", str(stored)]) == 0
    out = capsys.readouterr().out
    assert "| 1 / 3" in out and "prediction interval for one more run" in out
    # the stored claim cannot be tested on one seed: not counted, and the line says why
    assert "claims reproduced: 0 of 0; not testable on these runs: a vs b (1 seed here; a test needs 2)" in out
