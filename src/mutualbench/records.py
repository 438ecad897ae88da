"""RunRecord: the versioned JSON a run leaves behind, and how to read one back safely."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .io_utils import atomic_write_json

SCHEMA_VERSION = 1
REQUIRED = ("schema", "run_id", "status", "config", "seed", "data", "models", "curves", "timings", "env")


def record_path(out_dir: Path, run_id: str) -> Path:
    return Path(out_dir) / f"{run_id}.json"


def write_record(out_dir: Path, record: dict) -> Path:
    path = record_path(out_dir, record["run_id"])
    atomic_write_json(path, record)
    return path


def validate_record(record: object, where: str = "record") -> dict:
    if not isinstance(record, dict):
        raise UserError(f"{where}: not a JSON object")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise UserError(f"{where}: missing fields {', '.join(missing)}")
    if record["schema"] != SCHEMA_VERSION:
        raise UserError(f"{where}: schema {record['schema']} is not the supported {SCHEMA_VERSION}")
    if record["status"] not in ("complete", "failed"):
        raise UserError(f"{where}: unknown status {record['status']!r}")
    return record


def read_record(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable run record ({e})") from None
    return validate_record(data, str(path))


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
