"""Study specs (TOML) and their expansion into runs.

A spec names arms (a method on an architecture with config overrides, the published
numbers it is compared with, optionally ``compare``: the members whose mean stands for it in
the comparisons, when not those its method declares, and optionally ``profiles``: the
profiles it runs in, each with settings of its own), profiles (sizes: ``full``, ``cpu``,
``smoke``, with a regression tolerance each), paired comparisons and ablations (one or more
settings varied over named values on some arms; one with ``opt_in = true`` runs only when
``replicate --ablations`` names it). Everything is checked before any training: an unknown key,
method, architecture or profile fails with the file, the key and the fix.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..archs import is_known_arch
from ..core.config import (
    arch_names,
    check_value,
    compose_config,
    default_config,
    get_key,
    leaf_keys,
    set_key,
)
from ..core.errors import UserError
from ..data.sources import KNOWN_DATASETS
from ..methods import METHODS, get_method
from ..storage.io_utils import read_regular_file
from ..storage.spec_schema import check_shape

# Config keys a spec cannot set through [defaults], a profile, an arm's set or an ablation:
# each arm's own keys (and the seed, data and device) say them, and would silently win.
RESERVED = {
    "method": "give it as the arm's method = \"...\"",
    "arch": "give it as the arm's arch = \"...\"",
    "cohort": "give it as the arm's cohort = N",
    "seed": "the seeds are 0..N-1, N from replicate --seeds, the profile's seeds or [study] seeds",
    "data.source": "the data set is [study] data, read from replicate --data",
    "device": "the device is replicate --device",
}


def _members_config(arm: dict) -> dict:
    """What a method's ``member_names`` and ``compared_members`` read of an arm: its
    architectures (a list) and cohort."""
    archs = arch_names(arm["arch"])
    return {"arch": archs, "cohort": int(arm.get("cohort", len(archs)))}


def arm_members(arm: dict) -> list[str] | None:
    """The members the arm's runs record, as its method declares them (``Method.member_names``:
    e.g. student1..studentK, and the cohort's mean-softmax ensemble where the method records
    one), for checking the published numbers; None when the method does not declare them."""
    method = get_method(arm["method"])
    names = method.member_names(_members_config(arm))
    if names is None:
        return None
    if method.records_ensemble:
        from ..analysis.results import ENSEMBLE

        names = [*names, ENSEMBLE]
    return names


def arm_compared(arm: dict) -> list[str] | None:
    """The members the arm is compared on (its accuracy in the comparisons, contrasts and claims
    is their mean per seed): the arm's ``compare``, else those its method declares
    (``Method.compared_members``: e.g. ONE's branches, not its gated ensemble); None: every
    model its runs record."""
    if arm.get("compare"):
        return list(arm["compare"])
    return get_method(arm["method"]).compared_members(_members_config(arm))


def _check_compare(arm: dict, where: str, path: Path) -> None:
    """Every member an arm's ``compare`` names is a model its runs record (not the cohort's
    mean-softmax ensemble, which is reported beside the models, never compared), named once."""
    names = arm.get("compare")
    if names is None:
        return
    for i, name in enumerate(names):
        if name in names[:i]:
            raise UserError(f"{path}: {where} compare: {name!r} is listed twice; list each member once")
    members = arm_members(arm)
    if members is None:  # the method does not declare its models: nothing to check against
        return
    from ..analysis.results import ENSEMBLE

    models = [m for m in members if m != ENSEMBLE]
    for name in names:
        if name not in models:
            raise UserError(f"{path}: {where} compare: the arm has no member {name!r} (runs of method "
                            f"{arm['method']!r} record {', '.join(models)}); name some of those, e.g. "
                            f"compare = [\"{models[0]}\"]")


@dataclass
class Spec:
    path: Path
    raw: dict
    sha256: str
    name: str
    data: str  # the data set the study is about (cifar10, cifar100, or a name with ``classes``)
    arms: list[dict]
    profiles: dict[str, dict]
    comparisons: list[dict] = field(default_factory=list)
    ablations: list[dict] = field(default_factory=list)

    def arm(self, name: str) -> dict:
        for a in self.arms:
            if a["name"] == name:
                return a
        raise KeyError(name)

    @property
    def classes(self) -> list[str] | None:
        """The class names of a data set outside ``KNOWN_DATASETS``, from ``[study] classes``."""
        return self.raw["study"].get("classes")

    def profile(self, name: str) -> dict:
        if name not in self.profiles:
            raise UserError(f"{self.path}: no profile {name!r}; the spec defines {', '.join(self.profiles)} "
                            f"(add [profiles.{name}] or pick one of those)")
        return self.profiles[name]


@dataclass
class PlannedRun:
    arm: str
    seed: int
    config: dict
    ablation: str | None = None
    value: str | None = None


def _check_settings(where: str, settings: object, path: Path) -> dict:
    if not isinstance(settings, dict):
        raise UserError(f"{path}: {where} must be a table of config keys, e.g. {{ \"train.epochs\" = 30 }}")
    probe = default_config()
    for key, value in settings.items():
        for reserved, fix in RESERVED.items():
            if key == reserved or reserved.startswith(key + "."):
                raise UserError(f"{path}: {where}: {key!r} cannot be set here (it would be ignored: {fix}); "
                                "remove it")
        set_key(probe, key, value, source=f"{path}: {where}")
        for leaf in ([key] if not isinstance(value, dict) else [f"{key}.{k}" for k in leaf_keys(value)]):
            check_value(leaf, get_key(probe, leaf), source=f"{path}: {where}")
    return settings


def _check_contrasts(contrasts: list[dict], arms: set[str], comparisons: set[str], path: Path) -> None:
    """A contrast is a named weighted sum of arms whose weights sum to zero, e.g.
    ``{ name = "interaction", weights = { hint_dml = 1, hint_student = -1, dml = -1, student = 1 } }``.
    Its name may not be a comparison's ("a vs b"): the two share one namespace in the tables and
    claims, so a clash would silently replace the comparison. (Its shape, finite numbers
    included, is checked by the schema.)"""
    seen = set()
    for i, c in enumerate(contrasts):
        where = f"[[contrasts]] #{i + 1} ({c['name']})"
        name, weights = c["name"], c["weights"]
        if not name:
            raise UserError(f"{path}: {where} needs name = \"...\"")
        if name in seen:
            raise UserError(f"{path}: {where}: contrast name {name!r} is used twice; give each contrast its own name")
        seen.add(name)
        if name in comparisons:
            raise UserError(f"{path}: {where}: contrast name {name!r} is also a [[comparisons]] entry's name; the "
                            "two share one namespace in the tables and claims: rename the contrast")
        if len(weights) < 2:
            raise UserError(f"{path}: {where} needs weights = {{ arm = weight, ... }} over at least two arms")
        for arm, w in weights.items():
            if arm not in arms:
                raise UserError(f"{path}: {where}: {arm!r} is not an arm ({', '.join(sorted(arms))})")
            if w == 0:
                raise UserError(f"{path}: {where}: the weight of {arm!r} must be a non-zero number, got {w!r}")
        total = math.fsum(weights.values())
        if abs(total) > 1e-9 * max(abs(w) for w in weights.values()):  # relative: 1e-10 - 2e-10 is not 0
            raise UserError(f"{path}: {where}: the weights sum to {total:g}; a contrast's weights must sum to 0 "
                            "(e.g. a - b: { a = 1, b = -1 })")


MAX_SPEC_BYTES = 1 << 20  # a study spec is a few KB (seed_blog.toml: about 20 KB)


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    try:
        data = read_regular_file(path, MAX_SPEC_BYTES, "study spec")
    except OSError as e:
        raise UserError(f"study spec {path} cannot be read ({e.strerror}); give a .toml file such as replication/seed_blog.toml") from None
    try:
        raw = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    except RecursionError:
        raise UserError(f"{path}: its tables or arrays are nested too deeply to read; a study spec nests a few "
                        "levels: give the right file") from None
    check_shape(raw, path)  # every table and key of the right type, names safe for file names
    study = raw["study"]
    data_name = study.get("data")
    if not isinstance(data_name, str) or not data_name.strip():
        raise UserError(f"{path}: [study] needs data = \"cifar10\" (the data set the study is about: cifar10, cifar100 "
                        "or another data set's name with its classes; --data may then point at a local copy of it)")
    classes = study.get("classes")
    if data_name not in KNOWN_DATASETS:
        if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes)):
            raise UserError(f"{path}: [study] data = {data_name!r} is not one of {', '.join(KNOWN_DATASETS)}: also give "
                            "its class names in label order, classes = [\"...\", ...], so that the data --data points "
                            "at can be checked")
    elif classes is not None:
        raise UserError(f"{path}: [study] classes is only for data sets other than {', '.join(KNOWN_DATASETS)} "
                        f"(the classes of {data_name} are known); remove it")
    _check_settings("[defaults]", raw.get("defaults", {}), path)
    for key in raw.get("assumptions", {}):
        set_key(default_config(), key, None, source=f"{path}: [assumptions]")
    arms = raw["arms"]
    profiles = raw["profiles"]
    names = set()
    for i, arm in enumerate(arms):
        where = f"[[arms]] #{i + 1} ({arm['name']})"
        if arm["name"] in names:
            raise UserError(f"{path}: {where}: arm name {arm['name']!r} is used twice; give each arm its own name")
        names.add(arm["name"])
        if arm["method"] not in METHODS:
            raise UserError(f"{path}: {where}: {METHODS.unknown_message(arm['method'])}")
        for a in arch_names(arm["arch"], keep_empty=True):  # "a,,b" is refused, not read as "a,b"
            if not is_known_arch(a):
                raise UserError(f"{path}: {where}: unknown architecture {a!r} (see `mutualbench archs`)")
        _check_settings(f"{where} set", arm.get("set", {}), path)
        if "profiles" in arm:
            if not arm["profiles"]:
                raise UserError(f"{path}: {where}: profiles must name the profiles the arm runs in, each with its "
                                "own settings, e.g. profiles = { cpu = { \"train.epochs\" = 20 }, full = {} }")
            for pname, settings in arm["profiles"].items():
                if pname not in profiles:
                    raise UserError(f"{path}: {where}: profiles names {pname!r}, which is not a profile of the spec "
                                    f"({', '.join(profiles)})")
                _check_settings(f"{where} profiles.{pname}", settings, path)
        if "cohort" in arm:
            check_value("cohort", arm["cohort"], source=f"{path}: {where}")
        members = arm_members(arm)
        for member in arm.get("published", {}):
            if members is not None and member not in members:
                raise UserError(f"{path}: {where} published.{member}: the arm has no member {member!r} (runs of "
                                f"method {arm['method']!r} record {', '.join(members)}); give the numbers of those")
        _check_compare(arm, where, path)
    for pname, prof in profiles.items():
        _check_settings(f"[profiles.{pname}] set", prof.get("set", {}), path)
    pairs = set()
    for i, comp in enumerate(raw.get("comparisons", [])):
        where = f"[[comparisons]] #{i + 1}"
        for side in ("a", "b"):
            if comp[side] not in names:
                raise UserError(f"{path}: {where}: {side} = {comp[side]!r} is not an arm ({', '.join(sorted(names))})")
        if comp["a"] == comp["b"]:
            raise UserError(f"{path}: {where}: a and b are both {comp['a']!r}; a comparison needs two different arms")
        if (comp["a"], comp["b"]) in pairs:
            raise UserError(f"{path}: {where}: {comp['a']} vs {comp['b']} is listed twice; remove one")
        pairs.add((comp["a"], comp["b"]))
    _check_contrasts(raw.get("contrasts", []), names, {f"{a} vs {b}" for a, b in pairs}, path)
    for kind in ("comparisons", "contrasts"):
        for i, t in enumerate(raw.get(kind, [])):
            if "family" in t and (not isinstance(t["family"], str) or not t["family"]):
                raise UserError(f"{path}: [[{kind}]] #{i + 1}: family = {t['family']!r} is not allowed; it must be a "
                                "name (Holm's adjustment runs within each family), e.g. family = \"blog\"")
    from ..analysis.claims import check_claims

    check_claims(raw, path)
    ablation_names = set()
    for i, abl in enumerate(raw.get("ablations", [])):
        where = f"[[ablations]] #{i + 1} ({abl['name']})"
        if abl["name"] in ablation_names:
            raise UserError(f"{path}: {where}: ablation name {abl['name']!r} is used twice (its runs would be pooled "
                            "into one row); give each ablation its own name")
        ablation_names.add(abl["name"])
        for arm in abl["arms"]:
            if arm not in names:
                raise UserError(f"{path}: {where}: arm {arm!r} is not defined")
        if len(set(abl["arms"])) != len(abl["arms"]):
            twice = next(a for a in abl["arms"] if abl["arms"].count(a) > 1)
            raise UserError(f"{path}: {where} arms: {twice!r} is listed twice (its runs would count twice); "
                            "list each arm once")
        for vname, settings in abl["values"].items():
            _check_settings(f"{where} value {vname!r}", settings, path)
    return Spec(path=path, raw=raw, sha256=hashlib.sha256(data).hexdigest(), name=study["name"], data=data_name, arms=arms,
                profiles=profiles, comparisons=raw.get("comparisons", []), ablations=raw.get("ablations", []))


def arm_config(spec: Spec, arm: dict, profile: str, seed: int, data: str, extra: dict | None = None) -> dict:
    """The config of ``arm``'s run at ``seed`` in ``profile`` (``compose_config``): the arm's
    method, architectures and cohort, then the spec's ``[defaults]``, the profile's ``set``,
    the arm's ``set``, the arm's settings for the profile and ``extra`` (an ablation value's
    settings) over them, in that order. None of these may set the identity (``RESERVED``)."""
    layers = [(f"{spec.path}: {where}", settings) for where, settings in (
        ("[defaults]", spec.raw.get("defaults", {})),
        (f"[profiles.{profile}]", spec.profile(profile).get("set", {})),
        (f"arm {arm['name']}", arm.get("set", {})),
        (f"arm {arm['name']} profiles.{profile}", (arm.get("profiles") or {}).get(profile, {})),
        ("ablation", extra or {}))]
    return compose_config(arm["method"], arm["arch"], seed=seed, data=data, cohort=arm.get("cohort"), settings=layers)


def in_profile(arm: dict, profile: str) -> bool:
    """An arm runs in every profile, or, with ``profiles``, in the ones it names."""
    return "profiles" not in arm or profile in arm["profiles"]


def selected_ablations(spec: Spec, ablations: bool | list[str]) -> list[dict]:
    """The ablations a study runs: ``True``: every one that is not ``opt_in``; ``False``:
    none; a list of names: those (opt-in or not), each checked to exist."""
    if ablations is True:
        return [a for a in spec.ablations if not a.get("opt_in", False)]
    if ablations is False:
        return []
    names = [a["name"] for a in spec.ablations]
    if not ablations:
        raise UserError("--ablations names no ablation; give a comma-separated list of ablation names, or drop it")
    for name in ablations:
        if name not in names:
            raise UserError(f"--ablations: {spec.path} has no ablation {name!r}; its ablations are "
                            f"{', '.join(names) or '(none)'}")
    return [a for a in spec.ablations if a["name"] in ablations]


def expand(spec: Spec, profile: str, seeds: list[int], data: str,
           ablations: bool | list[str] = True) -> list[PlannedRun]:
    """Every run of the study: seeds outermost (so an interrupted study has whole seeds),
    then arms in spec order, then the ablations (``selected_ablations``)."""
    spec.profile(profile)
    arms = [arm for arm in spec.arms if in_profile(arm, profile)]
    plan = [PlannedRun(arm["name"], seed, arm_config(spec, arm, profile, seed, data))
            for seed in seeds for arm in arms]
    for abl in selected_ablations(spec, ablations):
        for vname, settings in abl["values"].items():
            for seed in seeds:
                for arm_name in abl["arms"]:
                    if not in_profile(spec.arm(arm_name), profile):
                        continue
                    cfg = arm_config(spec, spec.arm(arm_name), profile, seed, data, settings)
                    plan.append(PlannedRun(arm_name, seed, cfg, abl["name"], vname))
    return plan
