import math

import pandas as pd
import pytest

from mutualbench.analysis.results import MAIN, ablation_comparisons


def frame(rows):
    return pd.DataFrame(rows, columns=["ablation", "value", "arm", "member", "seed", "run_id", "final_acc"])


def test_ablation_values_are_paired_against_the_value_that_reuses_the_main_runs():
    rows = []
    for seed, (main, off) in enumerate([(40.0, 47.0), (42.0, 50.0), (38.0, 48.0)]):
        rows.append([MAIN, "", "student", "model", seed, f"main-{seed}", main])
        rows.append(["augmentation", "on", "student", "model", seed, f"main-{seed}", main])  # reuses the main run
        rows.append(["augmentation", "off", "student", "model", seed, f"off-{seed}", off])
    for seed, (m1, m2, s1, s2) in enumerate([(30.0, 32.0, 29.0, 29.0), (36.0, 34.0, 36.0, 36.0)]):
        for member, main, seq in (("student1", m1, s1), ("student2", m2, s2)):
            rows.append([MAIN, "", "dml", member, seed, f"dml-{seed}", main])
            rows.append(["update_order", "sequential", "dml", member, seed, f"seq-{seed}", seq])
            rows.append(["update_order", "simultaneous", "dml", member, seed, f"dml-{seed}", main])
    out = ablation_comparisons(frame(rows)).set_index(["ablation", "arm"])
    aug = out.loc[("augmentation", "student")]
    assert (aug["value"], aug["reference"], aug["n"]) == ("off", "on", 3)
    # differences 7, 8, 10: mean 25/3, sample std sqrt(7/3), paired t = mean / (std / sqrt 3)
    assert aug["diff_mean"] == pytest.approx(25 / 3) and aug["diff_std"] == pytest.approx(math.sqrt(7 / 3))
    from scipy import stats
    assert aug["p_value"] == pytest.approx(2 * stats.t.sf((25 / 3) / (math.sqrt(7 / 3) / math.sqrt(3)), 2))
    assert aug["value_wins"] == 3
    order = out.loc[("update_order", "dml")]
    # cohort means: main 31, 35; sequential 29, 36 -> differences -2, +1
    assert (order["value"], order["reference"]) == ("sequential", "simultaneous")
    assert order["diff_mean"] == pytest.approx(-0.5) and order["value_wins"] == 1


def test_identical_values_have_no_p_value_and_an_ablation_without_the_main_runs_is_left_out():
    rows = [[MAIN, "", "dml", "student1", s, f"m{s}", 30.0 + s] for s in range(3)]
    rows += [["peer_weight", "mean", "dml", "student1", s, f"m{s}", 30.0 + s] for s in range(3)]
    rows += [["peer_weight", "sum", "dml", "student1", s, f"x{s}", 30.0 + s] for s in range(3)]
    rows += [["other", "a", "dml", "student1", s, f"a{s}", 1.0] for s in range(3)]
    out = ablation_comparisons(frame(rows))
    assert list(out["ablation"]) == ["peer_weight"]
    assert out["diff_mean"].iloc[0] == 0 and math.isnan(out["p_value"].iloc[0])
