"""Where and with what a run happened: versions, device, git commit."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

from .. import __version__


def git_commit() -> str:
    """The commit of the source tree this package was imported from, '+dirty' when the
    package's files have uncommitted changes. Outside a git checkout (a copy of the tree
    sent to a GPU machine): ``$MUTUALBENCH_SOURCE_COMMIT`` marked '(copy)' when set, else
    'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        # only the package's own files: a study rewriting its tracked results is not a code change
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except Exception:
        stated = os.environ.get("MUTUALBENCH_SOURCE_COMMIT", "").strip()
        return f"{stated} (copy)" if stated else "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_kind() -> dict:
    """What decides float32 rounding and bf16 speed on this CPU: the instruction set
    PyTorch's kernels dispatch to (``ATEN_CPU_CAPABILITY`` can lower it, e.g. to AVX2),
    and whether bfloat16 runs natively (AVX-512 BF16 or AMX) rather than emulated."""
    flags = cpu_flags()
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return {
        "model": cpu_name(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": bool(native),
        "bf16_flags": native,
        "threads": torch.get_num_threads(),
    }


def machine_kind(env: dict) -> str:
    """A short label of the kind of machine a record's ``env`` describes (GPU name, or CPU
    model and instruction set): runs on machines of different kinds round differently."""
    if env.get("cuda"):
        return str(env.get("device", "?"))
    cpu = env.get("cpu") or {}
    if cpu:
        return f"{cpu.get('model', '?')} {cpu.get('isa', '?')}"
    return str(env.get("device", "?")) + " (instruction set not recorded)"


MIXED = " + "  # joins the kinds of machine of a run resumed on another kind


def machine_slug(kind: str) -> str:
    """``kind`` (``machine_kind``) as a file name, so that what was measured on one kind of
    machine can be stored under it and found again there: lower case, the trademark marks
    dropped, every run of other characters than letters and digits one '-'
    (``AMD EPYC AVX2`` -> ``amd-epyc-avx2``)."""
    text = re.sub(r"\((r|tm|c)\)", " ", kind.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def cpu_slug() -> str:
    """``machine_slug`` of this CPU's kind (model and instruction set; see ``cpu_kind``)."""
    return machine_slug(machine_kind({"cpu": cpu_kind()}))


def record_machine_kind(record: dict) -> str:
    """The kind of machine a run record's epochs ran on: ``machine_kind`` of its ``env``, or,
    for a run resumed on other kinds of machine, every kind its ``segments`` name, in the order
    they trained, joined by " + " (e.g. ``AMD EPYC AVX2 + Intel Xeon AVX512``)."""
    here = machine_kind(record.get("env") or {})
    kinds: list[str] = []
    for s in record.get("segments") or []:
        kind = s.get("machine") if isinstance(s, dict) else None
        if isinstance(kind, str) and kind not in kinds:
            kinds.append(kind)
    return MIXED.join(kinds) if len(kinds) > 1 else here


def current_machine_kind(device: torch.device) -> str:
    """``machine_kind`` of this machine running on ``device``."""
    return machine_kind({"cuda": torch.version.cuda if device.type == "cuda" else None,
                         "device": device_name(device), "cpu": cpu_kind()})


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_name()} ({torch.get_num_threads()} threads)"


def resolve_device(requested: str) -> torch.device:
    from .errors import UserError

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(requested)


def environment(device: torch.device) -> dict:
    env = {
        "mutualbench": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "device": device_name(device),
        "platform": platform.platform(),
        "cpu": cpu_kind(),
        "load_avg_1m_at_start": load_average(),
    }
    if device.type == "cuda":  # float32 convolutions and matmuls may run as TF32: say which
        env["tf32"] = {"cudnn_conv": torch.backends.cudnn.allow_tf32,
                       "matmul": torch.backends.cuda.matmul.allow_tf32}
    return env
