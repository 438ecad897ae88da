"""The models that stand for an arm in the comparisons, contrasts and claims: each method
declares them (``Method.compared_members``), a spec arm may name others (``compare``), and the
analysis averages only those per seed while the per-member table still lists every model.
Synthetic records only: nothing is trained here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mutualbench.analysis.claims import evaluate
from mutualbench.analysis.report import markdown
from mutualbench.analysis.results import (
    ENSEMBLE,
    arm_accuracy,
    compared_on,
    linear_contrasts,
    load_study,
    runs_frame,
    seed_values,
)
from mutualbench.core.errors import UserError
from mutualbench.methods import get_method
from mutualbench.studies.spec import arm_compared, load_spec
from test_spec_schema import SPEC as SCHEMA_SPEC
from test_spec_schema import spec_error

ROOT = Path(__file__).resolve().parents[1]
ENV = {"device": "CPU: AMD EPYC 7B13 (2 threads)",
       "cpu": {"model": "AMD EPYC 7B13", "isa": "AVX2", "bf16_native": False, "bf16_flags": [], "threads": 2}}

# per arm: method, cohort, and per seed the final accuracy of every model its runs record.
# ONE's branches average 62, 63, 61 on seeds 0-2 and DML's students 62, 62, 61: ONE - DML is
# 0, 1, 0 (mean 1/3). ONE's gated ensemble is far better (90, 91, 89); averaged in with the
# branches it would make ONE - DML about +7 on every seed.
ONE = [{"branch1": 60.0, "branch2": 62.0, "branch3": 64.0, "ensemble": 90.0},
       {"branch1": 61.0, "branch2": 63.0, "branch3": 65.0, "ensemble": 91.0},
       {"branch1": 59.0, "branch2": 61.0, "branch3": 63.0, "ensemble": 89.0}]
DML = [{"student1": 61.0, "student2": 62.0, "student3": 63.0},
       {"student1": 62.0, "student2": 62.0, "student3": 62.0},
       {"student1": 60.0, "student2": 61.0, "student3": 62.0}]
# PCL: the peers average 60, 61, 62; their temporal means 70, 71, 72; the ensemble teacher 95
PCL = [{"peer1": 60.0 + s, "peer2": 61.0 + s, "peer3": 59.0 + s, "peer1_mean": 70.0 + s, "peer2_mean": 71.0 + s,
        "peer3_mean": 69.0 + s, "ensemble_teacher": 95.0} for s in range(3)]
ARMS = {"one": ("one", ONE, None), "dml": ("mutual", DML, 80.0), "pcl": ("pcl", PCL, 85.0)}
ARM_ORDER = ["one", "dml", "pcl"]


def record(rid: str, seed: int, method: str, accs: dict[str, float], ensemble: float | None) -> dict:
    """A complete record of a cohort of ResNet-20s (one epoch), as ``Runner`` writes it."""
    models = {m: {"role": "cohort member", "arch": "resnet20", "params": 100, "final_test_acc": a,
                  "best_test_acc_test_selected": a} for m, a in accs.items()}
    rec = {"schema": 1, "run_id": rid, "status": "complete", "seed": seed, "data": {},
           "curves": [{"epoch": 1, "stage": "train", "test_acc": dict(accs)}],
           "config": {"method": method, "arch": ["resnet20"], "cohort": 3, "seed": seed},
           "timings": {"train_s": 1.0}, "env": ENV, "models": models}
    if ensemble is not None:  # the mean-softmax ensemble of a CohortMethod's record
        members = [m for m in accs if not m.endswith("_mean") and m != "ensemble_teacher"]
        rec["ensemble"] = {"members": members, "params": 300, "final_test_acc": ensemble}
    return rec


def fake_study(folder: Path, compare: dict[str, list[str]] | None = None, arms: list[str] = ARM_ORDER) -> Path:
    """A study folder of ``arms`` (``ARMS``) over seeds 0-2; ``compare``: the spec's
    ``compare`` per arm. With every arm, it compares one and pcl with dml, has the contrast
    one - dml, and the claim "one_beats_dml"."""
    runs = []
    (folder / "runs").mkdir(parents=True)
    for seed in range(3):
        for arm in arms:
            method, per_seed, ens = ARMS[arm]
            rid = f"{method}-{arm}{seed:04d}"
            runs.append({"run_id": rid, "arm": arm, "method": method, "seed": seed, "ablation": None, "value": None})
            (folder / "runs" / f"{rid}.json").write_text(json.dumps(record(rid, seed, method, per_seed[seed], ens)))
    spec_arms = [{"name": a, "method": ARMS[a][0], "arch": "resnet20", "cohort": 3,
                  **({"compare": compare[a]} if compare and a in compare else {})} for a in arms]
    spec = {"study": {"name": "fake"}, "arms": spec_arms, "profiles": {"cpu": {"tolerance": 1.0, "seeds": 3}}}
    if arms == ARM_ORDER:
        spec.update(comparisons=[{"a": "one", "b": "dml"}, {"a": "pcl", "b": "dml"}],
                    contrasts=[{"name": "one_minus_dml", "weights": {"one": 1, "dml": -1}}],
                    claims=[{"name": "one_beats_dml", "text": "ONE beats DML", "comparison": "one vs dml",
                             "expect": "positive"}])
    manifest = {"spec": spec, "profile": "cpu", "runs": runs, "seeds": [0, 1, 2],
                "data": {"name": "synthetic", "sha256": "0" * 64}}
    (folder / "study.json").write_text(json.dumps(manifest))
    return folder


def per_seed(df, arm: str) -> list[float]:
    acc = arm_accuracy(df)
    return acc[acc["arm"] == arm].sort_values("seed")["final_acc"].tolist()


# ----------------------------------------------------------------------------- (a) the analysis
def test_a_one_arm_is_compared_on_its_branches_not_its_far_better_gated_ensemble(tmp_path):
    study = load_study(fake_study(tmp_path / "s"))
    df = study.runs
    assert per_seed(df, "one") == pytest.approx([62.0, 63.0, 61.0])  # the branches' mean, not (3 x 62 + 90) / 4
    assert per_seed(df, "dml") == pytest.approx([62.0, 62.0, 61.0])  # the students', never the mean softmax's 80
    row = study.paired.set_index(["a", "b"]).loc[("one", "dml")]
    assert row["n"] == 3 and row["mean_a"] == pytest.approx(62.0) and row["diff_mean"] == pytest.approx(1 / 3)
    assert row["a_wins"] == 1  # seed 1 only; the ensemble averaged in would win all three
    assert seed_values(df, {"one": 1, "dml": -1}).tolist() == pytest.approx([0.0, 1.0, 0.0])
    contrast = linear_contrasts(df, study.spec["contrasts"]).iloc[0]
    assert contrast["mean"] == pytest.approx(1 / 3)
    (claim,) = evaluate(study).to_dict("records")
    assert claim["diff"] == pytest.approx(1 / 3)
    # the per-member table still lists every model, the gated ensemble and the mean softmax included
    members = study.summary.groupby("arm", sort=False)["member"].apply(list).to_dict()
    assert members["one"] == ["branch1", "branch2", "branch3", "ensemble"]
    assert members["dml"] == ["student1", "student2", "student3", ENSEMBLE]
    assert members["pcl"] == ["peer1", "peer2", "peer3", "peer1_mean", "peer2_mean", "peer3_mean",
                              "ensemble_teacher", ENSEMBLE]
    one = study.summary[(study.summary["arm"] == "one") & (study.summary["member"] == "ensemble")].iloc[0]
    assert one["final_mean"] == pytest.approx(90.0)


def test_pcl_is_compared_on_its_peers_not_their_temporal_means_or_the_ensemble_teacher(tmp_path):
    study = load_study(fake_study(tmp_path / "s"))
    assert per_seed(study.runs, "pcl") == pytest.approx([60.0, 61.0, 62.0])
    assert study.paired.set_index(["a", "b"]).loc[("pcl", "dml"), "diff_mean"] == pytest.approx((-2 - 1 + 1) / 3)


def test_the_table_names_the_members_an_arm_is_compared_on_when_not_all(tmp_path):
    study = load_study(fake_study(tmp_path / "s"))
    assert study.compared_on() == {"one": ["branch1", "branch2", "branch3"], "pcl": ["peer1", "peer2", "peer3"]}
    md = markdown(dict(study.manifest, record_devices=["cpu"]), study.summary, study.paired,
                  compared=study.compared_on())
    (line,) = [x for x in md.splitlines() if x.startswith("Compared on: ")]
    assert line.startswith("Compared on: `one` on branch1, branch2, branch3; `pcl` on peer1, peer2, peer3. ")
    assert "`dml`" not in line  # compared on all its models: not named
    # a study whose arms are compared on every model they record has no such line
    plain = load_study(fake_study(tmp_path / "plain", arms=["dml"]))
    assert plain.compared_on() == {} and compared_on(runs_frame(plain.manifest, plain.records)) == {}
    md = markdown(dict(plain.manifest, record_devices=["cpu"]), plain.summary, plain.paired,
                  compared=plain.compared_on())
    assert "Compared on" not in md


def test_the_runs_csv_is_unchanged_by_the_compared_column(tmp_path):
    """runs.csv keeps its columns (the committed studies regenerate byte for byte): ``compared``
    is the analysis's, not the table's."""
    from mutualbench.analysis.report import write_report

    folder = fake_study(tmp_path / "s")
    write_report(folder)
    header = (folder / "runs.csv").read_text().splitlines()[0]
    assert "compared" not in header and header.startswith("ablation,value,arm,method,member,seed,run_id")


# ----------------------------------------------------------------------------- (b) the spec's compare
def test_a_spec_compare_overrides_the_methods_members(tmp_path):
    study = load_study(fake_study(tmp_path / "s", compare={"pcl": ["peer1_mean", "peer2_mean", "peer3_mean"],
                                                           "one": ["ensemble"]}))
    assert per_seed(study.runs, "pcl") == pytest.approx([70.0, 71.0, 72.0])  # the temporal means, as named
    assert per_seed(study.runs, "one") == pytest.approx([90.0, 91.0, 89.0])
    assert study.paired.set_index(["a", "b"]).loc[("one", "dml"), "diff_mean"] == pytest.approx((28 + 29 + 28) / 3)
    assert study.compared_on() == {"one": ["ensemble"], "pcl": ["peer1_mean", "peer2_mean", "peer3_mean"]}


def test_a_spec_file_compare_is_the_arms_compared_members(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SCHEMA_SPEC.replace("cohort = 2\n", 'cohort = 2\ncompare = ["student2"]\n'))
    spec = load_spec(path)
    assert arm_compared(spec.arm("dml")) == ["student2"]
    assert arm_compared(spec.arm("student")) == ["model"]  # no compare: the method's


def test_a_run_without_a_member_its_arm_is_compared_on_is_an_error(tmp_path):
    folder = fake_study(tmp_path / "s", compare={"dml": ["student4"]})
    with pytest.raises(UserError, match=r"arm 'dml' does not record student4, which the arm is compared on "
                                        r"\(it records student1, student2, student3\); name those in the arm's "
                                        r"compare"):
        load_study(folder)


# ----------------------------------------------------------------------------- (c) spec errors
@pytest.mark.parametrize("compare,message", [
    ('["student3"]', "[[arms]] #2 (dml) compare: the arm has no member 'student3' (runs of method 'mutual' record "
                     "student1, student2); name some of those, e.g. compare = [\"student1\"]"),
    (f'["{ENSEMBLE}"]', f"[[arms]] #2 (dml) compare: the arm has no member '{ENSEMBLE}'"),
    ('["student1", "student1"]', "[[arms]] #2 (dml) compare: 'student1' is listed twice; list each member once"),
    ("[]", "[[arms]] #2 (dml) compare = [] is not allowed; it must be a non-empty list of the names of the members "
           "the arm is compared on, e.g. compare = [\"branch1\", \"branch2\", \"branch3\"]"),
    ('"student1"', "[[arms]] #2 (dml) compare = 'student1' is not allowed; it must be a non-empty list"),
])
def test_a_spec_naming_a_member_the_arm_does_not_record_fails_in_one_line(tmp_path, capsys, compare, message):
    err = spec_error(tmp_path, capsys, SCHEMA_SPEC.replace("cohort = 2\n", f"cohort = 2\ncompare = {compare}\n"))
    assert message in err, err


# ----------------------------------------------------------------------------- (d) each method's declaration
@pytest.mark.parametrize("method,config,expected", [
    ("one", {"arch": ["resnet20"], "cohort": 3}, ["branch1", "branch2", "branch3"]),
    ("pcl", {"arch": ["resnet20"], "cohort": 3}, ["peer1", "peer2", "peer3"]),
    ("okddip", {"arch": ["resnet20"], "cohort": 3}, ["leader"]),
    ("okddip", {"arch": ["resnet20"], "cohort": 4}, ["leader"]),
    ("kdcl", {"arch": ["resnet20", "wrn_16_1"], "cohort": 2}, ["student1", "student2"]),
    ("kdcl", {"arch": ["resnet20"], "cohort": 3}, ["student1", "student2", "student3"]),
    ("mutual", {"arch": ["resnet20"], "cohort": 3}, ["student1", "student2", "student3"]),
    ("hint_mutual", {"arch": ["resnet20"], "cohort": 2}, ["student1", "student2"]),
    ("individual", {"arch": ["resnet20"], "cohort": 1}, ["model"]),
    ("kd", {"arch": ["resnet20"], "cohort": 1}, ["student"]),
])
def test_each_method_declares_the_members_it_is_compared_on(method, config, expected):
    m = get_method(method)
    assert m.compared_members(config) == expected
    assert set(expected) <= set(m.member_names(config))  # models its runs record


def test_the_online_kd_specs_compare_each_method_on_its_deployable_models():
    for name in ("online_kd.toml", "online_kd_cifar100.toml"):
        spec = load_spec(ROOT / "replication" / name)
        by_method = {a["method"]: arm_compared(a) for a in spec.arms}
        assert by_method == {"individual": ["model"], "mutual": ["student1", "student2", "student3"],
                             "one": ["branch1", "branch2", "branch3"], "kdcl": ["student1", "student2", "student3"],
                             "okddip": ["leader"], "pcl": ["peer1_mean", "peer2_mean", "peer3_mean"]}, name
