"""Linear contrasts of arms: statistics against hand-computed numbers, and the spec errors."""

import math

import pandas as pd
import pytest

from mutualbench.analysis.results import ablation_contrasts, linear_contrasts
from mutualbench.cli import main


def frame(acc: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    """A runs frame: (arm, member) -> final accuracy per seed 0, 1, ..."""
    rows = [{"ablation": "main", "value": "", "arm": arm, "member": member, "seed": s, "final_acc": a}
            for (arm, member), accs in acc.items() for s, a in enumerate(accs)]
    return pd.DataFrame(rows)


INTERACTION = {"name": "interaction", "weights": {"hint_dml": 1, "hint_student": -1, "dml": -1, "student": 1}}


def test_interaction_contrast_by_hand():
    df = frame({
        ("hint_dml", "student1"): [50.0, 52.0, 54.0], ("hint_dml", "student2"): [52.0, 54.0, 56.0],  # means 51, 53, 55
        ("hint_student", "model"): [45.0, 46.0, 47.0],
        ("dml", "student1"): [40.0, 40.0, 40.0], ("dml", "student2"): [40.0, 40.0, 40.0],
        ("student", "model"): [35.0, 35.0, 35.0],
    })
    row = linear_contrasts(df, [INTERACTION]).iloc[0]
    # per seed: 51-45-40+35 = 1, 53-46-40+35 = 2, 55-47-40+35 = 3
    assert row["n"] == 3 and row["mean"] == pytest.approx(2.0) and row["std"] == pytest.approx(1.0)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * std / sqrt(n)
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((2 - half, 2 + half))
    t = 2.0 / (1.0 / math.sqrt(3))
    assert row["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t))  # two-sided, 2 degrees of freedom
    assert row["seeds_positive"] == 3 and row["note"] == ""
    assert row["weights"] == "1·hint_dml − 1·hint_student − 1·dml + 1·student"


def test_an_arm_with_fewer_seeds_is_named_and_the_common_seeds_used():
    df = frame({("a", "model"): [10.0, 20.0, 30.0], ("b", "model"): [5.0, 5.0]})
    row = linear_contrasts(df, [{"name": "a-b", "weights": {"a": 1, "b": -1}}]).iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(10.0)
    assert "b has 2 seeds" in row["note"] and "computed on the 2 seeds they all share" in row["note"]


def test_a_contrast_whose_arms_share_no_seed_says_it_is_not_computed():
    df = frame({("a", "model"): [10.0]})
    row = linear_contrasts(df, [{"name": "a-b", "weights": {"a": 1, "b": -1}}]).iloc[0]
    assert row["n"] == 0 and math.isnan(row["mean"]) and row["seeds_positive"] == 0
    assert row["note"] == "not computed: its arms share no seed (b has 0 seeds)"


SPEC = """
[study]
name = "c"
data = "tiny3"
classes = ["ant", "bee", "cow"]
seeds = 2

[[arms]]
name = "student"
method = "individual"
arch = "seed_vgg_student"

[[arms]]
name = "dml"
method = "mutual"
arch = "seed_vgg_student"
cohort = 2

[[contrasts]]
name = "dml - student"
weights = { dml = 1, student = -1 }

[profiles.smoke]
tolerance = 1.0
"""


@pytest.mark.parametrize("edit,message", [
    (("{ dml = 1, student = -1 }", "{ dml = 1, studnet = -1 }"), "'studnet' is not an arm"),
    (("{ dml = 1, student = -1 }", "{ dml = 1, student = -0.5 }"), "the weights sum to 0.5; a contrast's weights must sum to 0"),
    (("{ dml = 1, student = -1 }", "{ dml = 1 }"), "over at least two arms"),
    (("{ dml = 1, student = -1 }", "{ dml = 0, student = 0 }"), "must be a non-zero number"),
    (('name = "dml - student"', 'name = "x"\ncolour = 1'), "unknown key(s) colour in [[contrasts]] #1"),
    # relative, not absolute: weights of 1e-10 and -2e-10 do not sum to 0
    (("{ dml = 1, student = -1 }", "{ dml = 1e-10, student = -2e-10 }"), "the weights sum to -1e-10"),
    # a contrast named like a comparison would replace it in the tables and claims
    (('[[contrasts]]\nname = "dml - student"', '[[comparisons]]\na = "dml"\nb = "student"\n\n'
      '[[contrasts]]\nname = "dml vs student"'), "is also a [[comparisons]] entry's name"),
    # names that land in a table row are one line without '|'
    (('name = "dml - student"', 'name = "dml | student"'), "would break the row of table.md"),
    (('name = "dml - student"', 'name = "dml\\nstudent"'), "would break the row of table.md"),
    (('weights = { dml = 1, student = -1 }', 'weights = { dml = 1, student = -1 }\nfamily = "a|b"'),
     "family = 'a|b' is not allowed"),
])
def test_contrast_spec_errors(tmp_path, capsys, edit, message):
    spec = tmp_path / "c.toml"
    text = SPEC.replace(*edit)
    assert text != SPEC
    spec.write_text(text)
    code = main(["replicate", str(spec), "--profile", "smoke", "--data", "/nonexistent.tar.gz",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {spec}") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def contrast_study(tmp_path):
    import json

    folder = tmp_path / "study"
    (folder / "runs").mkdir(parents=True)
    import tomllib

    spec = tomllib.loads(SPEC)
    runs = []
    for seed, (s_acc, d_acc) in enumerate([(40.0, (44.0, 46.0)), (42.0, (41.0, 43.0))]):
        for arm, rid, models in (("student", f"individual-{seed:012d}", {"model": s_acc}),
                                 ("dml", f"mutual-{seed:012d}", {"student1": d_acc[0], "student2": d_acc[1]})):
            runs.append({"arm": arm, "seed": seed, "ablation": None, "value": None, "run_id": rid})
            record = {"schema": 1, "run_id": rid, "status": "complete", "config": {"method": "x"}, "seed": seed,
                      "data": {}, "curves": [], "timings": {"train_s": 1.0}, "env": {"device": "cpu"},
                      "models": {m: {"arch": "a", "params": 1, "final_test_acc": a, "best_test_acc_test_selected": a}
                                 for m, a in models.items()}}
            (folder / "runs" / f"{rid}.json").write_text(json.dumps(record))
    manifest = {"schema": 1, "spec": spec, "profile": "smoke", "seeds": [0, 1], "runs": runs,
                "data": {"name": "d", "sha256": "0" * 64, "source": "d"}}
    (folder / "study.json").write_text(json.dumps(manifest))
    return folder


def test_contrasts_in_the_table_and_csv(tmp_path):
    from mutualbench.analysis.report import write_report

    folder = contrast_study(tmp_path)
    written = write_report(folder)
    assert "contrasts.csv" in written
    c = pd.read_csv(folder / "contrasts.csv")
    assert list(c["mean"]) == [pytest.approx(((45 - 40) + (42 - 42)) / 2)]
    assert "## Contrasts" in (folder / "table.md").read_text()


def test_publish_logs_the_contrast_table(tmp_path, monkeypatch):
    import sys
    import types

    from mutualbench.analysis.publish import publish

    logged = {}

    class Run:
        dir = str(tmp_path)

        def log(self, items):
            logged.update(items)

        def log_artifact(self, artifact):
            pass

        def finish(self):
            pass

    class Artifact:
        def __init__(self, *args, **kwargs):
            pass

        def add_file(self, *args, **kwargs):
            pass

    module = types.ModuleType("wandb")
    module.Settings = lambda **kwargs: types.SimpleNamespace(**kwargs)
    module.init = lambda settings=None, **kwargs: Run()
    module.Table = lambda dataframe: dataframe
    module.Image = lambda path: path
    module.Artifact = Artifact
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.setenv("WANDB_MODE", "offline")
    folder = contrast_study(tmp_path)
    publish(folder)
    table = logged["contrasts"]
    assert list(table["contrast"]) == ["dml - student"]
    assert table["mean"].iloc[0] == pytest.approx(pd.read_csv(folder / "contrasts.csv")["mean"].iloc[0])


def test_one_shared_seed_is_named_as_one():
    df = frame({("a", "model"): [10.0, 20.0, 30.0], ("b", "model"): [5.0]})
    row = linear_contrasts(df, [{"name": "a-b", "weights": {"a": 1, "b": -1}}]).iloc[0]
    assert row["n"] == 1 and row["note"] == "arms with fewer seeds: b has 1 seed; computed on the 1 seed they all share"


def test_contrasts_within_each_ablation_value_by_hand():
    """The factorial's contrasts under another setting: each value's runs alone (the main runs,
    and another ablation's, do not enter); a contrast over an arm the ablation does not vary is
    left out."""
    main = frame({("hint_dml", "s1"): [60.0, 60.0], ("hint_student", "model"): [50.0, 50.0]})
    value = {"constant": ([61.0, 63.0], [50.0, 51.0]), "cosine": ([70.0, 74.0], [69.0, 71.0])}
    rows = [main]
    for name, (hd, hs) in value.items():
        v = frame({("hint_dml", "s1"): hd, ("hint_student", "model"): hs})
        rows.append(v.assign(ablation="schedule", value=name))
    rows.append(frame({("hint_dml", "s1"): [0.0, 0.0], ("hint_student", "model"): [99.0, 99.0]}).assign(
        ablation="other", value="x"))
    df = pd.concat(rows, ignore_index=True)
    peer = {"name": "peer_given_hints", "weights": {"hint_dml": 1, "hint_student": -1}}
    other = {"name": "with_teacher", "weights": {"hint_dml": 1, "teacher": -1}}
    ablations = [{"name": "schedule", "arms": ["hint_dml", "hint_student"]}, {"name": "none", "arms": ["dml"]}]
    out = ablation_contrasts(df, [peer, other], ablations)
    assert list(out[["ablation", "value", "contrast"]].itertuples(index=False, name=None)) == [
        ("schedule", "constant", "peer_given_hints"), ("schedule", "cosine", "peer_given_hints")]
    constant, cosine = out.iloc[0], out.iloc[1]
    assert constant["n"] == 2 and constant["mean"] == pytest.approx(11.5)  # (61-50 + 63-51) / 2
    assert cosine["mean"] == pytest.approx(2.0) and cosine["std"] == pytest.approx(math.sqrt(2) * 1)  # 1, 3
    assert ablation_contrasts(df, [other], ablations).empty
