"""The online-KD study, replication/online_kd.toml (CIFAR-10), and its CIFAR-100 half,
replication/online_kd_cifar100.toml: what they state (arms, the shared recipe, each method's
settings per profile, the claims and their families, the published numbers and their
label), and that every profile expands into runs without data (nothing is trained here)."""

import json
import re
from pathlib import Path

import pytest

from mutualbench.analysis.claims import planned_seeds, profile_delta
from mutualbench.core.config import run_id
from mutualbench.studies.spec import arm_members, expand, load_spec
from mutualbench.training.run import resolve

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "replication" / "online_kd.toml"
SPEC_CIFAR100 = ROOT / "replication" / "online_kd_cifar100.toml"

METHODS = {"individual": "individual", "dml": "mutual", "one": "one", "kdcl": "kdcl", "okddip": "okddip", "pcl": "pcl"}
ONLINE = ["dml", "one", "kdcl", "okddip", "pcl"]

# profile -> (epochs, milestones, lr, batch size, train subset, ramp-up epochs, PCL's EMA decay)
PROFILES = {
    "full": (300, [150, 225], 0.1, 128, None, 80, 0.999),
    "cpu": (15, [8, 11], 0.1, 128, 10000, 4, 0.99),
    "smoke": (2, [1], 0.02, 16, 160, 1, 0.9),
}

# The PCL paper's CIFAR-100 numbers (accuracy, %), as a third-party README quotes them.
QUOTED = {"resnet32": {"dml": 73.68, "one": 73.79, "okddip": 73.25, "kdcl": 73.76, "pcl": 74.14},
          "resnet110": {"dml": 77.86, "one": 78.40, "okddip": 78.54, "kdcl": 78.28, "pcl": 79.98}}
# the models each number describes (Method.member_names), as the spec reads the paper
DESCRIBED = {"dml": ["student1", "student2", "student3"], "one": ["branch1", "branch2", "branch3"],
             "kdcl": ["student1", "student2", "student3"], "okddip": ["leader"],
             "pcl": ["peer1_mean", "peer2_mean", "peer3_mean"]}


def comparison_names(spec) -> set[str]:
    return {f"{c['a']} vs {c['b']}" for c in spec.comparisons}


def test_the_arms_are_the_five_methods_and_training_alone_on_resnet32_cohorts_of_three():
    spec = load_spec(SPEC)
    assert spec.data == "cifar10"
    assert {a["name"]: (a["method"], a["arch"], a.get("cohort", 1)) for a in spec.arms} == {
        name: (method, "resnet32", 1 if name == "individual" else 3) for name, method in METHODS.items()}
    assert not any(a.get("published") for a in spec.arms)  # CIFAR-10: none quoted, by design
    assert set(spec.profiles) == set(PROFILES)
    # the models each arm's runs record, as the methods declare them
    members = {a["name"]: arm_members(a) for a in spec.arms}
    assert members["individual"] == ["model"]
    assert members["one"] == ["branch1", "branch2", "branch3", "ensemble"]
    assert members["okddip"][:3] == ["peer1", "peer2", "leader"]
    assert members["pcl"][:7] == ["peer1", "peer2", "peer3", "peer1_mean", "peer2_mean", "peer3_mean",
                                  "ensemble_teacher"]
    assert members["dml"][:3] == members["kdcl"][:3] == ["student1", "student2", "student3"]


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_profile_expands_into_runs_of_the_shared_recipe(profile):
    epochs, milestones, lr, batch, subset, rampup, decay = PROFILES[profile]
    spec = load_spec(SPEC)
    plan = expand(spec, profile, [0, 1, 2], "cifar10", ablations=False)
    assert len(plan) == len(METHODS) * 3 and {p.seed for p in plan} == {0, 1, 2}
    # the authors' ResNet init: He fan-out convolutions, the classifier at PyTorch's default
    assert {resolve(p.config)["init"] for p in plan} == {"he_normal_conv"}
    assert {(p.arm, p.config["method"], tuple(p.config["arch"]), p.config["cohort"]) for p in plan} == {
        (name, method, ("resnet32",), 1 if name == "individual" else 3) for name, method in METHODS.items()}
    for p in plan:
        r = resolve(p.config)
        assert r["train"]["optimizer"] == {"name": "sgd", "lr": lr, "betas": [0.9, 0.999], "weight_decay": 5e-4,
                                           "momentum": 0.9, "nesterov": True}
        assert r["train"]["schedule"] == {"name": "step", "milestones": milestones, "gamma": 0.1}
        assert r["train"]["epochs"] == epochs and r["loss"]["reduction"] == "mean"
        assert r["data"]["batch_size"] == batch and r["data"]["train_subset"] == subset
        assert r["data"]["flip"] is True and r["data"]["crop_padding"] == 4 and r["data"]["normalize"] is True
        dtype = (r.get("speed") or {}).get("dtype", "float32")
        assert dtype == ("float64" if profile == "smoke" else "float32")
        method = r["method"]
        if method == "mutual":
            assert r["mutual"]["peer_weight"] == "mean" and r["mutual"]["update_order"] == "simultaneous"
        elif method == "one":
            # branches: ResNet-32's layer3; the KL ramped up as OKDDip's (the authors' ONE baseline)
            assert r["one"] == {"temperature": 3.0, "split_at": None, "rampup_epochs": rampup}
        elif method == "kdcl":
            assert (r["kdcl"]["ensemble"], r["kdcl"]["temperature"], r["kdcl"]["weight"]) == ("min_logit", 3.0, 1.0)
        elif method == "okddip":
            assert r["okddip"]["temperature"] == 3.0 and r["okddip"]["weight"] == 1.0 and r["okddip"]["factor"] == 8
            assert r["okddip"]["rampup_epochs"] == rampup
        elif method == "pcl":
            assert r["pcl"]["temperature"] == 3.0 and r["pcl"]["rampup_epochs"] == rampup
            assert r["pcl"]["ema_decay"] == decay


def stored_cpu_runs() -> tuple[dict[str, dict], str]:
    """The stored `cpu` records' configs by run id, and the data's checksum."""
    stored = sorted((ROOT / "results" / "online_kd" / "cpu" / "runs").glob("*.json"))
    records = {f.stem: json.loads(f.read_text()) for f in stored}
    return {rid: r["config"] for rid, r in records.items()}, next(iter(records.values()))["data"]["sha256"]


def ablation_ids(name: str) -> tuple[dict[str, set[str]], dict[tuple[str, int], str]]:
    """The `cpu` run ids of ablation ``name`` by value, and the main arms' run ids by (arm, seed)."""
    plan = expand(load_spec(SPEC), "cpu", [0, 1, 2], "cifar10")
    _, sha = stored_cpu_runs()
    ids: dict[str, set[str]] = {}
    for p in plan:
        if p.ablation == name:
            ids.setdefault(p.value, set()).add(run_id(resolve(p.config), sha))
    return ids, {(p.arm, p.seed): run_id(resolve(p.config), sha) for p in plan if p.ablation is None}


def test_the_init_ablation_holds_the_first_cpu_runs_drawn_with_the_resnets_own_init():
    """The first `cpu` runs of individual training and DML (seeds 0-2) were drawn with the
    ResNets' own init (the classifier He fan-out too): the `init` ablation's `classifier_he`
    value is exactly them, by run id, and its `he_normal_conv` value is the main arms' runs."""
    ids, main = ablation_ids("init")
    configs, _ = stored_cpu_runs()
    assert set(ids) == {"he_normal_conv", "classifier_he"}
    assert ids["he_normal_conv"] == {main[(arm, seed)] for arm in ("individual", "dml") for seed in (0, 1, 2)}
    first = {rid for rid, c in configs.items() if c.get("init", "pytorch_default") == "pytorch_default"
             and c["method"] != "one"}
    assert len(ids["classifier_he"]) == 6 and first == ids["classifier_he"]


def test_the_one_rampup_ablation_holds_the_cpu_runs_of_one_without_its_ramp_up():
    """ONE's `cpu` runs made before its KL terms were ramped up (three with the classifier
    He-initialised, three with the main arms' init) are the `one_rampup` ablation's `none_*`
    values, by run id; its `ramp` value is the main ONE arm, whose runs differ from all six."""
    ids, main = ablation_ids("one_rampup")
    configs, _ = stored_cpu_runs()
    unramped = {rid for rid, c in configs.items() if c["method"] == "one" and not c["one"].get("rampup_epochs")}
    before = {rid for rid in unramped if configs[rid].get("init", "pytorch_default") == "pytorch_default"}
    assert set(ids) == {"ramp", "none", "none_classifier_he"}
    assert len(ids["none_classifier_he"]) == 3 and ids["none_classifier_he"] == before
    assert len(ids["none"]) == 3 and ids["none"] == unramped - before
    assert ids["ramp"] == {main[("one", seed)] for seed in (0, 1, 2)} and not ids["ramp"] & unramped


def test_the_dml_rampup_ablation_is_opt_in_and_differs_from_the_main_dml_arm_in_its_ramp_only():
    """`dml_rampup` runs only when asked for (no profile plans it by default, so CI's smoke set
    is unchanged); its `none` value is the main DML arm's runs, and `ramp_4_epochs` the same
    runs with the KL terms ramped up over 4 epochs, every other setting equal."""
    spec = load_spec(SPEC)
    for profile in ("cpu", "smoke", "full"):
        assert not [p for p in expand(spec, profile, [0, 1, 2], "cifar10") if p.ablation == "dml_rampup"]
    plan = expand(spec, "cpu", [0, 1, 2], "cifar10", ablations=["dml_rampup"])
    main = {p.seed: resolve(p.config) for p in plan if p.ablation is None and p.arm == "dml"}
    values = {(p.value, p.seed): resolve(p.config) for p in plan if p.ablation == "dml_rampup"}
    assert sorted(values) == [(v, s) for v in ("none", "ramp_4_epochs") for s in (0, 1, 2)]
    for seed in (0, 1, 2):
        assert values[("none", seed)] == main[seed] and main[seed]["mutual"]["rampup_epochs"] == 0
        ramped = values[("ramp_4_epochs", seed)]
        assert ramped["mutual"]["rampup_epochs"] == 4
        assert dict(ramped, mutual=dict(ramped["mutual"], rampup_epochs=0)) == main[seed]


def test_the_smoke_profile_is_the_exact_tier_and_the_cpu_profile_plans_three_seeds():
    spec = load_spec(SPEC)
    smoke = spec.profile("smoke")
    assert smoke["set"]["speed.dtype"] == "float64" and smoke["set"]["data.train_subset"] == 160
    assert smoke["set"]["data.batch_size"] == 16 and smoke["set"]["data.test_subset"] == 100
    assert planned_seeds(spec.raw, "smoke") == 2 and smoke["loss_rtol"] == 1e-3
    cpu = spec.profile("cpu")
    assert planned_seeds(spec.raw, "cpu") == 3 and cpu["set"]["data.test_subset"] == 2000
    assert profile_delta(spec.raw, "cpu") == profile_delta(spec.raw, "full") == 1.0
    assert profile_delta(spec.raw, "smoke") is None  # nothing is decided at the smoke scale


def test_the_claims_test_existing_comparisons_in_two_families():
    spec = load_spec(SPEC)
    families = {f"{c['a']} vs {c['b']}": c["family"] for c in spec.comparisons}
    assert families == {**{f"{m} vs individual": "vs individual" for m in ONLINE},
                        **{f"{m} vs dml": "vs dml" for m in ONLINE if m != "dml"}}
    claims = {c["name"]: c for c in spec.raw["claims"]}
    assert not spec.raw.get("contrasts")
    assert all(c["comparison"] in comparison_names(spec) and "contrast" not in c for c in claims.values())
    assert {n: (c["comparison"], c["expect"]) for n, c in claims.items()} == {
        **{f"{m}_beats_individual": (f"{m} vs individual", "positive") for m in ONLINE},
        **{f"{m}_beats_dml": (f"{m} vs dml", "positive") for m in ONLINE if m != "dml"}}
    # "level with DML": the claim's sign is the method's own paper's; its text says that the
    # PCL paper's numbers predict the equivalence verdict
    for m in ("one", "kdcl", "okddip"):
        assert "negligible" in claims[f"{m}_beats_dml"]["text"]
    assert "negligible" not in claims["pcl_beats_dml"]["text"]
    # the only numbers quoted are CIFAR-100's, and they say so
    for c in claims.values():
        if re.search(r"\d\.\d", c.get("published", "")):
            assert c["published"].startswith("CIFAR-100 only") and "secondary source" in c["published"]
    assert sum(c["published"].startswith("CIFAR-100 only") for c in claims.values()) == 4


def test_the_cifar100_half_states_the_quoted_numbers_as_a_secondary_source():
    spec = load_spec(SPEC_CIFAR100)
    assert spec.data == "cifar100"
    published = {a["name"]: a.get("published", {}) for a in spec.arms}
    expected = {}
    for arch, numbers in QUOTED.items():
        expected[f"individual_{arch}"] = {}  # not in the quoted source
        for m, value in numbers.items():
            expected[f"{m}_{arch}"] = dict.fromkeys(DESCRIBED[m], value)
    assert published == expected
    for a in spec.arms:
        assert ("secondary source" in a["description"]) == bool(a.get("published"))
        assert set(a.get("published", {})) <= set(arm_members(a))
    claims = {c["name"]: c for c in spec.raw["claims"]}
    assert all(c["comparison"] in comparison_names(spec) for c in claims.values())
    assert all("secondary source" in c["published"] for c in claims.values())
    for arch, numbers in QUOTED.items():
        for m in ("one", "kdcl", "okddip", "pcl"):
            claim = claims[f"{m}_beats_dml_{arch}"]
            assert claim["comparison"] == f"{m}_{arch} vs dml_{arch}" and claim["expect"] == "positive"
            diff = numbers[m] - numbers["dml"]
            assert claim["published"] == f"{diff:+.2f} ({numbers[m]:.2f} vs {numbers['dml']:.2f}; secondary source)"
        for m in ONLINE:
            assert claims[f"{m}_beats_individual_{arch}"]["comparison"] == f"{m}_{arch} vs individual_{arch}"
    assert len(claims) == 18 and profile_delta(spec.raw, "full") == 1.0


@pytest.mark.parametrize("profile,epochs", [("full", 300), ("smoke", 2)])
def test_the_cifar100_half_expands_into_runs(profile, epochs):
    spec = load_spec(SPEC_CIFAR100)
    plan = expand(spec, profile, [0, 1, 2], "cifar100")
    assert len(plan) == 12 * 3
    assert {(p.arm, p.config["method"], tuple(p.config["arch"]), p.config["cohort"]) for p in plan} == {
        (f"{name}_{arch}", method, (arch,), 1 if name == "individual" else 3)
        for name, method in METHODS.items() for arch in QUOTED}
    for p in plan:
        r = resolve(p.config)
        assert r["data"]["source"] == "cifar100" and r["train"]["epochs"] == epochs and r["data"]["batch_size"] == 128
        assert r["train"]["optimizer"]["name"] == "sgd" and r["train"]["optimizer"]["nesterov"] is True
