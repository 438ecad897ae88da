"""The shape of a study spec, as a typed model (pydantic): which tables and keys exist, and the
type of each value. ``check_shape(raw, path)`` raises a one-line ``UserError`` that names the
file, the key path, what is wrong and the fix, for the first shape error; what the values mean
(known methods, architectures and config keys, arms that exist) is checked in ``spec.py``.

Names that become parts of file or folder names (the study, arms, profiles, ablations and
their values) are ``safe_name``s: letters, digits, ``_``, ``.`` and ``-``, not starting with
``.`` or ``-``, without ``..``, at most 64 characters."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ..core.errors import UserError

MAX_SEEDS = 100  # the most seeds a study may run (``[study] seeds``, ``replicate --seeds``)
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = ("a name of letters, digits, _, . and - (not starting with . or -, no '..', at most 64 characters), "
             "since it becomes part of file names")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be part of a file name (None: it can)."""
    if not isinstance(name, str):
        return f"a {type(name).__name__}, not a string"
    if not name:
        return "empty"
    bad = "".join(sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "_.-"))}))
    if bad:
        return f"it has {bad!r}"
    if ".." in name:
        return "it has '..'"
    if name[0] in ".-":
        return f"it starts with {name[0]!r}"
    if not NAME_RE.match(name):
        return "it is longer than 64 characters"
    return None


def _safe_name(value: str) -> str:
    problem = name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def label_problem(value: object) -> str | None:
    """Why ``value`` cannot label a table row (a contrast, family or claim name, a claim's text;
    None: it can): a line break, another control character or a '|' would split or break the
    row of table.md it lands in."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}, not a string"
    bad = sorted({c for c in value if c == "|" or not c.isprintable()})
    return f"it has {''.join(bad)!r}, which would break the row of table.md it lands in" if bad else None


def _label(value: str) -> str:
    problem = label_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a {_toml_type(value)}, not a number")
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _percent(value: Any) -> Any:
    _number(value)
    if not 0 <= value <= 100:
        raise ValueError("an accuracy in percent is between 0 and 100")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]
Label = Annotated[str, AfterValidator(_label)]  # a name or text shown in a table row
Number = Annotated[float, BeforeValidator(_number)]
Percent = Annotated[float, BeforeValidator(_percent)]
Settings = dict[str, Any]  # config keys; what they mean is checked against the config schema


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StudyTable(_Table):
    name: SafeName
    description: str = ""
    seeds: Annotated[int, Field(ge=1, le=MAX_SEEDS)] = 3
    data: str = None  # type: ignore[assignment]  # required; spec.py says how to give it
    classes: list[str] = None  # type: ignore[assignment]


class Arm(_Table):
    name: SafeName
    method: str
    arch: str
    cohort: int = None  # type: ignore[assignment]  # its range is the config's (cohort >= 1)
    set: Settings = {}
    published: dict[str, Percent] = {}
    # the members the arm is compared on (default: those its method declares); spec.py checks them
    compare: Annotated[list[str], Field(min_length=1)] = None  # type: ignore[assignment]
    description: str = ""
    profiles: dict[str, Settings] = None  # type: ignore[assignment]


class Profile(_Table):
    description: str = ""
    tolerance: Annotated[Number, Field(ge=0)]
    seeds: Annotated[int, Field(ge=1, le=MAX_SEEDS)] = None  # type: ignore[assignment]  # default: [study] seeds
    # a float64 profile's loss tolerance in the exact comparison (default mutualbench.analysis.exact.LOSS_RTOL)
    loss_rtol: Annotated[Number, Field(gt=0, lt=1)] = None  # type: ignore[assignment]
    # the smallest effect that matters, in accuracy points: a claim's test equivalent within
    # +-delta (two one-sided tests) reads "negligible" (mutualbench.analysis.claims); none: never
    delta: Annotated[Number, Field(gt=0)] = None  # type: ignore[assignment]
    # a run whose every compared model ends at or below this test accuracy (percent) failed to
    # train: listed, kept out of means and paired tests, counted as run (analysis.results)
    failed_below: Annotated[Number, Field(ge=0, lt=100)] = None  # type: ignore[assignment]
    set: Settings = {}


class Comparison(_Table):
    a: str
    b: str
    family: Label = ""


class Contrast(_Table):
    name: Label
    weights: dict[str, Number]
    description: str = ""
    family: Label = ""


class Ablation(_Table):
    name: SafeName
    arms: Annotated[list[str], Field(min_length=1)]
    values: Annotated[dict[SafeName, Settings], Field(min_length=1)]
    description: str = ""
    opt_in: bool = False


class SpecModel(_Table):
    study: StudyTable
    defaults: Settings = {}
    assumptions: dict[str, str] = {}
    arms: Annotated[list[Arm], Field(min_length=1)]
    comparisons: list[Comparison] = []
    contrasts: list[Contrast] = []
    ablations: list[Ablation] = []
    profiles: Annotated[dict[SafeName, Profile], Field(min_length=1)]
    # the claims a replication makes (a comparison or contrast, its expected sign, the rule, the
    # published number): free-form tables, their meaning checked where they are used
    claims: list[dict[str, Any]] = []


# What each key must be, and an example: keyed by the key path with list indices and table
# names (profiles, ablation values, published members, contrast weights) as "*".
HELP: dict[tuple, tuple[str, str]] = {
    ("study",): ("a table", '[study] with name = "...", data = "cifar10"'),
    ("study", "name"): (NAME_RULE, 'name = "seed_blog"'),
    ("study", "description"): ("a string", 'description = "..."'),
    ("study", "seeds"): (f"a positive integer (the number of seeds), at most {MAX_SEEDS}", "seeds = 3"),
    ("study", "data"): ("a string: cifar10, cifar100 or another data set's name with its classes", 'data = "cifar10"'),
    ("study", "classes"): ("a list of class names in label order", 'classes = ["ant", "bee"]'),
    ("defaults",): ("a table of config keys", '[defaults] "train.epochs" = 30'),
    ("assumptions",): ("a table of config keys, each with the reason for its value", '"data.flip" = "not stated; ..."'),
    ("assumptions", "*"): ("a string: the reason for the value", '"data.flip" = "not stated; ..."'),
    ("arms",): ("[[arms]] tables, at least one", '[[arms]] name = "student"'),
    ("arms", "*"): ("a table ([[arms]]) with name, method and arch", '[[arms]] name = "student"'),
    ("arms", "*", "name"): (NAME_RULE, 'name = "student"'),
    ("arms", "*", "method"): ("a method's name (see `mutualbench methods`)", 'method = "individual"'),
    ("arms", "*", "arch"): ("an architecture's name, or a comma-separated list of them (see `mutualbench archs`)",
                            'arch = "resnet32" (see `mutualbench archs`)'),
    ("arms", "*", "cohort"): ("an integer >= 1", "cohort = 2"),
    ("arms", "*", "set"): ("a table of config keys", 'set = { "train.epochs" = 30 }'),
    ("arms", "*", "published"): ("a table of each member's published accuracy in percent",
                                 "published = { model = 74.0 }"),
    ("arms", "*", "published", "*"): ("a number from 0 to 100 (a published accuracy in percent)", "model = 74.0"),
    ("arms", "*", "compare"): ("a non-empty list of the names of the members the arm is compared on",
                               'compare = ["branch1", "branch2", "branch3"]'),
    ("arms", "*", "compare", "*"): ("a member's name", '"branch1"'),
    ("arms", "*", "description"): ("a string", 'description = "..."'),
    ("arms", "*", "profiles"): ("a table naming the profiles the arm runs in, each with its own settings",
                                'profiles = { cpu = { "train.epochs" = 20 }, full = {} }'),
    ("arms", "*", "profiles", "*"): ("a table of config keys", 'cpu = { "train.epochs" = 20 }'),
    ("profiles",): ("[profiles.<name>] tables, at least one", "[profiles.smoke] tolerance = 0.5"),
    ("profiles", "*"): ("a table ([profiles.<name>]) with tolerance", "[profiles.smoke] tolerance = 0.5"),
    ("profiles", "*", "tolerance"): ("a finite number >= 0 (accuracy points)", "tolerance = 0.5"),
    ("profiles", "*", "loss_rtol"): ("a relative tolerance between 0 and 1, exclusive", "loss_rtol = 1e-6"),
    ("profiles", "*", "delta"): ("a number > 0: the smallest effect that matters, in accuracy points", "delta = 1.0"),
    ("profiles", "*", "failed_below"): ("a test accuracy in percent, from 0 up to 100: a run whose every compared "
                                        "model ends at or below it failed to train", "failed_below = 15.0"),
    ("profiles", "*", "description"): ("a string", 'description = "..."'),
    ("profiles", "*", "seeds"): (f"a positive integer (the seeds the profile plans: run when replicate --seeds is "
                                 f"not given, and the n at which its claims are decided), at most {MAX_SEEDS}",
                                 "seeds = 2"),
    ("profiles", "*", "set"): ("a table of config keys", 'set = { "train.epochs" = 2 }'),
    ("comparisons",): ("[[comparisons]] tables", '[[comparisons]] a = "dml", b = "student"'),
    ("comparisons", "*"): ("a table ([[comparisons]]) with a and b", '[[comparisons]] a = "dml", b = "student"'),
    ("comparisons", "*", "a"): ("an arm's name", 'a = "dml"'),
    ("comparisons", "*", "b"): ("an arm's name", 'b = "student"'),
    ("comparisons", "*", "family"): ("a one-line string without '|'", 'family = "main"'),
    ("contrasts", "*", "family"): ("a one-line string without '|'", 'family = "main"'),
    ("contrasts",): ("[[contrasts]] tables", '[[contrasts]] name = "...", weights = { a = 1, b = -1 }'),
    ("contrasts", "*"): ("a table ([[contrasts]]) with name and weights", 'weights = { a = 1, b = -1 }'),
    ("contrasts", "*", "name"): ("a one-line string without '|', unlike any comparison's \"a vs b\"",
                                 'name = "interaction"'),
    ("contrasts", "*", "weights"): ("a table of arm = weight", "weights = { dml = 1, student = -1 }"),
    ("contrasts", "*", "weights", "*"): ("a finite, non-zero number", "dml = 1"),
    ("contrasts", "*", "description"): ("a string", 'description = "..."'),
    ("ablations",): ("[[ablations]] tables", '[[ablations]] name = "...", arms = [...], values = { ... }'),
    ("ablations", "*"): ("a table ([[ablations]]) with name, arms and values", 'arms = ["student"]'),
    ("ablations", "*", "name"): (NAME_RULE, 'name = "augmentation"'),
    ("ablations", "*", "arms"): ("a non-empty list of the names of the arms it varies", 'arms = ["student", "dml"]'),
    ("ablations", "*", "arms", "*"): ("an arm's name", '"student"'),
    ("ablations", "*", "values"): ("a table of value names, each a table of config keys",
                                   'values = { on = {}, off = { "data.flip" = false } }'),
    ("ablations", "*", "values", "*"): ("a table of config keys", 'off = { "data.flip" = false }'),
    ("ablations", "*", "description"): ("a string", 'description = "..."'),
    ("ablations", "*", "opt_in"): ("true (the ablation runs only when replicate --ablations names it) or false",
                                   "opt_in = true"),
    ("claims",): ("[[claims]] tables", '[[claims]] name = "..."'),
    ("claims", "*"): ("a table ([[claims]])", '[[claims]] name = "..."'),
}
NAMED = {"profiles", "values", "published", "weights", "assumptions"}  # tables whose keys are names
ARRAYS = ("arms", "comparisons", "contrasts", "ablations", "claims")


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, str):
        return repr(value)
    text = json.dumps(value, default=str) if isinstance(value, list) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _normal(loc: tuple) -> tuple:
    out = []
    for i, part in enumerate(loc):
        named = i > 0 and loc[i - 1] in NAMED
        out.append("*" if isinstance(part, int) or (named and isinstance(part, str)) else part)
    return tuple(out)


def _help(loc: tuple) -> tuple[str, str]:
    key = _normal(loc)
    while key and key not in HELP:
        key = key[:-1]
    return HELP.get(key, ("of the right type", ""))


def _where(loc: tuple, raw: dict) -> tuple[str, tuple]:
    """The table a key path lies in, as a reader of the TOML file sees it, and the rest of the path."""
    head = loc[0] if loc else ""
    if head in ARRAYS and len(loc) >= 3 and isinstance(loc[1], int):
        item = (raw.get(head) or [None] * (loc[1] + 1))[loc[1]]
        name = item.get("name") if isinstance(item, dict) else None
        return f"[[{head}]] #{loc[1] + 1}" + (f" ({name})" if isinstance(name, str) and name else ""), loc[2:]
    if head == "profiles" and len(loc) >= 3 and loc[2] != "[key]":
        return f"[profiles.{loc[1]}]", loc[2:]
    if head in ("study", "defaults", "assumptions") and len(loc) >= 2:
        return f"[{head}]", loc[1:]
    return "", loc


def _value_at(raw: Any, loc: tuple) -> Any:
    node = raw
    for part in loc:
        if part == "[key]":
            break
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _message(error: dict, raw: dict, path: Path) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    where, rest = _where(loc, raw)
    at = f"{where} " if where else ""
    if kind == "extra_forbidden":
        parent = _value_at(raw, loc[:-1])
        model = _model_at(loc[:-1])
        allowed = ", ".join(sorted(model.model_fields)) if model is not None else ""
        unknown = sorted(set(parent) - set(model.model_fields)) if model is not None and isinstance(parent, dict) \
            else [str(loc[-1])]
        return (f"{path}: unknown key(s) {', '.join(unknown)} in {where or 'the top level'}; "
                f"allowed: {allowed}")
    must, example = _help(loc)
    if kind == "missing":
        table = where or ("the top level" if len(loc) == 1 else f"[{loc[0]}]")
        return f"{path}: {table} needs {str(loc[-1])!r}, e.g. {example}" if example else \
            f"{path}: {table} needs {str(loc[-1])!r}"
    if rest and rest[-1] == "[key]":
        key = ".".join(str(p) for p in rest[:-2])
        reason = error["msg"].removeprefix("Value error, ")
        return (f"{path}: {at}{key}: the name {rest[-2]!r} is not allowed ({reason}); it must be {NAME_RULE}"
                + (f", e.g. {example}" if example else ""))
    value = _value_at(raw, loc)
    if len(loc) == 2 and loc[0] in ARRAYS and isinstance(loc[1], int):  # an entry that is not a table
        rest = (f"[[{loc[0]}]] #{loc[1] + 1}",)
    key = ".".join(str(p + 1) if isinstance(p, int) else str(p) for p in rest)
    if not key:  # the table itself has the wrong shape, e.g. an [[arms]] entry that is a number
        key = where or str(loc[0])
        at = ""
    reason = f" ({error['msg'].removeprefix('Value error, ')})" if kind == "value_error" else ""
    return f"{path}: {at}{key} = {_show(value)} is not allowed{reason}; it must be {must}" + (
        f", e.g. {example}" if example else "")


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model class of the table at ``loc`` (None when that table is free-form)."""
    model: Any = SpecModel
    skip = False
    for part in loc:
        if skip:
            skip = False
            continue
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        nested = {"study": StudyTable, "arms": Arm, "profiles": Profile, "comparisons": Comparison,
                  "contrasts": Contrast, "ablations": Ablation}
        if model is SpecModel and part in nested:
            model, skip = nested[part], part != "study"
        else:
            return None
    return model


def check_shape(raw: dict, path: Path) -> SpecModel:
    """Validate the shape of a parsed spec; the first problem is a one-line ``UserError``."""
    try:
        return SpecModel.model_validate(raw)
    except ValidationError as e:
        raise UserError(_message(e.errors()[0], raw, path)) from None
