"""Whether two study folders can be compared at all: the same study, the same profile, and
the same config in every arm they share. ``compare`` (and the comparison ``replicate`` ends
with) refuses anything else with a one-line error, rather than saying two different
experiments "match"."""

from __future__ import annotations

from ..core.config import get_key, leaf_keys, without_later_defaults
from ..core.errors import UserError

# What may differ between a rerun and the stored study: the seed (compared seed by seed or
# as a set elsewhere), where the data was read from (its checksum stands for it) and the device.
IGNORED = {"seed", "device", "data.source"}


def _name(study) -> str | None:
    return ((study.manifest.get("spec") or {}).get("study") or {}).get("name")


def _configs(study) -> dict[tuple, dict]:
    """(ablation, value, arm) -> the config of its first complete record."""
    out: dict[tuple, dict] = {}
    for entry in study.manifest.get("runs", []):
        rec = study.records.get(entry["run_id"])
        key = (entry.get("ablation"), entry.get("value"), entry["arm"])
        if key not in out and rec is not None and rec["status"] == "complete":
            out[key] = rec["config"]
    return out


def _flat(config: dict) -> dict:
    """The config's keys and values, a later key at its default the same as absent (a record
    made before it existed): ``speed.dtype = 'float32'`` is what a record without it ran."""
    config = without_later_defaults(config)
    return {k: get_key(config, k) for k in leaf_keys(config) if k not in IGNORED}


def check_comparable(new, stored) -> None:
    """Raise a one-line ``UserError`` unless ``new`` and ``stored`` (``results.Study``) are the
    same study and profile, with the same config in every (ablation, value, arm) both have."""
    n_name, s_name = _name(new), _name(stored)
    n_prof, s_prof = new.manifest.get("profile"), stored.manifest.get("profile")
    if n_name != s_name:
        raise UserError(f"{new.folder} is the study {n_name!r} and {stored.folder} is {s_name!r}: they are different "
                        f"studies and cannot be compared; compare with a stored run of {n_name!r}, e.g. --against "
                        f"results/{n_name}/{n_prof}")
    if n_prof != s_prof:
        raise UserError(f"{new.folder} is profile {n_prof!r} of {n_name} and {stored.folder} is profile {s_prof!r}: "
                        f"different profiles cannot be compared; compare with the stored {n_prof!r} profile, e.g. "
                        f"--against results/{n_name}/{n_prof}")
    stored_configs = _configs(stored)
    for key, config in _configs(new).items():
        if key not in stored_configs:
            continue
        a, b = _flat(config), _flat(stored_configs[key])
        differ = sorted(k for k in set(a) | set(b) if a.get(k, "(absent)") != b.get(k, "(absent)"))
        if differ:
            ablation, value, arm = key
            what = arm + (f" [{ablation}={value}]" if ablation else "")
            k = differ[0]
            more = f" (and {len(differ) - 1} more key{'s' if len(differ) > 2 else ''})" if len(differ) > 1 else ""
            raise UserError(f"{new.folder}: {what}: {k} = {a.get(k, '(absent)')!r} here but "
                            f"{b.get(k, '(absent)')!r} in {stored.folder}{more}: the runs were made with a different "
                            "config and cannot be compared; rerun with the stored study's spec, or compare with a "
                            "stored study made with this one")
