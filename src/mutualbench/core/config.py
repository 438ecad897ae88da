"""Run configuration: defaults, ``key=value`` overrides, validation and the run id.

A run is fully described by one nested dict (its *resolved config*). Every key has a
default here; overrides may only name keys that exist. Every caller composes a run's
config the same way, with ``compose_config``: ``mutualbench run``, a study's arm, a golden
case and a run's teacher. The run id is a hash of the canonical JSON of the resolved config
plus the data set's checksum, so identical runs share an id and anything that changes a
result changes the id.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import UserError


def adam(lr: float = 1e-3, betas=(0.9, 0.999)) -> dict:
    return {"name": "adam", "lr": lr, "betas": list(betas), "weight_decay": 0.0,
            "momentum": 0.9, "nesterov": False}


CONSTANT = {"name": "constant", "milestones": [], "gamma": 0.1}

# The method-independent part of a run's config. Each method's own section (``kd``,
# ``mutual``, ``hint``, ...) is declared in the method's file with ``register_section``;
# ``default_config()`` is this plus every registered section. The defaults are generic
# choices for a quick run (Adam 1e-3, a constant rate, the batch-mean loss, no teacher
# architecture), not any study's: a study spec states every setting it replicates.
BASE_DEFAULTS: dict[str, Any] = {
    "method": "individual",
    "arch": ["seed_vgg_student"],  # one per model; a cohort of one arch repeats it
    "cohort": 1,
    "seed": 0,
    "device": "auto",
    # How the trained models are initialised (the teacher is always PyTorch's default):
    # PyTorch's default for each layer, or He normal (fan-out, ReLU gain) with zero biases.
    "init": "pytorch_default",
    # Pretraining before the method's own stages: "none", or "hints" (FitNets hint
    # pretraining of every trained model from the teacher, the ``hint`` section).
    "pretrain": "none",
    "data": {
        "source": "cifar10",
        "train_subset": None,  # a fixed, seeded, class-balanced subset of the training split
        "test_subset": None,  # the same for the test split (None: all of it)
        "batch_size": 128,
        "flip": True,
        "crop_padding": 4,
        "normalize": True,  # per-channel mean/std of the training split
    },
    "loss": {"reduction": "mean"},  # "mean" over the batch, or "sum" (as the blog does)
    "train": {"epochs": 30, "optimizer": adam(1e-3), "schedule": dict(CONSTANT)},
    # Options of the fused cohort step (they change float rounding, so they are config), and
    # the precision every stage trains and evaluates in: "float32", or "float64" (the exact
    # tier: rounding differences between CPUs and thread counts stay near 1e-16, so results
    # agree across machines; several times slower on a CPU). bf16 autocast is its own flag.
    # channels_last: the memory layout of every stage's models and batches (the single-model
    # stages, supervised, KD, hints and ONE, in float32 runs only: float64 ones keep NCHW).
    # For a method without a speed section it is recorded, not hashed, like the machine.
    "speed": {"channels_last": True, "bf16": False, "compile": False, "compile_mode": None, "dtype": "float32"},
    # The teacher of methods that learn from one (``Method.needs_teacher``): trained as an
    # ``individual`` run with this section's ``train`` (same seed, data and loss), or loaded.
    "teacher": {
        "arch": None,  # required by methods with a teacher, e.g. seed_vgg_teacher
        "checkpoint": None,  # a path: load it instead of training the teacher
        "train": {"epochs": 30, "optimizer": adam(1e-3), "schedule": dict(CONSTANT)},
    },
}


@dataclass(frozen=True)
class KeyType:
    """The type and range of one config key. ``kind``: bool, int, number, choice, str,
    pair01 (two numbers in [0, 1)), int_list (increasing integers >= 1) or arch_list."""

    kind: str
    lo: float | None = None  # inclusive lower bound, or exclusive when lo_open
    hi: float | None = None  # exclusive upper bound
    lo_open: bool = False
    nullable: bool = False
    choices: tuple = ()
    odd: bool = False

    def allowed(self) -> str:
        if self.kind == "bool":
            text = "true or false"
        elif self.kind == "choice":
            text = "one of " + ", ".join("null" if c is None else str(c) for c in self.choices)
        elif self.kind == "pair01":
            text = "a pair of numbers in [0, 1), e.g. [0.9, 0.999]"
        elif self.kind == "int_list":
            text = "a list of increasing integers >= 1, e.g. [60, 120]"
        elif self.kind == "arch_list":
            text = "a list of architecture names (see `mutualbench archs`)"
        elif self.kind == "str":
            text = "a non-empty string"
        else:
            text = ("an odd integer" if self.odd else "an integer") if self.kind == "int" else "a number"
            bounds = []
            if self.lo is not None:
                bounds.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
            if self.hi is not None:
                bounds.append(f"< {self.hi:g}")
            if bounds:
                text += " " + " and ".join(bounds)
        return text + (", or null" if self.nullable and self.kind != "choice" else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable or (self.kind == "choice" and None in self.choices)
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if self.kind == "str":
            return isinstance(value, str) and bool(value.strip())
        if self.kind == "arch_list":
            return (isinstance(value, list) and bool(value) and all(isinstance(a, str) and a for a in value)) or (
                isinstance(value, str) and bool(value.strip(", ")))
        if self.kind == "pair01":
            return (isinstance(value, (list, tuple)) and len(value) == 2
                    and all(_is_number(v) and 0 <= v < 1 for v in value))
        if self.kind == "int_list":
            return (isinstance(value, list) and all(_is_int(v) and v >= 1 for v in value)
                    and all(a < b for a, b in zip(value, value[1:], strict=False)))
        if self.kind == "int" and not _is_int(value):
            return False
        if self.kind == "number" and not _is_number(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and value >= self.hi:
            return False
        return not (self.odd and value % 2 == 0)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def optimizer_keys(prefix: str) -> dict[str, KeyType]:
    return {
        f"{prefix}.epochs": KeyType("int", lo=1),
        f"{prefix}.optimizer.name": KeyType("choice", choices=("adam", "sgd")),
        f"{prefix}.optimizer.lr": KeyType("number", lo=0, lo_open=True),
        f"{prefix}.optimizer.betas": KeyType("pair01"),
        f"{prefix}.optimizer.weight_decay": KeyType("number", lo=0),
        f"{prefix}.optimizer.momentum": KeyType("number", lo=0, hi=1),
        f"{prefix}.optimizer.nesterov": KeyType("bool"),
        f"{prefix}.schedule.name": KeyType("choice", choices=("constant", "step", "cosine")),
        f"{prefix}.schedule.milestones": KeyType("int_list"),
        f"{prefix}.schedule.gamma": KeyType("number", lo=0, lo_open=True),
    }


# The largest cohort (members trained together; ONE's branches): the online-distillation papers
# use 2-5, and each member is a whole network in memory, so 100,000 is a typo, refused at once.
MAX_COHORT = 16

# ``init``: how the trained models are drawn. pytorch_default: each architecture's own
# initialisation (PyTorch's layer defaults, or the one the architecture states, e.g. the
# CIFAR ResNets' He fan-out); he_normal_fan_out: He normal (fan-out) for every convolution and
# linear layer; he_normal_conv: He normal (fan-out) for convolutions, BatchNorm 1 and 0, linear
# layers at PyTorch's default (torchvision's ResNet init). archs.he_normal_* say exactly.
INIT_CHOICES = ("pytorch_default", "he_normal_fan_out", "he_normal_conv")

# Every key of BASE_DEFAULTS, with its type and range (a test checks that the two cover each other).
BASE_SCHEMA: dict[str, KeyType] = {
    "method": KeyType("str"),
    "arch": KeyType("arch_list"),
    "cohort": KeyType("int", lo=1, hi=MAX_COHORT + 1),
    "seed": KeyType("int", lo=0),
    "device": KeyType("choice", choices=("auto", "cpu", "cuda")),
    "init": KeyType("choice", choices=INIT_CHOICES),
    "pretrain": KeyType("choice", choices=("none", "hints")),
    "data.source": KeyType("str"),
    "data.train_subset": KeyType("int", lo=1, nullable=True),
    "data.test_subset": KeyType("int", lo=1, nullable=True),
    "data.batch_size": KeyType("int", lo=1),
    "data.flip": KeyType("bool"),
    "data.crop_padding": KeyType("int", lo=0),
    "data.normalize": KeyType("bool"),
    "loss.reduction": KeyType("choice", choices=("sum", "mean")),
    **optimizer_keys("train"),
    "speed.channels_last": KeyType("bool"),
    "speed.bf16": KeyType("bool"),
    "speed.compile": KeyType("bool"),
    "speed.compile_mode": KeyType("choice", choices=(None, "default", "reduce-overhead", "max-autotune")),
    "speed.dtype": KeyType("choice", choices=("float32", "float64")),
    "teacher.arch": KeyType("str", nullable=True),
    "teacher.checkpoint": KeyType("str", nullable=True),
    **optimizer_keys("teacher.train"),
}


@dataclass(frozen=True)
class Section:
    """A config section owned by a method file: its defaults and the type of every key
    (keys relative to the section, e.g. ``temperature`` for ``kd.temperature``)."""

    name: str
    defaults: dict
    schema: dict[str, KeyType]


_SECTIONS: dict[str, Section] = {}


def register_section(name: str, defaults: dict, schema: dict[str, KeyType]) -> Section:
    """Declare config section ``name`` (called once, by the method file that owns it). Its
    keys become settable everywhere (``--set name.key=...``, specs) and are type-checked."""
    if name in BASE_DEFAULTS:
        raise ValueError(f"config section {name!r} is a built-in section")
    missing = set(leaf_keys(defaults)) ^ set(schema)
    if missing:
        raise ValueError(f"config section {name!r}: defaults and schema differ in {sorted(missing)}")
    section = Section(name, copy.deepcopy(defaults), dict(schema))
    old = _SECTIONS.get(name)
    if old is not None and old != section:
        raise ValueError(f"config section {name!r} is declared twice, with different defaults or types")
    _SECTIONS[name] = section
    return section


def unregister_section(name: str) -> None:
    """Remove a registered section (for tests that declare a throwaway method)."""
    _SECTIONS.pop(name, None)


def default_config() -> dict:
    """A fresh copy of the full default config: the built-in sections and every section a
    registered method declared (the package's ``__init__`` imports the methods, so every
    method's section is registered before any of this runs)."""
    config = copy.deepcopy(BASE_DEFAULTS)
    for name, section in _SECTIONS.items():
        config[name] = copy.deepcopy(section.defaults)
    return config


def config_schema() -> dict[str, KeyType]:
    """Every key of ``default_config()`` with its type and range."""
    schema = dict(BASE_SCHEMA)
    for name, section in _SECTIONS.items():
        schema.update({f"{name}.{k}": kt for k, kt in section.schema.items()})
    return schema


def check_value(key: str, value: Any, source: str = "config") -> None:
    """Raise a one-line ``UserError`` naming the key, the value and what is allowed."""
    kt = config_schema().get(key)
    if kt is not None and not kt.accepts(value):
        raise UserError(f"{source}: {key} = {json.dumps(value, default=str)} is not allowed; it must be {kt.allowed()}")


def parse_value(text: str) -> Any:
    """JSON literal if it parses (numbers, true/false/null, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lowered = text.strip().lower()
        if lowered in ("true", "false", "none"):
            return {"true": True, "false": False, "none": None}[lowered]
        return text


def set_key(config: dict, dotted: str, value: Any, source: str = "--set") -> None:
    node = config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            here = ".".join(parts[:i]) or "the top level"
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "none (not a section)"
            raise UserError(f"{source}: unknown config key {dotted!r} ({part!r} is not in {here}; known: {known})")
        if i == len(parts) - 1:
            if isinstance(node[part], dict) and not isinstance(value, dict):
                raise UserError(f"{source}: {dotted!r} is a section; set one of its keys: {', '.join(sorted(node[part]))}")
            if isinstance(node[part], dict):
                _check_table(dotted, node[part], value, source)
            node[part] = value
        else:
            node = node[part]


def _check_table(dotted: str, section: dict, value: dict, source: str) -> None:
    """A whole section given as a table replaces it, so it must give exactly the section's keys:
    an unknown key would be hashed into the run id and never used, a missing one would be lost."""
    unknown = sorted(set(value) - set(section))
    if unknown:
        raise UserError(f"{source}: {dotted}: unknown key(s) {', '.join(map(repr, unknown))} in the table (known: "
                        f"{', '.join(sorted(section))}); remove them")
    missing = [k for k in section if k not in value]
    if missing:
        raise UserError(f"{source}: {dotted}: the table leaves out {', '.join(missing)}; a table replaces the whole "
                        f"section, so give every key of it ({', '.join(section)}), or set single keys such as "
                        f"{dotted}.{missing[0]}")
    for key, sub in section.items():
        if isinstance(sub, dict):
            if not isinstance(value[key], dict):
                raise UserError(f"{source}: {dotted}.{key} is a section; give it as a table of its keys: "
                                f"{', '.join(sorted(sub))}")
            _check_table(f"{dotted}.{key}", sub, value[key], source)


def get_key(config: dict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def override_settings(overrides: Iterable[str], source: str = "--set") -> Iterator[tuple[str, dict]]:
    """``key=value`` strings (``--set``) as settings layers for ``apply_settings``, one per item,
    each parsed (``parse_value``) when it is reached, so the first bad item is the error."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"{source}: expected key=value, got {item!r} (e.g. --set kd.temperature=4)")
        key, value = item.split("=", 1)
        yield source, {key.strip(): parse_value(value.strip())}


def apply_overrides(config: dict, overrides: list[str], source: str = "--set") -> dict:
    """A copy of ``config`` with the ``key=value`` strings ``overrides`` set, in order."""
    return apply_settings(copy.deepcopy(config), override_settings(overrides, source))


def apply_settings(config: dict, layers: Iterable[tuple[str, dict]]) -> dict:
    """Set each layer's ``{dotted key: value}`` in ``config``, layer by layer, key by key, each
    value a copy; ``set_key``: a table replaces a whole section and must give all its keys, and
    an unknown key is an error naming the layer's source. Returns ``config``."""
    for source, settings in layers:
        for key, value in settings.items():
            set_key(config, key, copy.deepcopy(value), source)
    return config


def arch_names(arch: str | list[str], *, keep_empty: bool = False) -> list[str]:
    """The architectures an ``arch`` value names, in order: a list as it is (a copy), else the
    text split at its commas, empty names left out (``"a,b,"``: a and b) unless
    ``keep_empty`` (for a check that refuses them). The one reading of ``run --arch``, an
    arm's ``arch`` and a config's."""
    if isinstance(arch, list):
        return list(arch)
    names = str(arch).split(",")
    return names if keep_empty else [a for a in names if a]


def compose_config(method: str, arch: str | list[str], *, seed: int, data: str, cohort: int | None = None,
                   settings: Iterable[tuple[str, dict]] = ()) -> dict:
    """A run's full config, composed one way for every caller (``mutualbench run``, a study's
    arm: ``spec.arm_config``, a golden case: ``golden.case_config``, a run's teacher:
    ``run.teacher_config``): the defaults; the run's identity: its method, architectures
    (``arch_names``), cohort (default: one model per architecture), seed and data source;
    then the ``settings`` layers over them (``apply_settings``), in order."""
    config = default_config()
    archs = arch_names(arch)
    config.update(method=method, arch=archs, cohort=int(cohort if cohort is not None else len(archs)), seed=seed)
    config["data"]["source"] = data
    return apply_settings(config, settings)


def leaf_keys(config: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        if isinstance(v, dict):
            keys += leaf_keys(v, f"{prefix}{k}.")
        else:
            keys.append(f"{prefix}{k}")
    return keys


def validate(config: dict, source: str = "config") -> dict:
    """Type and range checks of every key (no registries needed); returns the config."""
    for key in leaf_keys(config):
        check_value(key, get_key(config, key), source)
    return config


# Top-level keys added after run records were stored, with their default: a run at the
# default keeps the id it had before the key existed.
LATER_KEYS = {"init": "pytorch_default", "pretrain": "none"}
# The same for keys inside a section: (section, key) -> default.
LATER_SECTION_KEYS = {("speed", "dtype"): "float32", ("one", "rampup_epochs"): 0, ("mutual", "rampup_epochs"): 0}


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def without_later_defaults(config: dict) -> dict:
    """``config`` (a copy) as a record made before the later keys existed holds it: each key of
    ``LATER_KEYS`` and ``LATER_SECTION_KEYS`` left out where it has its default. Run ids, kinds
    of run (time estimates, plans) and the comparability of two studies all see a config so,
    so that a run at a later key's default is the same run as one recorded before the key."""
    out = dict(config)
    for key, default in LATER_KEYS.items():
        if out.get(key) == default:
            del out[key]
    for (section, key), default in LATER_SECTION_KEYS.items():
        if isinstance(out.get(section), dict) and out[section].get(key, default) == default:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def run_id(config: dict, data_sha256: str) -> str:
    """A short stable id: the hash of the resolved config and the data checksum. The device,
    and the path the data was read from (its checksum stands for it), are left out."""
    keyed = without_later_defaults({k: v for k, v in config.items() if k != "device"})
    keyed["data"] = {k: v for k, v in config["data"].items() if k != "source"}
    digest = hashlib.sha256((canonical_json(keyed) + data_sha256).encode()).hexdigest()
    return f"{config['method']}-{digest[:12]}"


def derive_seed(*key: int | str) -> int:
    """A 63-bit seed from a key such as (seed, "init", k), stable across processes."""
    digest = hashlib.sha256(canonical_json(list(key)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
