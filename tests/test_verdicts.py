"""Verdicts that can settle: the default rule's power grows with seeds, the "negligible"
verdict (TOST against the smallest effect that matters), interim looks before the planned
seeds, and ``mutualbench plan`` (power figures and the order of the missing runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from mutualbench.analysis.claims import (
    Rule,
    check_claims,
    evaluate,
    markdown,
    outcome,
    parse_rule,
    verdict,
)
from mutualbench.analysis.results import load_study
from mutualbench.analysis.stats import equivalence_p, holm, power, seeds_for_power
from mutualbench.cli import main
from mutualbench.core.errors import UserError
from mutualbench.training.estimate import RunTimer

ROOT = Path(__file__).resolve().parents[1]
# a kind of machine no test runs on: its records were made elsewhere
ENV = {"device": "CPU: Made-up CPU 9000 (2 threads)",
       "cpu": {"model": "Made-up CPU 9000", "isa": "AVX2", "bf16_native": False, "bf16_flags": [], "threads": 2}}


# -- the rule ---------------------------------------------------------------------------------------

def holm_rows(p: np.ndarray) -> np.ndarray:
    """Holm's adjusted p-values of every row of ``p`` at once (each row one family)."""
    m = p.shape[-1]
    order = np.argsort(p, axis=-1)
    ranked = np.take_along_axis(p, order, axis=-1) * (m - np.arange(m))
    adjusted = np.minimum(np.maximum.accumulate(ranked, axis=-1), 1.0)
    out = np.empty_like(p)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return out


def simulated_tests(n: int, sims: int = 400, effect: float = 0.9, sd: float = 0.6, others: int = 5) -> list[dict]:
    """``sims`` studies of ``n`` seeds: a true effect (mean ``effect``, seed sd ``sd``) tested in
    a family with ``others`` null tests (Holm within it) at both statistics (the last-5 mean a
    noisy copy of the final epoch); the effect's test of each study, as ``claims.outcome`` reads it."""
    rng = np.random.default_rng(1234)
    final = rng.normal(0.0, sd, size=(sims, others + 1, n))
    final[:, 0] += effect
    values = {"final": final, "last5": final + rng.normal(0.0, sd / 2, size=final.shape)}
    p, adj = {}, {}
    for stat, v in values.items():  # the one-sample t-test of every test of every study at once
        t = v.mean(axis=2) / (v.std(axis=2, ddof=1) / math.sqrt(n))
        p[stat] = 2 * sps.t.sf(np.abs(t), n - 1)
        adj[stat] = holm_rows(p[stat])
    assert np.allclose(adj["final"][:3], [holm(row) for row in p["final"][:3]])  # the suite's own Holm
    return [{stat: {"n": n, "diff": float(v[i, 0].mean()), "p": float(p[stat][i, 0]), "p_holm": float(adj[stat][i, 0]),
                    "pos": int((v[i, 0] > 0).sum()), "neg": int((v[i, 0] < 0).sum())} for stat, v in values.items()}
            for i in range(sims)]


def test_the_default_rule_gains_power_with_seeds_where_every_seed_loses_it():
    # a real effect the size of the peer's given the hints at full scale (+0.9 points), in a
    # family of six tests like the blog's contrasts
    ns = (3, 5, 8, 12, 20)
    default, every = [], []
    for n in ns:
        studies = simulated_tests(n)
        default.append(np.mean([outcome(t, Rule()) == "positive" for t in studies]))
        # the rule it replaces ("every seed the same sign")
        every.append(np.mean([outcome(t, Rule(seeds_fraction=1.0)) == "positive" for t in studies]))
    assert all(a < b for a, b in zip(default, default[1:], strict=False)), default
    assert default[-1] > 0.95
    # the every-seed rule peaks, then falls as seeds are added, far below the default's power
    assert max(every) > every[-1] + 0.2 and every[-1] < default[-1] / 3, (every, default)


def test_a_rule_may_ask_for_a_fraction_of_seeds_never_every_seed():
    assert parse_rule({"seeds_fraction": 0.8}, "c").seeds_fraction == 0.8
    assert parse_rule(None, "c") == Rule() and Rule().seeds_fraction is None
    for raw, message in (({"every_seed": True}, "rule.every_seed is no longer a rule key"),
                         ({"seeds_fraction": 1.0}, "rule.seeds_fraction = 1.0 is not allowed"),
                         ({"seeds_fraction": 0}, "rule.seeds_fraction = 0 is not allowed"),
                         ({"seeds_fraction": True}, "rule.seeds_fraction = True is not allowed")):
        with pytest.raises(UserError) as e:
            parse_rule(raw, "c")
        assert message in str(e.value) and "\n" not in str(e.value)
    assert "every seed" not in Rule().describe()
    assert Rule().describe() == ("Holm-adjusted p < 0.05 in the claimed direction, at the final epoch and the "
                                 "last-5 mean")


# -- equivalence and the negligible verdict ---------------------------------------------------------

def test_tost_against_a_hand_computed_case():
    # values 0.1, 0.3, -0.2: mean 1/15, sd 0.251661, se 0.145297; against +-1 point:
    # t_low = (1/15 + 1) / se = 7.3414, p = P(T2 > 7.3414) = 0.0090269;
    # t_up = (1/15 - 1) / se = -6.4237, p = P(T2 < -6.4237) = 0.0116939; TOST p is the larger
    assert equivalence_p([0.1, 0.3, -0.2], 1.0) == pytest.approx(0.0116939, abs=1e-6)
    # a band narrower than the spread: not equivalent
    assert equivalence_p([0.1, 0.3, -0.2], 0.1) > 0.3
    assert math.isnan(equivalence_p([0.5], 1.0)) and math.isnan(equivalence_p([0.2, 0.2], 1.0))
    assert math.isnan(equivalence_p([0.1, 0.3], None))


def numbers(diff, p=0.5, p_equiv=0.01, n=3, pos=3, neg=0):
    t = {"n": n, "diff": diff, "std": 0.2, "low": diff - 1, "high": diff + 1, "p": p, "p_holm": p, "pos": pos,
         "neg": neg, "p_equiv": p_equiv, "p_equiv_holm": p_equiv}
    return {"final": t, "last5": dict(t)}


CLAIM = {"name": "c", "text": "a beats b", "comparison": "a vs b", "expect": "positive"}


def test_verdicts_supported_contradicted_negligible_undecided():
    assert verdict(CLAIM, numbers(2.0, p=0.01, p_equiv=0.9)) == "supported"
    assert verdict(CLAIM, numbers(-2.0, p=0.01, p_equiv=0.9, pos=0, neg=3)) == "contradicted"
    assert verdict(CLAIM, numbers(0.1, p=0.6, p_equiv=0.01)) == "negligible"
    assert verdict(CLAIM, numbers(0.1, p=0.6, p_equiv=0.2)) == "undecided"
    # equivalent at one statistic only: undecided
    t = numbers(0.1, p=0.6, p_equiv=0.01)
    t["last5"]["p_equiv_holm"] = 0.07
    assert verdict(CLAIM, t) == "undecided"
    assert verdict(dict(CLAIM, rule={"statistics": ["final"]}), t) == "negligible"
    # no delta stated: no equivalence p, never negligible
    assert verdict(CLAIM, numbers(0.1, p=0.6, p_equiv=math.nan)) == "undecided"
    assert verdict(CLAIM, None) == "not run"


def fake_study(folder: Path, arms: dict[str, list[float]], spec_extra: dict, profile: dict) -> Path:
    """A study folder: per arm, one complete one-model record per seed with these final
    accuracies (flat curves of 5 epochs, so the last-5 mean equals the final epoch)."""
    runs = []
    (folder / "runs").mkdir(parents=True)
    for arm, accs in arms.items():
        for seed, acc in enumerate(accs):
            rid = f"individual-{arm}{seed:04d}"
            runs.append({"run_id": rid, "arm": arm, "method": "individual", "seed": seed, "ablation": None,
                         "value": None})
            record = {"schema": 1, "run_id": rid, "status": "complete", "seed": seed, "data": {},
                      "curves": [{"epoch": e, "stage": "train", "test_acc": {"model": acc}} for e in range(1, 6)],
                      "config": {"method": "individual"}, "timings": {"train_s": 1.0}, "env": ENV,
                      "models": {"model": {"role": "individual", "arch": "seed_vgg_student", "params": 1,
                                           "final_test_acc": acc, "best_test_acc_test_selected": acc}}}
            (folder / "runs" / f"{rid}.json").write_text(json.dumps(record))
    spec = {"study": {"name": "fake"}, "arms": [{"name": a} for a in arms],
            "profiles": {"cpu": {"tolerance": 0.5, **profile}}, **spec_extra}
    manifest = {"spec": spec, "profile": "cpu", "runs": runs, "seeds": sorted({r["seed"] for r in runs}),
                "data": {"name": "synthetic", "sha256": "0" * 64}}
    (folder / "study.json").write_text(json.dumps(manifest))
    return folder


SPEC = {"comparisons": [{"a": "a", "b": "b"}, {"a": "a", "b": "c"}],
        "claims": [{"name": "a_beats_b", "text": "a beats b", "comparison": "a vs b", "expect": "positive"},
                   {"name": "a_beats_c", "text": "a beats c", "comparison": "a vs c", "expect": "positive"}]}
ACCS = {"a": [60.0, 61.0, 62.0, 60.5], "b": [60.1, 60.8, 62.2, 60.4], "c": [50.0, 52.0, 51.0, 50.5]}


def test_negligible_and_interim_from_records(tmp_path):
    check_claims(dict(SPEC, claims=[dict(SPEC["claims"][0], delta=0.5)]), Path("s.toml"))
    folder = fake_study(tmp_path / "s", ACCS, SPEC, {"delta": 1.0, "seeds": 5})
    out = evaluate(load_study(folder)).set_index("claim")
    # a - b per seed: -0.1, 0.2, -0.2, 0.1 (mean 0, sd 0.1826): inside +-1 with TOST p far below 0.05
    diffs = np.array([-0.1, 0.2, -0.2, 0.1])
    se = diffs.std(ddof=1) / 2
    p_tost = max(sps.t.sf((diffs.mean() + 1) / se, 3), sps.t.cdf((diffs.mean() - 1) / se, 3))
    # Holm over the family's two equivalence p-values: a vs c (+10) is nowhere near equivalent
    assert out.loc["a_beats_b", "p_equiv_holm"] == pytest.approx(2 * p_tost, rel=1e-9)
    assert out.loc["a_beats_b", "verdict"] == "negligible"
    assert out.loc["a_beats_c", "verdict"] == "supported"
    assert (out["look"] == "interim").all() and (out["achieved_n"] == 4).all() and (out["planned_n"] == 5).all()
    text = markdown({"cpu": evaluate(load_study(folder))})
    assert "interim, n = 4 of 5: **negligible** so far" in text
    assert "interim, n = 4 of 5: **supported** so far" in text
    assert "delta: 1 point" in text
    assert main(["table", str(folder)]) == 0
    header = (folder / "claims.csv").read_text().splitlines()[0].split(",")
    assert {"verdict", "look", "achieved_n", "planned_n", "delta", "p_equiv_holm", "last5_p_equiv_holm"} <= set(header)


def test_a_look_at_the_planned_seeds_is_final_and_a_claims_own_delta_wins(tmp_path):
    spec = dict(SPEC, claims=[dict(SPEC["claims"][0], delta=0.1), SPEC["claims"][1]])
    folder = fake_study(tmp_path / "s", ACCS, spec, {"delta": 1.0, "seeds": 4})
    out = evaluate(load_study(folder)).set_index("claim")
    assert (out["look"] == "final").all()
    assert out.loc["a_beats_b", "delta"] == 0.1 and out.loc["a_beats_c", "delta"] == 1.0
    assert out.loc["a_beats_b", "verdict"] == "undecided"  # +-0.1 is narrower than the seeds' spread
    table = markdown({"cpu": evaluate(load_study(folder))}).split("\n\n")[0]
    assert "interim" not in table and "| **supported** |" in table.replace("  ", "")


def test_a_claim_is_interim_while_another_test_of_its_holm_family_lacks_seeds(tmp_path):
    """a vs b has the planned 4 seeds, a vs c (the same family) 3: a vs c's p-value still moves
    a vs b's Holm adjustment, so a_beats_b is interim too, and says why."""
    accs = dict(ACCS, c=ACCS["c"][:3])
    folder = fake_study(tmp_path / "s", accs, SPEC, {"delta": 1.0, "seeds": 4})
    out = evaluate(load_study(folder)).set_index("claim")
    assert (out["look"] == "interim").all() and out.loc["a_beats_b", "achieved_n"] == 4
    text = markdown({"cpu": evaluate(load_study(folder))})
    assert "interim, n = 4 but its Holm family incomplete: **negligible** so far" in text
    assert "interim, n = 3 of 4: **supported** so far" in text
    # another family's missing seeds do not hold a claim back
    spec = dict(SPEC, comparisons=[{"a": "a", "b": "b"}, {"a": "a", "b": "c", "family": "other"}])
    out = evaluate(load_study(fake_study(tmp_path / "t", accs, spec, {"delta": 1.0, "seeds": 4}))).set_index("claim")
    assert out.loc["a_beats_b", "look"] == "final" and out.loc["a_beats_c", "look"] == "interim"


def test_a_profile_without_delta_never_reads_negligible(tmp_path):
    folder = fake_study(tmp_path / "s", ACCS, SPEC, {})
    out = evaluate(load_study(folder)).set_index("claim")
    assert out.loc["a_beats_b", "verdict"] == "undecided" and math.isnan(out.loc["a_beats_b", "p_equiv_holm"])


# -- power ------------------------------------------------------------------------------------------

def test_power_against_a_hand_computed_noncentral_t():
    # effect 1, sd 1, n 5: t crit = t(0.975, 4) = 2.776445, noncentrality sqrt(5) = 2.236068,
    # power = P(T'(4, 2.236068) > 2.776445) = 0.401320
    assert power(1.0, 1.0, 5) == pytest.approx(0.4013203, abs=1e-6)
    assert power(-1.0, 1.0, 5) == power(1.0, 1.0, 5)
    # 80%: reached at 10 seeds (0.8031), not at 9 (0.7480)
    assert power(1.0, 1.0, 9) == pytest.approx(0.7480155, abs=1e-6)
    assert seeds_for_power(1.0, 1.0) == 10
    assert seeds_for_power(1.0, 1.0, alpha=0.05 / 3) > 10
    assert seeds_for_power(0.0, 1.0) is None and seeds_for_power(1.0, 0.0) is None


# -- the plan ---------------------------------------------------------------------------------------

def smoke_study(folder: Path, complete: dict[str, list[int]]) -> Path:
    """A seed_blog/smoke study folder with fake complete records (made on ENV's machine) for
    the given arms and seeds, under the run ids the spec gives them."""
    from mutualbench.core.config import run_id
    from mutualbench.methods import get_method
    from mutualbench.studies.spec import expand, load_spec
    from mutualbench.training.run import resolve

    spec = load_spec(ROOT / "replication" / "seed_blog.toml")
    sha = "f" * 64
    (folder / "runs").mkdir(parents=True)
    runs = []
    for p in expand(spec, "smoke", [0, 1], spec.data, False):
        resolved = resolve(p.config)
        rid = run_id(resolved, sha)
        runs.append({"arm": p.arm, "seed": p.seed, "ablation": None, "value": None, "run_id": rid,
                     "method": resolved["method"]})
        if p.seed not in complete.get(p.arm, []):
            continue
        acc = 20.0 + len(p.arm) + p.seed
        members = get_method(resolved["method"]).member_names(resolved)  # every model the run records
        record = {"schema": 1, "run_id": rid, "status": "complete", "seed": p.seed, "data": {},
                  "curves": [{"epoch": e, "stage": "train", "test_acc": {m: acc for m in members}, "train_s": 10.0,
                              "eval_s": 1.0} for e in range(1, 4)],
                  "stages": [{"name": "train", "epochs": 3}],
                  "config": resolved, "timings": {"train_s": 30.0, "eval_s": 3.0}, "env": ENV,
                  "models": {m: {"role": "individual", "arch": "seed_vgg_student", "params": 1,
                                 "final_test_acc": acc, "best_test_acc_test_selected": acc} for m in members}}
        (folder / "runs" / f"{rid}.json").write_text(json.dumps(record))
    manifest = {"schema": 1, "spec_path": str(spec.path), "spec": spec.raw, "profile": "smoke", "seeds": [0, 1],
                "runs": runs, "data": {"name": "cifar10", "sha256": sha}}
    (folder / "study.json").write_text(json.dumps(manifest))
    return folder


def test_plan_orders_the_runs_that_complete_claims_first(tmp_path, capsys):
    from mutualbench.studies.planning import missing_runs

    every = ["teacher", "student", "student_dml_optimizer", "dml", "hint_dml", "kd"]
    folder = smoke_study(tmp_path / "smoke", {**{a: [0] for a in every}, "teacher": [0, 1], "student": [0, 1]})
    planned, runs = missing_runs(load_study(folder), ROOT / "replication" / "seed_blog.toml",
                                 data="/data/cifar copy.tar.gz")
    assert planned == 2
    # seed 1: DML completes "dml beats student"; then hint+DML completes two claims at once;
    # the control and KD complete none (they serve only the controls' comparisons)
    assert [(r.arm, r.seed) for r in runs] == [("dml", 1), ("hint_dml", 1), ("student_dml_optimizer", 1), ("kd", 1)]
    assert runs[0].completes == ["dml_beats_student"]
    assert runs[1].completes == ["hint_dml_beats_dml", "hint_dml_beats_teacher"]
    # the seed-1 teacher has a record but no weights: the first run that needs it retrains it,
    # and since its record came from another kind of machine, says to replace it
    assert runs[1].trains_teacher and not runs[3].trains_teacher
    assert runs[1].command.startswith("MUTUALBENCH_RETRAIN_TEACHERS=1 mutualbench replicate ")
    assert runs[0].command == (f"mutualbench replicate {ROOT / 'replication' / 'seed_blog.toml'} --profile smoke "
                               f"--seeds 2 --no-ablations --arms dml --data '/data/cifar copy.tar.gz' --out {folder}")
    # seed 0's record took 3 epochs x (10 s + 1 s); the plan adds the margin replicate's estimate
    # adds, so the two give a run the same time
    assert runs[0].estimate_s == pytest.approx(33.0 * RunTimer.SAFETY)
    assert main(["plan", str(folder), "--data", "/data/c.tar.gz"]) == 0
    out = capsys.readouterr().out
    assert "4 runs missing to reach n = 2, in plan order" in out
    assert out.index("--arms dml ") < out.index("--arms hint_dml ") < out.index("--arms kd ")


def test_plan_of_a_complete_study_has_nothing_to_run(tmp_path, capsys):
    every = ["teacher", "student", "student_dml_optimizer", "dml", "hint_dml", "kd"]
    folder = smoke_study(tmp_path / "smoke", {a: [0, 1] for a in every})
    assert main(["plan", str(folder)]) == 0
    assert "planned seeds: nothing to run" in capsys.readouterr().out


def test_plan_without_its_spec_is_a_one_line_error(tmp_path, capsys):
    folder = smoke_study(tmp_path / "smoke", {"teacher": [0], "student": [0]})
    manifest = json.loads((folder / "study.json").read_text())
    manifest["spec_path"] = str(tmp_path / "gone.toml")
    (folder / "study.json").write_text(json.dumps(manifest))
    assert main(["plan", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: plan: the spec of") and "give it with --spec PATH" in err and "\n" not in err


def test_a_time_budget_without_arms_runs_the_plans_order(tmp_path):
    from mutualbench.core.config import run_id
    from mutualbench.studies.spec import expand, load_spec
    from mutualbench.studies.study import in_plan_order
    from mutualbench.training.run import resolve

    every = ["teacher", "student", "student_dml_optimizer", "dml", "hint_dml", "kd"]
    folder = smoke_study(tmp_path / "smoke", {**{a: [0] for a in every}, "teacher": [0, 1], "student": [0, 1]})
    spec_path = ROOT / "replication" / "seed_blog.toml"
    manifest = json.loads((folder / "study.json").read_text())
    spec = load_spec(spec_path)
    # what replicate would run, in its own (seeds-outermost, spec) order
    pending = [p.config for p in expand(spec, "smoke", [1], spec.data, False) if p.arm not in ("teacher", "student")]

    class Runner:
        @staticmethod
        def prepare(config):
            resolved = resolve(config)
            return resolved, run_id(resolved, "f" * 64), None, None

    said = []
    ordered = in_plan_order(pending, Runner(), manifest, folder, spec_path, said.append)
    names = {run_id(resolve(p.config), "f" * 64): p.arm for p in expand(spec, "smoke", [1], spec.data, False)}
    assert [names[Runner.prepare(c)[1]] for c in ordered] == ["dml", "hint_dml", "student_dml_optimizer", "kd"]
    assert [names[Runner.prepare(c)[1]] for c in pending] == ["student_dml_optimizer", "dml", "hint_dml", "kd"]
    assert said == ["runs in the order of `mutualbench plan` (the runs that complete the most claims first)"]
