"""Typed config: every key has a type and a range; a violation is one line naming the key,
the value and what is allowed, exit 2, before any data is loaded or any teacher trained."""

import json

import pytest

from mutualbench.cli import main
from mutualbench.core.config import (
    BASE_DEFAULTS,
    BASE_SCHEMA,
    config_schema,
    default_config,
    leaf_keys,
    validate,
)
from mutualbench.core.errors import UserError

MISSING_DATA = "/nonexistent/never-loaded.tar.gz"  # a data error would come later: the config error must win


def test_schema_covers_every_default_key_and_accepts_the_defaults():
    assert set(leaf_keys(BASE_DEFAULTS)) == set(BASE_SCHEMA)
    assert set(leaf_keys(default_config())) == set(config_schema())
    validate(default_config())


@pytest.mark.parametrize(
    "key,value,allowed",
    [
        ("data.flip", 1, "true or false"),
        ("data.flip", "yes", "true or false"),
        ("data.normalize", None, "true or false"),
        ("train.optimizer.lr", "fast", "a number > 0"),
        ("train.optimizer.lr", 0, "a number > 0"),
        ("train.optimizer.lr", True, "a number > 0"),
        ("train.optimizer.betas", [0.5, 1.0], "a pair of numbers in [0, 1)"),
        ("train.optimizer.betas", 0.9, "a pair of numbers in [0, 1)"),
        ("train.optimizer.betas", [0.9], "a pair of numbers in [0, 1)"),
        ("train.optimizer.momentum", 1.5, "a number >= 0 and < 1"),
        ("data.crop_padding", -1, "an integer >= 0"),
        ("data.batch_size", 12.5, "an integer >= 1"),
        ("train.epochs", 0, "an integer >= 1"),
        ("hint.epochs", 0, "an integer >= 1"),
        ("teacher.train.epochs", 0, "an integer >= 1"),
        ("seed", -1, "an integer >= 0"),
        ("kd.alpha", -1, "a number >= 0"),
        ("kd.temperature", 0, "a number > 0"),
        ("hint.regressor_kernel", 2, "an odd integer >= 1"),
        ("train.schedule.milestones", [60, 30], "a list of increasing integers >= 1"),
        ("data.train_subset", 0, "an integer >= 1, or null"),
        ("mutual.update_order", "random", "one of sequential, simultaneous"),
        ("speed.bf16", "true", "true or false"),
    ],
)
def test_each_bad_value_names_key_value_and_what_is_allowed(key, value, allowed):
    config = default_config()
    node = config
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    with pytest.raises(UserError) as e:
        validate(config)
    msg = str(e.value)
    assert f"{key} = {json.dumps(value)} is not allowed" in msg and allowed in msg and "\n" not in msg


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "individual", "--seed", "-1"], "seed = -1 is not allowed; it must be an integer >= 0"),
        (["--method", "individual", "--epochs", "0"], "train.epochs = 0 is not allowed; it must be an integer >= 1"),
        (["--method", "individual", "--set", "data.flip=1"], "data.flip = 1 is not allowed; it must be true or false"),
        (["--method", "individual", "--set", "train.optimizer.betas=[0.9,1]"], "train.optimizer.betas = [0.9, 1]"),
        (["--method", "kd", "--teacher", "seed_vgg_teacher", "--set", "kd.alpha=-0.5"], "kd.alpha = -0.5 is not allowed"),
        (["--method", "individual", "--set", "speed.compile=true"], "speed.compile = True does not apply to method 'individual'"),
        (["--method", "kd", "--teacher", "seed_vgg_teacher", "--set", "speed.compile=true"], "speed.compile = True does not apply to method 'kd'"),
    ],
)
def test_cli_run_refuses_before_loading_data(tmp_path, capsys, args, message):
    code = main(["run", *args, "--data", MISSING_DATA, "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


SPEC = """
[study]
name = "typed"
data = "tiny3"
classes = ["ant", "bee", "cow"]
seeds = 2

[defaults]
"teacher.arch" = "seed_vgg_teacher"
"train.epochs" = 1

[[arms]]
name = "student"
method = "individual"
arch = "seed_vgg_student"

[[arms]]
name = "kd"
method = "kd"
arch = "seed_vgg_student"

[profiles.smoke]
tolerance = 1.0
"""


@pytest.mark.parametrize(
    "edit,message",
    [
        (('"train.epochs" = 1', '"train.epochs" = "1"'), '[defaults]: train.epochs = "1" is not allowed'),
        (('"train.epochs" = 1', '"data.flip" = 0'), "[defaults]: data.flip = 0 is not allowed; it must be true or false"),
        (("seeds = 2", "seeds = 0"), "[study] seeds = 0 is not allowed; it must be a positive integer"),
        (('method = "kd"\n', 'method = "kd"\nset = { "kd.alpha" = -1 }\n'), "kd.alpha = -1 is not allowed"),
        (('method = "kd"\n', 'method = "kd"\ncohort = 0\n'), "cohort = 0 is not allowed"),
    ],
)
def test_spec_values_are_typed(tmp_path, capsys, edit, message):
    spec = tmp_path / "typed.toml"
    text = SPEC.replace(*edit)
    assert text != SPEC
    spec.write_text(text)
    code = main(["replicate", str(spec), "--profile", "smoke", "--data", MISSING_DATA, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {spec}") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_replicate_seed_count_must_be_positive(tmp_path, capsys):
    spec = tmp_path / "typed.toml"
    spec.write_text(SPEC)
    code = main(["replicate", str(spec), "--profile", "smoke", "--seeds", "0", "--data", MISSING_DATA,
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "--seeds 0 is not allowed; give a positive number of seeds" in err
    assert not (tmp_path / "out").exists()


def test_a_valid_spec_gets_as_far_as_the_data(tmp_path, capsys):
    spec = tmp_path / "typed.toml"
    spec.write_text(SPEC)
    code = main(["replicate", str(spec), "--profile", "smoke", "--data", MISSING_DATA, "--out", str(tmp_path / "out")])
    # the config is valid: now the missing data is the first error, proving the order of checks
    err = capsys.readouterr().err
    assert code == 2 and MISSING_DATA in err


def test_bf16_is_honoured_by_single_model_methods_and_recorded(tmp_path, tiny_cifar, capsys):
    data, root = tiny_cifar
    common = ["--data", str(data), "--data-root", str(root), "--out", str(tmp_path / "out"), "--quiet",
              "--epochs", "1", "--set", "data.batch_size=32"]
    assert main(["run", "--method", "individual", *common]) == 0
    assert main(["run", "--method", "individual", "--set", "speed.bf16=true", *common]) == 0
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))]
    by_precision = {r["precision"]: r for r in records}
    assert set(by_precision) == {"float32", "bf16-autocast"}
    assert "speed" not in by_precision["float32"]["config"]  # a float32 single-model run keeps its old id
    assert by_precision["bf16-autocast"]["config"]["speed"] == {"bf16": True}
    assert by_precision["bf16-autocast"]["stages"][0]["bf16"] is True
    assert by_precision["float32"]["run_id"] != by_precision["bf16-autocast"]["run_id"]
