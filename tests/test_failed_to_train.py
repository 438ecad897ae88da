"""A profile's rule for runs that failed to train (``failed_below``): such a run is listed in
table.md, left out of its arm's mean and of every comparison and contrast at its seed, never
replaced, and counted as run by the claims' planned n; without the rule every run counts."""

from __future__ import annotations

import math

import pytest

from mutualbench.analysis.claims import evaluate
from mutualbench.analysis.report import write_report
from mutualbench.analysis.results import load_study
from test_verdicts import fake_study

SPEC = {"comparisons": [{"a": "teacher", "b": "student"}],
        "claims": [{"name": "teacher_beats_student", "text": "the teacher beats the student",
                    "comparison": "teacher vs student", "expect": "positive"}]}
# the student's seed 4 stays at chance (10%): with the rule it failed to train
ACCS = {"teacher": [75.0, 76.0, 74.5, 75.5, 78.9], "student": [70.0, 71.5, 70.5, 69.0, 10.0]}


def test_a_run_at_or_below_the_rule_is_out_of_the_mean_and_the_paired_test(tmp_path):
    study = load_study(fake_study(tmp_path / "s", ACCS, SPEC, {"seeds": 5, "failed_below": 15.0}))
    student = study.summary.set_index("arm").loc["student"]
    assert student["n"] == 4 and student["final_mean"] == pytest.approx((70.0 + 71.5 + 70.5 + 69.0) / 4)
    (row,) = study.paired.to_dict("records")
    assert row["n"] == 4  # seed 4 is out of the comparison: conditional on training
    assert row["diff_mean"] == pytest.approx(((75 - 70) + (76 - 71.5) + (74.5 - 70.5) + (75.5 - 69)) / 4)
    assert list(study.failed["seed"]) == [4] and list(study.failed["arm"]) == ["student"]
    assert study.failed_notes() == ["student, seed 4 (run individual-student0004): model 10.00%"]


def test_the_failed_seed_counts_as_run_so_the_claim_is_decided_at_the_planned_n(tmp_path):
    with_rule = evaluate(load_study(fake_study(tmp_path / "a", ACCS, SPEC, {"seeds": 5, "failed_below": 15.0})))
    (claim,) = with_rule.to_dict("records")
    assert claim["achieved_n"] == 4 and claim["planned_n"] == 5 and claim["look"] == "final"
    # a seed is run only when every arm of the test has its run there
    short = {"teacher": ACCS["teacher"][:4], "student": ACCS["student"]}
    (partial,) = evaluate(load_study(fake_study(tmp_path / "b", short, SPEC,
                                                {"seeds": 5, "failed_below": 15.0}))).to_dict("records")
    assert partial["achieved_n"] == 4 and partial["look"] == "interim"


def test_without_the_rule_every_complete_run_counts(tmp_path):
    study = load_study(fake_study(tmp_path / "s", ACCS, SPEC, {"seeds": 5}))
    assert study.failed.empty and study.failed_notes() == []
    (row,) = study.paired.to_dict("records")
    assert row["n"] == 5
    student = study.summary.set_index("arm").loc["student"]
    assert student["n"] == 5 and not math.isnan(student["final_mean"])


def test_table_md_lists_the_failed_run_and_states_the_rule(tmp_path):
    folder = fake_study(tmp_path / "s", ACCS, SPEC, {"seeds": 5, "failed_below": 15.0})
    write_report(folder)
    md = (folder / "table.md").read_text()
    assert "## Runs that failed to train" in md
    assert "at or below 15.0% test accuracy failed to train" in md
    assert "- student, seed 4 (run individual-student0004): model 10.00%" in md
    assert "individual-student0004" not in (folder / "runs.csv").read_text()
    clean = fake_study(tmp_path / "t", ACCS, SPEC, {"seeds": 5})
    write_report(clean)
    assert "failed to train" not in (clean / "table.md").read_text()


def test_the_rule_is_checked_in_a_spec(tmp_path):
    from mutualbench.core.errors import UserError
    from mutualbench.studies.spec import load_spec

    text = (tmp_path / "x.toml")
    text.write_text('[study]\nname = "x"\ndata = "cifar10"\n\n[[arms]]\nname = "a"\nmethod = "individual"\n'
                    'arch = "seed_vgg_student"\n\n[profiles.p]\ntolerance = 1.0\nfailed_below = 120\n')
    with pytest.raises(UserError, match="failed_below") as e:
        load_spec(text)
    assert "a test accuracy in percent, from 0 up to 100" in str(e.value) and "\n" not in str(e.value)
