"""The blog's spec, replication/seed_blog.toml: its smoke profile (the exact tier CI checks)
trains every model the way it says, and its teacher arm is the teacher KD and the hints use."""

from pathlib import Path

from mutualbench.core.config import run_id
from mutualbench.studies.spec import expand, load_spec
from mutualbench.training.run import resolve, teacher_config

SPEC = Path(__file__).resolve().parents[1] / "replication" / "seed_blog.toml"
SHA = "0" * 64  # any data checksum: both sides of each comparison hash the same one


def test_the_smoke_profile_draws_he_normal_and_trains_at_3e4_for_three_epochs():
    spec = load_spec(SPEC)
    assert spec.profile("smoke")["seeds"] == 2  # the stored set's seeds
    plan = expand(spec, "smoke", [0, 1], "data")
    assert len({p.arm for p in plan}) == 6
    for p in plan:
        r = resolve(p.config)
        assert r["speed"]["dtype"] == "float64" and r["train"]["epochs"] == 3
        # the init ablation's pytorch_default value is the one run drawn PyTorch's way
        default_init = (p.ablation, p.value) == ("init", "pytorch_default")
        assert r["init"] == ("pytorch_default" if default_init else "he_normal_fan_out"), (p.arm, p.ablation, p.value)
        assert r["train"]["optimizer"]["lr"] == 3e-4
        if p.config["method"] in ("kd", "hint_mutual"):
            t = resolve(teacher_config(r))
            assert t["init"] == "he_normal_fan_out" and t["train"]["optimizer"]["lr"] == 3e-4
            assert t["train"]["epochs"] == 3 and t["speed"]["dtype"] == "float64"
        if p.config["method"] == "hint_mutual":
            assert r["hint"]["optimizer"]["lr"] == 3e-4 and r["hint"]["epochs"] == 1


def test_the_teacher_arm_is_the_teacher_that_kd_and_the_hints_learn_from():
    """Per seed, one teacher: the teacher arm's run id is the id of the run that trains KD's
    and hint+DML's teacher, in every profile (so its record is the teacher they used)."""
    spec = load_spec(SPEC)
    for profile in ("smoke", "cpu", "full"):
        plan = expand(spec, profile, [0, 1], "data", ablations=False)
        for seed in (0, 1):
            arm = {p.arm: resolve(p.config) for p in plan if p.seed == seed}
            teacher = run_id(arm["teacher"], SHA)
            for learner in ("kd", "hint_dml"):
                assert run_id(resolve(teacher_config(arm[learner])), SHA) == teacher, (profile, seed, learner)


def test_a_teacher_is_drawn_with_its_runs_init():
    spec = load_spec(SPEC)
    (kd,) = [p for p in expand(spec, "cpu", [0], "data", ablations=False) if p.arm == "kd"]
    cfg = resolve(kd.config)
    assert resolve(teacher_config(cfg))["init"] == "pytorch_default"
    cfg["init"] = "he_normal_fan_out"
    assert resolve(teacher_config(cfg))["init"] == "he_normal_fan_out"
