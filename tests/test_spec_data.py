"""A spec states its data set and every arm its architecture: `--data` may point at a local
copy of that data set, but a different data set is an error before any training."""

import pytest

from conftest import png_bytes, write_tar
from mutualbench.cli import main

SPEC = """
[study]
name = "d"
seeds = 1
{data}

[defaults]
"data.batch_size" = 16
"train.epochs" = 1

[[arms]]
name = "student"
method = "individual"
{arch}

[profiles.smoke]
tolerance = 0.5
"""
TINY = 'data = "tiny3"\nclasses = ["ant", "bee", "cow"]'
ARCH = 'arch = "seed_vgg_student"'


def write_spec(tmp_path, data=TINY, arch=ARCH):
    path = tmp_path / "d.toml"
    path.write_text(SPEC.format(data=data, arch=arch))
    return path


def replicate(spec, data, root, out, *extra):
    args = ["replicate", str(spec), "--profile", "smoke", "--data-root", str(root), "--out", str(out),
            "--device", "cpu", "--quiet", *extra]
    return main(args + (["--data", str(data)] if data is not None else []))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("data,message", [
    ("", "[study] needs data = \"cifar10\""),
    ('data = "tiny3"', "[study] data = 'tiny3' is not one of cifar10, cifar100: also give its class names"),
    ('data = "cifar10"\nclasses = ["a", "b"]', "[study] classes is only for data sets other than cifar10, cifar100"),
])
def test_a_spec_must_state_its_data_set(tmp_path, capsys, data, message):
    assert replicate(write_spec(tmp_path, data=data), "/nonexistent.tar.gz", tmp_path, tmp_path / "out") == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_an_arm_without_an_architecture_is_an_error(tmp_path, capsys):
    assert replicate(write_spec(tmp_path, arch=""), "/nonexistent.tar.gz", tmp_path, tmp_path / "out") == 2
    assert "[[arms]] #1 (student) needs 'arch', e.g. arch = \"resnet32\"" in one_line_error(capsys)


def test_another_data_set_is_refused_before_any_training(tmp_path, capsys, tiny_cifar):
    _, root = tiny_cifar
    rng = __import__("numpy").random.default_rng(0)
    files = {f"{split}/{c}/{i}.png": png_bytes(rng.integers(0, 255, (32, 32, 3), dtype="uint8"))
             for split in ("train", "test") for c in ("ant", "bee", "cat") for i in range(3)}
    other = write_tar(tmp_path / "other.tar.gz", files)
    out = tmp_path / "out"
    assert replicate(write_spec(tmp_path), other, root, out) == 2
    err = one_line_error(capsys)
    assert f"--data {other} is not a copy of tiny3" in err and "other's class 2 is 'cat', tiny3's is 'cow'" in err
    assert not list(out.rglob("*.json"))


def test_two_classes_fewer_is_named(tmp_path, capsys, tiny_cifar):
    _, root = tiny_cifar
    spec = write_spec(tmp_path, data='data = "tiny4"\nclasses = ["ant", "bee", "cow", "dog"]')
    data, _ = tiny_cifar
    assert replicate(spec, data, root, tmp_path / "out") == 2
    assert "tiny-cifar has 3 classes, tiny4 has 4" in one_line_error(capsys)


def test_a_known_data_set_name_that_is_not_the_specs_is_refused(tmp_path, capsys):
    spec = write_spec(tmp_path, data='data = "cifar10"')
    assert replicate(spec, "cifar100", tmp_path, tmp_path / "out") == 2
    assert "--data cifar100 is not the data set of" in one_line_error(capsys)


def test_a_data_set_that_cannot_be_downloaded_needs_data(tmp_path, capsys):
    assert replicate(write_spec(tmp_path), None, tmp_path, tmp_path / "out") == 2
    assert "is a study of tiny3, which cannot be downloaded: give --data" in one_line_error(capsys)


def test_a_copy_of_the_specs_data_set_runs(tmp_path, capsys, tiny_cifar):
    data, root = tiny_cifar
    assert replicate(write_spec(tmp_path), data, root, tmp_path / "out", "--dry-run") == 0
    assert "to run" in capsys.readouterr().out


PROFILED = SPEC.replace("[profiles.smoke]", """[[arms]]
name = "late"
method = "individual"
arch = "seed_vgg_student"
profiles = {late_profiles}

[profiles.cpu]
tolerance = 1.0

[profiles.smoke]""")


def test_an_arm_runs_in_the_profiles_it_names_with_their_settings(tmp_path):
    from mutualbench.studies.spec import expand, load_spec

    path = tmp_path / "p.toml"
    path.write_text(PROFILED.format(data=TINY, arch=ARCH, late_profiles='{ cpu = { "train.epochs" = 7 } }'))
    spec = load_spec(path)
    smoke = expand(spec, "smoke", [0], "x")
    cpu = expand(spec, "cpu", [0], "x")
    assert [p.arm for p in smoke] == ["student"] and [p.arm for p in cpu] == ["student", "late"]
    assert cpu[1].config["train"]["epochs"] == 7 and cpu[0].config["train"]["epochs"] == 1


@pytest.mark.parametrize("late,message", [
    ('{ gpu = {} }', "profiles names 'gpu', which is not a profile of the spec (cpu, smoke)"),
    ('{ cpu = { "train.epochs" = 0 } }', "profiles.cpu: train.epochs = 0 is not allowed"),
    ('{}', "profiles must name the profiles the arm runs in"),
])
def test_arm_profile_errors(tmp_path, capsys, late, message):
    path = tmp_path / "p.toml"
    path.write_text(PROFILED.format(data=TINY, arch=ARCH, late_profiles=late))
    assert replicate(path, "/nonexistent.tar.gz", tmp_path, tmp_path / "out") == 2
    assert message in one_line_error(capsys)


OPT_IN = SPEC.replace("[profiles.smoke]", """[[ablations]]
name = "augmentation"
arms = ["student"]
values = {{ on = {{}}, off = {{ "data.flip" = false }} }}

[[ablations]]
name = "precision"
arms = ["student"]
opt_in = {opt_in}
values = {{ float32 = {{}}, bf16 = {{ "speed.bf16" = true }} }}

[profiles.smoke]""")


def test_an_opt_in_ablation_runs_only_when_named(tmp_path):
    from mutualbench.studies.spec import expand, load_spec

    path = tmp_path / "o.toml"
    path.write_text(OPT_IN.format(data=TINY, arch=ARCH, opt_in="true"))
    spec = load_spec(path)

    def ablations(selection):
        return sorted({(p.ablation, p.value) for p in expand(spec, "smoke", [0], "x", selection) if p.ablation})

    assert ablations(True) == [("augmentation", "off"), ("augmentation", "on")]
    assert ablations(["precision"]) == [("precision", "bf16"), ("precision", "float32")]
    assert ablations(False) == []
    bf16 = [p for p in expand(spec, "smoke", [0], "x", ["precision"]) if p.value == "bf16"]
    assert [p.config["speed"]["bf16"] for p in bf16] == [True]


@pytest.mark.parametrize("opt_in,extra,message", [
    ("true", ["--ablations", "nope"], "--ablations: "),
    ("true", ["--ablations", "precision", "--no-ablations"], "--no-ablations and --ablations contradict each other"),
    ('"yes"', [], "opt_in = 'yes' is not allowed; it must be true"),
])
def test_opt_in_ablation_errors(tmp_path, capsys, opt_in, extra, message):
    path = tmp_path / "o.toml"
    path.write_text(OPT_IN.format(data=TINY, arch=ARCH, opt_in=opt_in))
    assert replicate(path, "/nonexistent.tar.gz", tmp_path, tmp_path / "out", *extra) == 2
    error = one_line_error(capsys)
    assert message in error
    if extra[:2] == ["--ablations", "nope"]:
        assert "has no ablation 'nope'; its ablations are augmentation, precision" in error
