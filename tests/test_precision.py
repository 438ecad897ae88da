"""``speed.dtype``: float64 runs are float64 in every stage (models, hint regressors, the fused
cohort, batches, losses, the ensemble's evaluation) and say so in the record; the default
float32 keeps every run id it had before the key existed; bf16 with float64 is refused."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import run_config
from mutualbench.core.config import default_config, run_id
from mutualbench.core.errors import UserError
from mutualbench.storage.io_utils import safe_torch_load
from mutualbench.training import engine
from mutualbench.training.run import Runner, resolve


def test_the_default_dtype_hashes_as_if_the_key_did_not_exist():
    for method, extra in (("individual", {}), ("mutual", {"cohort": 2})):
        config = dict(default_config(), method=method, **extra)
        resolved = resolve(config)
        without = copy.deepcopy(resolved)
        without.get("speed", {}).pop("dtype", None)
        if without.get("speed") == {}:
            del without["speed"]
        assert run_id(resolved, "sha") == run_id(without, "sha")
        config64 = copy.deepcopy(config)
        config64["speed"]["dtype"] = "float64"
        assert run_id(resolve(config64), "sha") != run_id(resolved, "sha")
    # a method without a speed section honours speed.dtype: it enters its config
    assert resolve(dict(default_config(), speed=dict(default_config()["speed"], dtype="float64")))["speed"] == {
        "dtype": "float64"}


def test_float64_with_bf16_is_a_one_line_error():
    config = default_config()
    config["speed"].update(dtype="float64", bf16=True)
    with pytest.raises(UserError) as e:
        resolve(config)
    assert "speed.bf16 = true and speed.dtype = \"float64\" contradict each other" in str(e.value)
    assert "\n" not in str(e.value)
    config["speed"]["dtype"] = "float16"
    with pytest.raises(UserError, match="speed.dtype = \"float16\" is not allowed; it must be one of float32, float64"):
        resolve(config)


@pytest.mark.parametrize("method,extra", [
    ("kd", {}),
    ("hint_mutual", {"cohort": 2}),  # hint regressors, then the fused cohort
    ("mutual", {"cohort": 2, "mutual.fuse": False}),  # the plain cohort path
])
def test_a_float64_run_is_float64_everywhere(tmp_path, tiny_cifar, monkeypatch, method, extra):
    data, root = tiny_cifar
    seen = {"batches": set(), "logits": set()}
    real_evaluate_ensemble = engine.evaluate_ensemble

    def watching(models, loader):
        x, _ = next(iter(loader.epoch_batches(0)))
        seen["batches"].add(x.dtype)
        seen["logits"].update(m(x).dtype for m in models)
        return real_evaluate_ensemble(models, loader)

    monkeypatch.setattr("mutualbench.methods.base.evaluate_ensemble", watching)
    threads = torch.get_num_threads()
    config = run_config(method, data, **{"arch": ["seed_vgg_student"], "speed.dtype": "float64",
                                         "train.epochs": 1, "hint.epochs": 1, "teacher.train.epochs": 1,
                                         "data.train_subset": 32, **extra})
    config["cohort"] = extra.get("cohort", 1)
    runner = Runner(tmp_path, data_root=root, device="cpu")
    record = runner.run(config)
    assert record["precision"] == "float64" and record["config"]["speed"]["dtype"] == "float64"
    assert record["env"]["cpu"]["threads"] == 1  # float64 trains on one thread: the same rounding on any count
    weights = safe_torch_load(tmp_path / record["run_id"] / "final.pt", "weights")["models"]
    for state in weights.values():
        assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float64}
    if method == "kd":  # the teacher is the same seed's float64 individual run
        assert record["teacher"]["source"] == "trained"
        tweights = safe_torch_load(tmp_path / record["teacher"]["run_id"] / "final.pt", "weights")["models"]
        assert {t.dtype for t in tweights["model"].values() if t.is_floating_point()} == {torch.float64}
    else:
        assert seen == {"batches": {torch.float64}, "logits": {torch.float64}}
        assert record["ensemble"]["final_test_acc"] is not None
    assert torch.get_default_dtype() == torch.float32
    assert torch.get_num_threads() == threads


def test_float32_runs_keep_float32_batches_and_weights(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    config = run_config("individual", data, **{"train.epochs": 1, "data.train_subset": 16})
    record = Runner(tmp_path, data_root=root, device="cpu").run(config)
    assert record["precision"] == "float32" and "speed" not in record["config"]
    weights = safe_torch_load(tmp_path / record["run_id"] / "final.pt", "weights")["models"]["model"]
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
