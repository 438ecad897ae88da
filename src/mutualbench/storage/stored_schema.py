"""The shape of what a study folder stores, as typed models (pydantic, like ``spec_schema``): a
run record (``runs/<run_id>.json``) and a study manifest (``study.json``). Both are untrusted
input: a file edited by hand, damaged, or written by another version is checked here before
any table, claim, comparison or status reads it, so what it cannot be is a one-line error
that names the key path (``curves[3].test_acc.model = "abc" is a string, not an accuracy in
percent``), never a traceback or a silently wrong number.

Beyond each value's type, what a type cannot say is cross-checked:

* a complete record has at least one model; its curves number its epochs (the sum of its
  ``stages``' epochs, where recorded) in order, each epoch in the stage the stages say, and
  carry every model's test accuracy at every epoch (no other model's); each model's final
  accuracy is its last epoch's; the ensemble's members are models of the run;
* a manifest's profile is one of its spec's profiles, every run entry's seed one of its
  seeds, no (arm, seed, ablation, value) listed twice, a contrast's weights sum to 0
  (relative to the largest weight: 1e-10 - 2e-10 does not);
* a record agrees with the manifest that lists it (``record_entry_problem``): the same seed,
  method and data set.

``records.validate_record`` and ``results.load_manifest``/``load_records`` (and ``study``'s
``read_manifest``) apply these; their error messages name the file and how to restore it.
Unknown keys are allowed (records and manifests gain keys over versions); known keys must
have their type."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from .spec_schema import label_problem

SCHEMA_VERSION = 1  # of records and manifests alike
REL_SUM = 1e-9  # a contrast's weights sum to 0 within this fraction of its largest weight

# ----------------------------------------------------------------------------- values


def _what(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def show(value: Any) -> str:
    """A value as JSON, cut to 60 characters."""
    try:
        text = json.dumps(value, default=str, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is(value: Any) -> str:
    """``= "abc" is a string`` (a value with its kind), ``is null`` or ``is a list``."""
    if value is None or isinstance(value, (list, dict)):
        return f"is {_what(value)}"
    return f"= {show(value)} is {_what(value)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _leaf(expected: str, ok: Callable[[Any], bool], nullable: bool = False,
          bound: Callable[[Any], str | None] | None = None):
    """A JSON leaf of kind ``expected`` (``ok`` says whether a value has that kind), optionally
    null, with ``bound`` saying what is wrong with a value of the right kind (a range)."""
    def validate(value: Any) -> Any:
        if value is None and nullable:
            return value
        if not ok(value):
            raise PydanticCustomError("stored", "{problem}",
                                      {"problem": f"{_is(value)}, not {expected}" + (" or null" if nullable else "")})
        problem = bound(value) if bound is not None else None
        if problem:
            raise PydanticCustomError("stored", "{problem}", {"problem": f"= {show(value)} {problem}"})
        return value
    return Annotated[Any, BeforeValidator(validate)]


def _finite(value: Any) -> str | None:
    return None if math.isfinite(value) else "is not a finite number"


def _at_least(low: float) -> Callable[[Any], str | None]:
    def bound(value: Any) -> str | None:
        return _finite(value) or (f"is below {low:g}" if value < low else None)
    return bound


def _percent(value: Any) -> str | None:
    return _finite(value) or (None if 0 <= value <= 100 else "is not an accuracy in percent (0 to 100)")


def _label(value: Any) -> str | None:
    problem = label_problem(value)
    return f"cannot label a table row ({problem})" if problem else None


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str(value: Any) -> bool:
    return isinstance(value, str)


Text = _leaf("a string", _str)
OptText = _leaf("a string", _str, nullable=True)
Label = _leaf("a string", _str, bound=_label)
Bool = _leaf("true or false", lambda v: isinstance(v, bool))
Count = _leaf("an integer >= 0", _int, bound=_at_least(0))  # seeds, parameters, epochs of a stage
OptCount = _leaf("an integer >= 0", _int, nullable=True, bound=_at_least(0))
Ordinal = _leaf("an integer >= 1", _int, bound=_at_least(1))  # an epoch's number
OptOrdinal = _leaf("an integer >= 1", _int, nullable=True, bound=_at_least(1))
Number = _leaf("a number", _is_number, bound=_finite)
OptNumber = _leaf("a number", _is_number, nullable=True, bound=_finite)
Seconds = _leaf("a number of seconds >= 0", _is_number, bound=_at_least(0))
OptSeconds = _leaf("a number of seconds >= 0", _is_number, nullable=True, bound=_at_least(0))
Percent = _leaf("an accuracy in percent (a number from 0 to 100)", _is_number, bound=_percent)
OptPercent = _leaf("an accuracy in percent (a number from 0 to 100)", _is_number, nullable=True, bound=_percent)
Tolerance = _leaf("a number >= 0", _is_number, bound=_at_least(0))


def _positive(value: Any) -> str | None:
    return _finite(value) or (None if value > 0 else "is not above 0")


Positive = _leaf("a number > 0", _is_number, bound=_positive)
OptPositive = _leaf("a number > 0", _is_number, nullable=True, bound=_positive)
PositiveInt = _leaf("an integer >= 1", _int, nullable=True, bound=_at_least(1))


class _Stored(BaseModel):
    # unknown keys are kept and not checked: records and manifests gain keys over versions
    model_config = ConfigDict(extra="allow")


# ----------------------------------------------------------------------------- run records


class CurvePoint(_Stored):
    """One epoch of a run's curves (``engine.Engine``)."""

    epoch: Ordinal
    stage: Text
    test_acc: dict[str, Percent]
    train_loss: dict[str, Number] = None  # type: ignore[assignment]
    train_loss_terms: dict[str, dict[str, Number]] = None  # type: ignore[assignment]
    stage_epoch: Ordinal = None
    train_s: OptSeconds = None
    eval_s: OptSeconds = None
    images_per_s: OptNumber = None


class ModelResult(_Stored):
    role: Text = None
    arch: Text
    params: Count
    final_test_acc: Percent
    best_test_acc_test_selected: Percent
    best_epoch_test_selected: OptOrdinal = None


class Ensemble(_Stored):
    members: list[Text]
    params: Count
    final_test_acc: OptPercent
    final_test_nll: OptNumber = None


class Stage(_Stored):
    name: Text
    epochs: Count


class Segment(_Stored):
    machine: Text
    first_epoch: Ordinal
    last_epoch: Ordinal


class CpuInfo(_Stored):
    model: Text = None
    isa: Text = None
    bf16_native: Bool = None
    bf16_flags: list[Text] = None  # type: ignore[assignment]
    threads: OptCount = None


class Env(_Stored):
    device: Text
    cpu: CpuInfo | None = None
    cuda: OptText = None
    git_commit: OptText = None
    torch: OptText = None
    python: OptText = None
    platform: OptText = None
    mutualbench: OptText = None
    load_avg_1m_at_start: OptNumber = None


class Timings(_Stored):
    train_s: Seconds
    eval_s: OptSeconds = None
    wall_s_this_process: OptSeconds = None
    images_per_s_train: OptNumber = None
    load_avg_1m_at_end: OptNumber = None


class RecordData(_Stored):
    """The data set a run read: its name (an archive's stem, say) and checksum."""

    name: Text = None
    sha256: Text = None
    source: OptText = None
    classes: list[Text] = None  # type: ignore[assignment]
    mean: list[Number] = None  # type: ignore[assignment]
    std: list[Number] = None  # type: ignore[assignment]


class RecordConfig(_Stored):
    method: Text
    seed: Count = None


class Teacher(_Stored):
    arch: Text = None
    params: OptCount = None
    run_id: Text = None
    source: Text = None
    final_test_acc: OptPercent = None


class FailedRecord(_Stored):
    """What is read of a failed run's record (``status``: its error)."""

    run_id: Text
    status: Text
    error: OptText = None


class CompleteRecord(FailedRecord):
    """A complete run's record: what the tables, claims and comparisons read."""

    seed: Count
    method: Text = None
    precision: OptText = None
    config: RecordConfig
    data: RecordData
    teacher: Teacher | None = None
    models: dict[str, ModelResult]
    curves: list[CurvePoint]
    stages: list[Stage] = None  # type: ignore[assignment]  # records made before stages existed have none
    segments: list[Segment] = None  # type: ignore[assignment]
    ensemble: Ensemble | None = None
    timings: Timings
    env: Env
    resumed_from_epoch: OptCount = None
    started_at: OptText = None
    finished_at: OptText = None


def _path(loc: tuple) -> str:
    """A key path as the messages write it: ``curves[3].test_acc.model``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_CONTAINERS = {"model_type": "an object", "model_attributes_type": "an object", "dict_type": "an object",
               "list_type": "a list"}


def _problem(error: dict) -> str:
    """One pydantic error as ``<key path> <what is wrong>``."""
    path, kind = _path(tuple(error["loc"])), error["type"]
    if kind == "missing":
        return f"{path} is missing"
    if kind == "stored":
        return f"{path} {error['msg']}"
    if kind in _CONTAINERS:
        return f"{path} {_is(error.get('input'))}, not {_CONTAINERS[kind]}"
    return f"{path}: {error['msg']}"


def shape_problem(model: type[BaseModel], raw: dict) -> str | None:
    """The first key of ``raw`` that does not have the shape ``model`` says (None: it has)."""
    try:
        model.model_validate(raw)
    except ValidationError as e:
        return _problem(e.errors()[0])
    except RecursionError:
        return "it is nested too deeply"
    return None


def record_shape_problem(record: dict) -> str | None:
    """What in a record (already known to be an object with its required fields, ``records``)
    does not have its type: a complete record's every field, a failed one's error."""
    return shape_problem(CompleteRecord if record.get("status") == "complete" else FailedRecord, record)


def _names(names) -> str:
    return ", ".join(names) if names else "none"


def record_consistency_problem(record: dict) -> str | None:
    """What a complete record of the right shape cannot be (None: nothing): see the module."""
    models, curves = record["models"], record["curves"]
    if not models:
        return "models = {}: a complete run records at least one model"
    stages = record.get("stages")
    if stages is not None:
        planned = [s["name"] for s in stages for _ in range(s["epochs"])]
        if len(curves) != len(planned):
            said = ", ".join(f"{s['name']} {s['epochs']}" for s in stages) or "none"
            return (f"curves has {len(curves)} epoch{'s' if len(curves) != 1 else ''}, but the run's stages "
                    f"({said}) have {len(planned)}")
    else:
        planned = None
    for i, point in enumerate(curves):
        if point["epoch"] != i + 1:
            return f"curves[{i}].epoch = {show(point['epoch'])}, but it is the run's epoch {i + 1}"
        if planned is not None and point["stage"] != planned[i]:
            return f"curves[{i}].stage = {show(point['stage'])}, but the run's stages put epoch {i + 1} in {planned[i]!r}"
        other = [m for m in point["test_acc"] if m not in models]
        if other:
            return (f"curves[{i}].test_acc.{other[0]} is not one of the run's models "
                    f"({_names(list(models))})")
    for name, m in models.items():
        seen = [i for i, point in enumerate(curves) if name in point["test_acc"]]
        if len(seen) != len(curves):
            missing = next(i for i in range(len(curves)) if i not in seen)
            return (f"models.{name} has a test accuracy at {len(seen)} of the run's {len(curves)} epochs "
                    f"(none at curves[{missing}])")
        if curves:
            last = curves[-1]["test_acc"][name]
            if not math.isclose(m["final_test_acc"], last, rel_tol=0, abs_tol=1e-9):
                return (f"models.{name}.final_test_acc = {show(m['final_test_acc'])}, but its last epoch says "
                        f"curves[{len(curves) - 1}].test_acc.{name} = {show(last)}")
    ensemble = record.get("ensemble")
    if ensemble is not None:
        for i, member in enumerate(ensemble["members"]):
            if member not in models:
                return f"ensemble.members[{i}] = {show(member)} is not one of the run's models ({_names(list(models))})"
    return None


def record_entry_problem(record: dict, entry: dict, manifest: dict) -> str | None:
    """What in a record (checked) contradicts the manifest entry that lists it (checked): its
    seed, its method, and its data set (the checksum where both have one, else the name; a
    copy of the data renamed keeps its checksum, so the name alone may differ)."""
    if record["seed"] != entry["seed"]:
        return f"seed = {show(record['seed'])}, but the study's manifest lists this run as seed {show(entry['seed'])}"
    method = (record.get("config") or {}).get("method")
    if record["status"] == "complete" and entry.get("method") is not None and method != entry["method"]:
        return f"config.method = {show(method)}, but the study's manifest lists this run as {show(entry['method'])}"
    data, ours = record.get("data") or {}, manifest.get("data") or {}
    for key in ("sha256", "name"):
        if isinstance(data, dict) and data.get(key) is not None and ours.get(key) is not None:
            if data[key] != ours[key]:
                return (f"data.{key} = {show(data[key])} is not the study's data set ({ours.get('name')}, sha256 "
                        f"{str(ours.get('sha256'))[:16]}...): the run read another data set")
            break  # the checksum decides where both have one
    return None


# ----------------------------------------------------------------------------- study manifests


class ManifestEntry(_Stored):
    run_id: Text
    arm: Text
    seed: Count
    ablation: OptText  # null: a main run
    value: OptText
    method: OptText = None


class Asked(_Stored):
    """What the ``replicate`` that wrote the manifest asked for (``study.plan_study``)."""

    seeds: list[Count]
    ablations: list[Text]
    arms: list[Text] | None = None  # --arms; absent: every arm


class ManifestData(_Stored):
    name: Text
    sha256: Text
    source: OptText = None
    spec_data: OptText = None


class SpecStudy(_Stored):
    name: Text
    seeds: PositiveInt = None
    description: OptText = None


class SpecArm(_Stored):
    name: Text
    published: dict[str, Percent] = {}
    compare: list[Text] | None = None  # the members the comparisons average (results.compared_members)
    profiles: dict[str, Any] | None = None


class SpecProfile(_Stored):
    tolerance: Tolerance
    seeds: PositiveInt = None
    delta: OptPositive = None
    loss_rtol: OptPositive = None
    failed_below: OptPercent = None
    description: OptText = None


class SpecComparison(_Stored):
    a: Text
    b: Text
    family: Label = None


class SpecContrast(_Stored):
    name: Label
    weights: dict[str, Number]
    family: Label = None


class ManifestSpec(_Stored):
    """The parts of the stored spec that the tables, claims and comparisons read (the spec
    file itself is checked in full by ``spec_schema`` and ``spec`` when it is loaded)."""

    study: SpecStudy
    arms: list[SpecArm] = []
    profiles: dict[str, SpecProfile]
    comparisons: list[SpecComparison] = []
    contrasts: list[SpecContrast] = []
    ablations: list[dict[str, Any]] = []
    claims: list[dict[str, Any]] = []


class Manifest(_Stored):
    """A study manifest (``study.plan_study`` writes it)."""

    spec: ManifestSpec
    profile: Text
    seeds: list[Count]
    runs: list[ManifestEntry]
    data: ManifestData
    asked: Asked = None  # type: ignore[assignment]  # manifests written before it existed have none
    spec_path: OptText = None
    spec_sha256: OptText = None
    written_at: OptText = None


def _manifest_consistency_problem(manifest: dict) -> str | None:
    schema = manifest.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION or isinstance(schema, bool):
        return f"schema = {show(schema)} is not the supported {SCHEMA_VERSION}"
    spec, profile = manifest["spec"], manifest["profile"]
    if profile not in spec["profiles"]:
        return f"profile = {show(profile)} is not one of spec.profiles ({_names(list(spec['profiles']))})"
    for i, c in enumerate(spec.get("contrasts") or []):
        weights = c["weights"]
        if len(weights) < 2 or any(w == 0 for w in weights.values()):
            return f"spec.contrasts[{i}].weights = {show(weights)} are not non-zero weights of two arms or more"
        total = math.fsum(weights.values())
        if abs(total) > REL_SUM * max(abs(w) for w in weights.values()):  # relative: 1e-10 - 2e-10 is not 0
            return f"spec.contrasts[{i}].weights sum to {total:g}, not 0 (a contrast's weights sum to 0)"
    seeds, seen = set(manifest["seeds"]), {}
    for i, e in enumerate(manifest["runs"]):
        if e["seed"] not in seeds:
            return f"runs[{i}].seed = {show(e['seed'])} is not one of the study's seeds {show(manifest['seeds'])}"
        key = (e["arm"], e["seed"], e.get("ablation"), e.get("value"))
        if key in seen:
            return (f"runs[{i}] repeats runs[{seen[key]}] (arm {e['arm']}, seed {e['seed']}"
                    + (f", {e['ablation']}={e.get('value')}" if e.get("ablation") is not None else "") + ")")
        seen[key] = i
    return None


def manifest_problem(manifest: Any) -> str | None:
    """What makes a parsed manifest unusable, with the key's path (``runs[3].seed = "zero" is a
    string, not an integer >= 0``), or None: its shape (``Manifest``) and its cross-checks."""
    if not isinstance(manifest, dict):
        return f"{_what(manifest)}, not an object"
    return shape_problem(Manifest, manifest) or _manifest_consistency_problem(manifest)
