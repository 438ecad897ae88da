"""RunRecord: the versioned JSON a run leaves behind (its shape is built here), and how to
read one back safely."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from .errors import UserError
from .io_utils import atomic_write_json

SCHEMA_VERSION = 1
REQUIRED = ("schema", "run_id", "status", "config", "seed", "data", "models", "curves", "timings", "env")
MODEL_FIELDS = ("arch", "params", "final_test_acc", "best_test_acc_test_selected")


def started_record(run_id: str, resolved: dict, data: dict, teacher: dict | None, precision: str,
                   started_at: datetime, env: dict) -> dict:
    """The record of a run as it starts: what runs (config, data, teacher, precision, machine)."""
    return {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "status": "running",
        "config": resolved,
        "method": resolved["method"],
        "seed": resolved["seed"],
        "data": data,
        "teacher": teacher or None,
        "precision": precision,
        "started_at": started_at.isoformat(timespec="seconds"),
        "env": env,
        "error": None,
    }


def model_result(role: str, arch: str, params: int, curves: list[dict], name: str) -> dict:
    """One model's result: its final-epoch test accuracy first; the best epoch only labelled
    as selected on the test set."""
    accs = [(e["epoch"], e["test_acc"][name]) for e in curves if name in e["test_acc"]]
    best_epoch, best = max(accs, key=lambda a: (a[1], -a[0])) if accs else (None, None)
    return {
        "role": role,
        "arch": arch,
        "params": params,
        "final_test_acc": accs[-1][1] if accs else None,
        "best_test_acc_test_selected": best,
        "best_epoch_test_selected": best_epoch,
    }


def finish_record(record: dict, *, status: str, curves: list[dict], timings: dict, models: dict | None = None,
                  stages: list[dict] | None = None, resumed_from_epoch: int | None = None,
                  error: str | None = None, ensemble: dict | None = None) -> dict:
    """Complete (or fail) a started record in place; returns it. ``ensemble``: a cohort's
    ensemble accuracy at the end (the mean of its members' softmaxes), where there is one."""
    record.update(status=status, models=models or {}, curves=curves, timings=timings, error=error)
    if status == "complete":
        record.update(stages=stages or [], resumed_from_epoch=resumed_from_epoch)
        if ensemble is not None:
            record["ensemble"] = ensemble
    record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return record


def record_path(out_dir: Path, run_id: str) -> Path:
    return Path(out_dir) / f"{run_id}.json"


def write_record(out_dir: Path, record: dict) -> Path:
    path = record_path(out_dir, record["run_id"])
    atomic_write_json(path, record)
    return path


def validate_record(record: object, where: str = "record") -> dict:
    """``record`` if it has the shape of a RunRecord; else a one-line UserError naming ``where``."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: not a run record (a JSON {type(record).__name__}, not an object)")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise UserError(f"{where}: not a complete run record (missing fields {', '.join(missing)})")
    if record["schema"] != SCHEMA_VERSION:
        raise UserError(f"{where}: schema {record['schema']} is not the supported {SCHEMA_VERSION}")
    if record["status"] not in ("complete", "failed"):
        raise UserError(f"{where}: unknown status {record['status']!r}")
    shapes = (("run_id", str), ("config", dict), ("data", dict), ("models", dict), ("curves", list),
              ("timings", dict), ("env", dict))
    wrong = [k for k, t in shapes if not isinstance(record[k], t)]
    if record["status"] == "complete" and not wrong:
        if not isinstance(record["config"].get("method"), str):
            wrong.append("config.method")
        if "train_s" not in record["timings"]:
            wrong.append("timings.train_s")
        if "device" not in record["env"]:
            wrong.append("env.device")
        for name, m in record["models"].items():
            if not isinstance(m, dict) or not all(k in m for k in MODEL_FIELDS):
                wrong.append(f"models.{name}")
    if wrong:
        raise UserError(f"{where}: malformed run record (wrong or missing {', '.join(wrong)})")
    return record


def read_record(path: Path) -> dict:
    """Read and check a RunRecord; any problem (unreadable, not UTF-8, not JSON, wrong shape)
    is a one-line UserError that names the file."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as e:
        raise UserError(f"{path}: unreadable run record ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: unreadable run record (not UTF-8 text: byte {e.object[e.start]:#04x} at offset "
                        f"{e.start})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: unreadable run record (not JSON: {e})") from None
    return validate_record(data, str(path))


def record_problem(out_dir: Path, run_id: str) -> str | None:
    """Why the record of ``run_id`` in ``out_dir`` cannot be used (None: absent or valid)."""
    path = record_path(out_dir, run_id)
    if not path.exists():
        return None
    try:
        read_record(path)
    except UserError as e:
        return str(e)
    return None


def complete_record(out_dir: Path, run_id: str) -> dict | None:
    """The record of ``run_id`` in ``out_dir`` if it exists, is valid and complete."""
    path = record_path(out_dir, run_id)
    if not path.exists():
        return None
    try:
        record = read_record(path)
    except UserError:
        return None
    return record if record["status"] == "complete" else None
