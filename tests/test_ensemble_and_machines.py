"""A cohort's ensemble accuracy (an extra, labelled row, never averaged into the cohort), and
the table's note where a comparison's runs came from different kinds of machine."""

import pandas as pd
import pytest
import torch

from conftest import run_config
from mutualbench.analysis.results import (
    ENSEMBLE,
    arm_accuracy,
    linear_contrasts,
    mixed_machine_notes,
    runs_frame,
)
from mutualbench.archs import create_arch
from mutualbench.data import load_dataset
from mutualbench.training.run import Runner


def test_a_cohort_records_its_ensemble_accuracy_by_hand(tmp_path, tiny_cifar):
    data, root = tiny_cifar
    runner = Runner(tmp_path / "runs", data_root=root, device="cpu")
    record = runner.run(run_config("mutual", data, cohort=3))
    ens = record["ensemble"]
    assert ens["members"] == ["student1", "student2", "student3"]
    assert ens["params"] == sum(record["models"][m]["params"] for m in ens["members"])
    # by hand: the saved weights, the whole test split, the mean of the three softmaxes
    ds = load_dataset(data, root=root)
    weights = torch.load(tmp_path / "runs" / record["run_id"] / "final.pt", weights_only=True)["models"]
    x = torch.from_numpy(ds.test_images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(ds.mean).view(1, 3, 1, 1)
    std = torch.tensor(ds.std).view(1, 3, 1, 1)
    x = (x - mean) / std
    probs = []
    for name in ens["members"]:
        model = create_arch("seed_vgg_student", ds.num_classes)
        model.load_state_dict(weights[name])
        model.eval()
        with torch.no_grad():
            probs.append(model(x).softmax(-1))
    by_hand = 100.0 * (torch.stack(probs).mean(0).argmax(-1) == torch.from_numpy(ds.test_labels)).float().mean().item()
    assert ens["final_test_acc"] == pytest.approx(by_hand)
    individual = runner.run(run_config("individual", data))
    assert "ensemble" not in individual


def test_the_ensemble_row_is_reported_but_not_averaged_into_the_cohort():
    manifest = {"runs": [{"arm": "dml_k3", "seed": 0, "run_id": "r0"}]}
    models = {f"student{k}": {"arch": "a", "params": 10, "final_test_acc": acc, "best_test_acc_test_selected": acc}
              for k, acc in ((1, 40.0), (2, 50.0), (3, 60.0))}
    record = {"status": "complete", "config": {"method": "mutual"}, "models": models,
              "timings": {"train_s": 1.0}, "env": {"device": "cpu"},
              "ensemble": {"members": list(models), "params": 30, "final_test_acc": 70.0}}
    df = runs_frame(manifest, {"r0": record})
    row = df[df["member"] == ENSEMBLE].iloc[0]
    assert row["final_acc"] == 70.0 and row["params"] == 30 and row["arch"] == "a+a+a"
    assert arm_accuracy(df)["final_acc"].tolist() == [50.0]  # the members' mean, not 55


def frame(machines: dict[str, list[str]]) -> pd.DataFrame:
    rows = [{"ablation": "main", "value": "", "arm": arm, "member": "model", "seed": s, "final_acc": 50.0 + s,
             "machine": m} for arm, kinds in machines.items() for s, m in enumerate(kinds)]
    return pd.DataFrame(rows)


def test_comparisons_and_contrasts_across_machine_kinds_are_named():
    df = frame({"a": ["X avx512"] * 3, "b": ["X avx512"] * 3, "c": ["Y avx2"] * 3})
    spec = {"comparisons": [{"a": "a", "b": "b"}, {"a": "a", "b": "c"}],
            "contrasts": [{"name": "k", "weights": {"a": 1, "b": 1, "c": -2}}]}
    assert mixed_machine_notes(df, spec) == ["a vs c: runs from X avx512 and Y avx2",
                                             "contrast k: runs from X avx512 and Y avx2"]
    assert mixed_machine_notes(frame({"a": ["X"] * 2, "b": ["X"] * 2}), {"comparisons": [{"a": "a", "b": "b"}]}) == []
    assert linear_contrasts(df, spec["contrasts"]).iloc[0]["n"] == 3


def test_machine_kinds_count_only_the_seeds_a_comparison_pairs():
    # "a" ran seeds 0-1 on X and seed 2 on Y; "b" only seed 0 (on X); "c" no seed at all
    df = frame({"a": ["X", "X", "Y"], "b": ["X"]})
    spec = {"comparisons": [{"a": "a", "b": "b"}, {"a": "c", "b": "a"}],
            "contrasts": [{"name": "k", "weights": {"a": 1, "c": -1}}]}
    assert mixed_machine_notes(df, spec) == []  # a vs b pairs seed 0 only, on X; c vs a and k are not computed
    df = frame({"a": ["X", "X", "Y"], "b": ["X", "X", "X"]})
    assert mixed_machine_notes(df, spec) == ["a vs b: runs from X and Y"]
