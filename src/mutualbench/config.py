"""Run configuration: defaults, ``key=value`` overrides, validation and the run id.

A run is fully described by one nested dict (its *resolved config*). Every key has a
default here; overrides may only name keys that exist. The run id is a hash of the
canonical JSON of the resolved config plus the data set's checksum, so identical runs
share an id and anything that changes a result changes the id.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from .errors import UserError


def adam(lr: float = 1e-3, betas=(0.9, 0.999)) -> dict:
    return {"name": "adam", "lr": lr, "betas": list(betas), "weight_decay": 0.0,
            "momentum": 0.9, "nesterov": False}


CONSTANT = {"name": "constant", "milestones": [], "gamma": 0.1}

DEFAULTS: dict[str, Any] = {
    "method": "individual",
    "arch": ["seed_vgg_student"],  # one per model; a cohort of one arch repeats it
    "cohort": 1,
    "seed": 0,
    "device": "auto",
    "data": {
        "source": "cifar10",
        "train_subset": None,  # a fixed, seeded, class-balanced subset of the training split
        "test_subset": None,  # the same for the test split (None: all of it)
        "batch_size": 128,
        "flip": True,
        "crop_padding": 4,
        "normalize": True,  # per-channel mean/std of the training split
    },
    "loss": {"reduction": "sum"},  # the blog sums over the batch; "mean" averages
    "train": {"epochs": 30, "optimizer": adam(1e-3), "schedule": dict(CONSTANT)},
    "kd": {"temperature": 1.0, "alpha": 1.0},
    "mutual": {
        "peer_weight": "mean",
        "update_order": "simultaneous",
        "fuse": True,  # the fused cohort step for simultaneous updates of same-arch cohorts
        "fused_impl": "auto",  # vmap on CUDA, unbind on the CPU (see mutualbench.cohort)
    },
    # Options of the fused cohort step (they change float rounding, so they are config).
    "speed": {"channels_last": True, "bf16": False, "compile": False, "compile_mode": None},
    "hint": {
        "epochs": 10,
        "optimizer": adam(1e-3),
        "schedule": dict(CONSTANT),
        "student_tap": None,  # None: the student's only tap (H for seed_vgg_student)
        "teacher_tap": None,  # None: the teacher's only tap (G for seed_vgg_teacher)
        "regressor_kernel": 1,
    },
    "teacher": {
        "arch": "seed_vgg_teacher",
        "checkpoint": None,  # a path: load it instead of training the teacher
        "train": {"epochs": 30, "optimizer": adam(1e-3), "schedule": dict(CONSTANT)},
    },
}

CHOICES = {
    "loss.reduction": ("sum", "mean"),
    "mutual.peer_weight": ("mean", "sum"),
    "mutual.update_order": ("sequential", "simultaneous"),
    "train.optimizer.name": ("adam", "sgd"),
    "hint.optimizer.name": ("adam", "sgd"),
    "teacher.train.optimizer.name": ("adam", "sgd"),
    "train.schedule.name": ("constant", "step", "cosine"),
    "hint.schedule.name": ("constant", "step", "cosine"),
    "teacher.train.schedule.name": ("constant", "step", "cosine"),
    "device": ("auto", "cpu", "cuda"),
    "mutual.fused_impl": ("auto", "vmap", "unbind"),
    "speed.compile_mode": (None, "default", "reduce-overhead", "max-autotune"),
}


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
            node[part] = value
        else:
            node = node[part]


def get_key(config: dict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def apply_overrides(config: dict, overrides: list[str], source: str = "--set") -> dict:
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"{source}: expected key=value, got {item!r} (e.g. --set kd.temperature=4)")
        key, value = item.split("=", 1)
        set_key(config, key.strip(), parse_value(value.strip()), source)
    return config


def merge(config: dict, updates: dict, source: str, prefix: str = "") -> dict:
    """Apply a nested dict of updates, refusing unknown keys."""
    config = copy.deepcopy(config)
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(get_or_none(config, dotted), dict):
            sub = merge(get_key(config, dotted), value, source)
            set_key(config, dotted, sub, source)
        else:
            set_key(config, dotted, value, source)
    return config


def get_or_none(config: dict, dotted: str) -> Any:
    try:
        return get_key(config, dotted)
    except (KeyError, TypeError):
        return None


def validate(config: dict) -> dict:
    """Type and range checks that do not need the registries; returns the config."""
    for key, allowed in CHOICES.items():
        value = get_key(config, key)
        if value not in allowed:
            raise UserError(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    for key in ("train.epochs", "hint.epochs", "teacher.train.epochs", "data.batch_size", "cohort"):
        value = get_key(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key.endswith("epochs") else 1):
            raise UserError(f"{key} must be a {'non-negative' if key.endswith('epochs') else 'positive'} integer, got {value!r}")
    for key in ("data.train_subset", "data.test_subset"):
        value = get_key(config, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"{key} must be a positive integer or null, got {value!r}")
    if not isinstance(config["seed"], int):
        raise UserError(f"seed must be an integer, got {config['seed']!r}")
    for key in ("kd.temperature", "train.optimizer.lr", "hint.optimizer.lr", "teacher.train.optimizer.lr"):
        value = get_key(config, key)
        if not isinstance(value, (int, float)) or value <= 0:
            raise UserError(f"{key} must be a positive number, got {value!r}")
    return config


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def run_id(config: dict, data_sha256: str) -> str:
    """A short stable id: the hash of the resolved config and the data checksum. The device,
    and the path the data was read from (its checksum stands for it), are left out."""
    keyed = {k: v for k, v in config.items() if k != "device"}
    keyed["data"] = {k: v for k, v in config["data"].items() if k != "source"}
    digest = hashlib.sha256((canonical_json(keyed) + data_sha256).encode()).hexdigest()
    return f"{config['method']}-{digest[:12]}"


def derive_seed(*key: int | str) -> int:
    """A 63-bit seed from a key such as (seed, "init", k), stable across processes."""
    digest = hashlib.sha256(canonical_json(list(key)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
