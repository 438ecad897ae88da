"""RunRecord: the versioned JSON a run leaves behind (its shape is built here), and how to
read one back safely."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path

from ..core.errors import UserError
from .io_utils import atomic_write_json
from .stored_schema import record_consistency_problem, record_shape_problem

SCHEMA_VERSION = 1
REQUIRED = ("schema", "run_id", "status", "config", "seed", "data", "models", "curves", "timings", "env")
RUN_ID = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a run id names files: no separators
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


CHANNELS_LAST, NCHW = "channels-last", "NCHW"
LAYOUT_NOT_RECORDED = "not recorded"  # the layout of epochs whose segment predates layouts in segments


def record_layout(record: dict) -> str:
    """The memory layout a run's models trained in: ``channels-last``, ``NCHW``, or several in
    the order they ran (``NCHW + channels-last``: the hint epochs of a hint+DML run made before
    every stage honoured ``speed.channels_last``, or a run resumed in another layout). Read from
    the run's ``segments`` where they record each process's layout (a segment that does not is
    ``not recorded``), else from its stages: a stage that does not say trained in NCHW (the
    single-model stages did until they honoured the key); a record made before stages were
    recorded is read from its config (the cohort stages honoured ``speed.channels_last`` from
    the start). Float32 rounds differently in each layout, as on each kind of machine, so
    tables note an arm whose runs mix them."""
    segments = record.get("segments")
    if isinstance(segments, list) and any(isinstance(s, dict) and "layout" in s for s in segments):
        parts = [p for s in segments for p in str(s.get("layout") or LAYOUT_NOT_RECORDED).split(" + ")]
        return " + ".join(dict.fromkeys(parts))
    stages = record.get("stages")
    if stages is None:
        speed = (record.get("config") or {}).get("speed") or {}
        return CHANNELS_LAST if speed.get("channels_last") else NCHW
    layouts = [CHANNELS_LAST if s.get("channels_last") else NCHW for s in stages if s.get("epochs", 1)]
    return " + ".join(dict.fromkeys(layouts)) or NCHW


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
                  segments: list[dict] | None = None, error: str | None = None, ensemble: dict | None = None) -> dict:
    """Complete (or fail) a started record in place; returns it. ``ensemble``: a cohort's
    ensemble accuracy at the end (the mean of its members' softmaxes), where there is one.
    ``segments``: which machine trained which epochs (``engine.Engine``), where known."""
    record.update(status=status, models=models or {}, curves=curves, timings=timings, error=error)
    if status == "complete":
        record.update(stages=stages or [], resumed_from_epoch=resumed_from_epoch)
        if segments is not None:
            record["segments"] = segments
        record["layout"] = record_layout(record)
        if ensemble is not None:
            record["ensemble"] = ensemble
    record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return record


def record_path(out_dir: Path, run_id: str) -> Path:
    return Path(out_dir) / f"{run_id}.json"


def write_record(out_dir: Path, record: dict, root: Path | None = None) -> Path:
    """Write ``record`` as ``<out_dir>/<run_id>.json``, never through a symbolic link below
    ``root`` (default ``out_dir``: ``io_utils.safe_target``)."""
    path = record_path(out_dir, record["run_id"])
    atomic_write_json(path, record, root=root if root is not None else out_dir)
    return path


def validate_record(record: object, where: str = "record") -> dict:
    """``record`` if it has the shape of a RunRecord (``stored_schema.CompleteRecord``, or
    ``FailedRecord``) and a complete one is consistent (its curves number its epochs, each
    model's final accuracy is its last epoch's, ...); else a one-line UserError naming
    ``where`` and the key path. The first checks keep their messages: what is missing,
    malformed or impossible in the fields every reader needs."""
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
    problem = _field_problem(record)
    if problem:
        raise UserError(f"{where}: impossible run record ({problem})")
    # every other field's type (stored_schema's typed model), then what the types cannot say:
    # curves that number the run's epochs, final accuracies that are the last epoch's, ...
    problem = record_shape_problem(record)
    if problem:
        raise UserError(f"{where}: malformed run record ({problem})")
    problem = record_consistency_problem(record) if record["status"] == "complete" else None
    if problem:
        raise UserError(f"{where}: impossible run record ({problem})")
    return record


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _accuracy_problem(field: str, value: object, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not _is_number(value):
        return f"{field} = {json.dumps(value, default=str)} is not a number"
    if not 0 <= value <= 100:
        return f"{field} = {value} is not an accuracy in percent (0 to 100)"
    return None


def _field_problem(record: dict) -> str | None:
    """The first field of a record that cannot be true (types, ranges, consistency), or None."""
    if not RUN_ID.match(record["run_id"]):
        return f"run_id = {record['run_id']!r} is not a run id (<method>-<12 hex digits>; letters, digits, _ . - only)"
    seed = record["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        return f"seed = {json.dumps(seed, default=str)} is not a seed (an integer >= 0)"
    if record["status"] != "complete":
        return None
    if record["config"].get("seed", seed) != seed:
        return f"seed = {seed} but config.seed = {record['config'].get('seed')!r}"
    if not _is_number(record["timings"]["train_s"]) or record["timings"]["train_s"] < 0:
        return f"timings.train_s = {json.dumps(record['timings']['train_s'], default=str)} is not a duration in seconds"
    for name, m in record["models"].items():
        final, best = m["final_test_acc"], m["best_test_acc_test_selected"]
        problem = (_accuracy_problem(f"models.{name}.final_test_acc", final)
                   or _accuracy_problem(f"models.{name}.best_test_acc_test_selected", best))
        if problem:
            return problem
        if final > best + 1e-9:
            return (f"models.{name}.final_test_acc = {final} is above the run's best epoch, "
                    f"models.{name}.best_test_acc_test_selected = {best}")
        if not isinstance(m["params"], int) or isinstance(m["params"], bool) or m["params"] < 0:
            return f"models.{name}.params = {json.dumps(m['params'], default=str)} is not a parameter count"
    problem = _segments_problem(record)
    if problem:
        return problem
    ens = record.get("ensemble")
    if isinstance(ens, dict):
        problem = _accuracy_problem("ensemble.final_test_acc", ens.get("final_test_acc"), nullable=True)
        if problem:
            return problem
    return None


def _segments_problem(record: dict) -> str | None:
    """What is impossible about a complete record's ``segments`` (absent in records made before
    they existed): each a machine and a range of epochs, the ranges covering the curves' epochs
    in order without gap or overlap."""
    if "segments" not in record:
        return None
    segments, expected = record["segments"], 1
    if not isinstance(segments, list):
        return f"segments = {json.dumps(segments, default=str)[:80]} is not a list"
    for i, s in enumerate(segments):
        first, last = (s.get("first_epoch"), s.get("last_epoch")) if isinstance(s, dict) else (None, None)
        if not (isinstance(s, dict) and isinstance(s.get("machine"), str) and isinstance(first, int)
                and isinstance(last, int)):
            return f"segments[{i}] is not a machine with first_epoch and last_epoch"
        if not isinstance(s.get("layout", ""), str):
            return f"segments[{i}] has a layout that is not a string"
        if first != expected or last < first:
            return f"segments[{i}] covers epochs {first}-{last}, but the next epoch to cover is {expected}"
        expected = last + 1
    if segments and expected - 1 != len(record["curves"]):
        return f"segments cover epochs 1-{expected - 1}, but the run has {len(record['curves'])} epochs of curves"
    return None


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
    record = validate_record(data, str(path))
    if Path(path).name != f"{record['run_id']}.json":
        raise UserError(f"{path}: impossible run record (run_id = {record['run_id']!r} is not the run its file name "
                        f"says, {Path(path).stem!r})")
    return record


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
