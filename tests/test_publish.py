import json
import sys

import pandas as pd
import pytest

from mutualbench.cli import main
from test_study import SPEC


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_cifar):
    data, root = tiny_cifar
    base = tmp_path_factory.mktemp("publish")
    spec = base / "tiny.toml"
    spec.write_text(SPEC)
    out = base / "study"
    assert main(["replicate", str(spec), "--profile", "smoke", "--data", str(data), "--data-root", str(root),
                 "--out", str(out), "--device", "cpu", "--seeds", "1", "--no-ablations", "--quiet"]) == 0
    return out


def test_publish_offline_writes_a_run_whose_table_matches_table_csv(study, tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    assert main(["publish", str(study), "--project", "mutualbench-test"]) == 0
    (table_json,) = (tmp_path / "wb").glob("wandb/offline-run-*/files/media/table/summary_table_*.table.json")
    logged = json.loads(table_json.read_text())
    csv = pd.read_csv(study / "table.csv")
    assert logged["columns"] == list(csv.columns)
    assert len(logged["data"]) == len(csv)
    col = logged["columns"].index("final_mean")
    assert [round(r[col], 4) for r in logged["data"]] == [round(v, 4) for v in csv["final_mean"]]
    assert list((tmp_path / "wb").glob("wandb/offline-run-*/run-*.wandb"))


def test_publish_without_credentials_changes_nothing(study, tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wbconfig"))
    before = sorted(p.name for p in study.iterdir())
    assert main(["publish", str(study)]) == 2
    assert "no W&B credentials" in capsys.readouterr().err
    assert sorted(p.name for p in study.iterdir()) == before and not (tmp_path / "wb").exists()


def test_publish_without_wandb_installed(study, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(["publish", str(study)]) == 2
    assert "wandb is not installed" in capsys.readouterr().err


def test_log_run_offline_logs_the_curves(study, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from mutualbench.publish import log_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    record = json.loads(next((study / "runs").glob("mutual-*.json")).read_text())
    log_run(record, project="mutualbench-test")
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    data = run_file.read_bytes()  # the offline run's record stream holds the logged keys
    for key in ("test_acc/student1", "train_loss/student2", "final_test_acc/student1", record["run_id"]):
        assert key.encode() in data
