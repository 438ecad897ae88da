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
    assert "last5_mean" in logged["columns"]  # the second statistic reaches W&B too
    (paired_json,) = (tmp_path / "wb").glob("wandb/offline-run-*/files/media/table/paired_comparisons_*.table.json")
    columns = json.loads(paired_json.read_text())["columns"]
    assert {"p_holm", "last5_diff_mean", "last5_p_holm", "statistics"} <= set(columns)
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
    from mutualbench.analysis.publish import log_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    record = json.loads(next((study / "runs").glob("mutual-*.json")).read_text())
    log_run(record, project="mutualbench-test")
    keys = ("test_acc/student1", "train_loss/student2", "final_test_acc/student1", record["run_id"])
    data = _offline_stream(tmp_path)  # the offline run's record stream holds the logged keys
    for key in keys:
        assert key.encode() in data


def _offline_stream(wandb_dir, wait_s: float = 60.0) -> bytes:
    """The bytes of the one offline run's record stream under ``wandb_dir``, once written.

    ``run.finish()`` returns when the run's exit is recorded; W&B's service closes (and so
    flushes) the stream file after that, in its own process. ``wandb.teardown()`` waits for
    the service to stop; the poll covers a service that stops before its writer is done."""
    import time

    import wandb

    wandb.teardown()
    deadline = time.monotonic() + wait_s
    while True:
        files = list(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) <= 1, files
        data = files[0].read_bytes() if files else b""
        if len(data) > 64 or time.monotonic() > deadline:  # more than the stream's 7-byte header
            return data
        time.sleep(0.2)


def _fake_wandb(monkeypatch, init):
    """A stand-in ``wandb`` module whose ``init`` is ``init(settings, **kwargs)``."""
    import types

    module = types.ModuleType("wandb")

    class Settings:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    module.Settings = Settings
    module.init = lambda settings=None, **kwargs: init(settings, **kwargs)
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("MUTUALBENCH_NET_TIMEOUT", "0.3")


def _hangs_then_times_out(settings, **kwargs):
    import time

    time.sleep(settings.init_timeout)  # wandb waits init_timeout seconds for its backend, then gives up
    raise RuntimeError(f"Run initialization has timed out after {settings.init_timeout} sec. Please try increasing "
                       "the timeout with the `init_timeout` setting")


def _refused(settings, **kwargs):
    raise ConnectionRefusedError(111, "Connection refused")


def _folder_state(folder):
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("init,message", [(_hangs_then_times_out, "no answer within 0.3 s; set MUTUALBENCH_NET_TIMEOUT"),
                                          (_refused, "ConnectionRefusedError: [Errno 111] Connection refused")])
def test_publish_that_cannot_start_rewrites_no_table_file(study, monkeypatch, capsys, init, message):
    import os

    for path in study.rglob("*"):  # an old mtime: a rewrite with the same bytes still shows
        if path.is_file():
            os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = _folder_state(study)
    assert {"table.md", "table.csv", "curves.png"} <= set(before)
    _fake_wandb(monkeypatch, init)
    assert main(["publish", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: could not start the W&B run 'tiny-smoke' for ")
    assert message in err and err.rstrip().endswith(f"nothing in {study} was changed")
    assert _folder_state(study) == before


def test_publish_passes_the_timeout_and_writes_tables_only_after_init(study, monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def init(settings, **kwargs):
        seen["timeout"] = settings.init_timeout
        seen["table_mtime"] = (study / "table.md").stat().st_mtime_ns
        raise Stop("the test ends here")

    _fake_wandb(monkeypatch, init)
    import os

    os.utime(study / "table.md", ns=(1_000_000_000, 1_000_000_000))
    with pytest.raises(Exception, match="the test ends here"):
        from mutualbench.analysis.publish import publish

        publish(study)
    assert seen == {"timeout": 0.3, "table_mtime": 1_000_000_000}


def test_log_run_that_cannot_start_is_a_one_line_user_error(study, monkeypatch):
    from mutualbench.analysis.publish import log_run
    from mutualbench.core.errors import UserError

    _fake_wandb(monkeypatch, _hangs_then_times_out)
    record = json.loads(next((study / "runs").glob("mutual-*.json")).read_text())
    with pytest.raises(UserError, match=f"could not start the W&B run '{record['run_id']}' \\(no answer within 0.3 s") as e:
        log_run(record)
    assert "\n" not in str(e.value) and "only its W&B copy is missing" in str(e.value)


def test_bad_net_timeout_fails_before_any_work(study, tiny_cifar, tmp_path, monkeypatch, capsys):
    def init(settings, **kwargs):
        raise AssertionError("wandb.init must not be reached")

    _fake_wandb(monkeypatch, init)
    monkeypatch.setenv("MUTUALBENCH_NET_TIMEOUT", "soon")
    before = _folder_state(study)
    assert main(["publish", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: MUTUALBENCH_NET_TIMEOUT='soon' is not a positive number")
    assert _folder_state(study) == before
    data, root = tiny_cifar
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    out = tmp_path / "study"
    assert main(["replicate", str(spec), "--profile", "smoke", "--data", str(data), "--data-root", str(root),
                 "--out", str(out), "--device", "cpu", "--seeds", "1", "--wandb", "--quiet"]) == 2
    assert "MUTUALBENCH_NET_TIMEOUT='soon'" in capsys.readouterr().err
    assert not list(out.glob("runs/*.json"))  # nothing was trained
