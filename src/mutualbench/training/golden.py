"""Golden trajectories: tiny fixed runs of every registered method in float64, compared with
stored ones to catch any change of what the training code computes.

Each case is a real run config (``mutualbench.core.config.compose_config``: the defaults plus a few
overrides, as every run's config is made) taken through the real code: ``run.resolve``, then
``assembly.assemble``, as every run is built: the run's loaders (subset, seeded order, flips
and crops, normalisation), the method's models (seeded initialisation) and stages, and the
``Engine`` loop. The teacher of kd, fitnets and hint_mutual is trained the way a run trains
it: the ``individual`` run of ``run.teacher_config``, then frozen. The data are 32x32
synthetic images from a fixed numpy seed. Every model's loss each stage returns is recorded
at every step (its total; the terms are checked against hand computations in the tests), the
test accuracy after every epoch, and at the end checksums of every trained model's weights
and buffers.

Everything runs in float64, not the float32 of real runs: float32 kernels round differently
on different instruction sets and thread counts, so stored float32 numbers match only on the
machine that wrote them, while float64 rounding differences (around 1e-16) stay far below the
comparison tolerance over these few steps. The float32 defaults of real runs are untouched
(the default dtype is restored afterwards).

    python -m mutualbench.training.golden --check tests/golden/trajectories.json
    python -m mutualbench.training.golden --write tests/golden/trajectories.json   # after an intended change
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..core.config import BASE_DEFAULTS, canonical_json, compose_config, default_config, get_key
from ..core.errors import UserError
from ..data.sources import ImageDataset
from ..methods import METHODS, get_method
from ..methods.base import split_terms
from ..methods.pretrain import uses_teacher
from ..storage.io_utils import atomic_write_json
from .assembly import assemble, new_teacher
from .run import resolve, teacher_config

FORMAT = 1
DEFAULT_PATH = Path("tests/golden/trajectories.json")
# Relative tolerance of the comparison. The same code run with the generic kernels or AVX2
# (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS) and on 1 or 2 threads agreed to 1.6e-15 at
# worst; the semantic changes tried (KD temperature, loss reduction, peer weight, data order)
# moved the first step's loss by 6e-4 or more. 1e-9 leaves six orders of magnitude for other
# CPUs, BLAS builds and kernel choices, and still sees a change of one part in a billion.
RTOL = 1e-9
WRITE_COMMAND = "python -m mutualbench.training.golden --write tests/golden/trajectories.json"

# ----------------------------------------------------------------------------- the cases
# Shared by every case: a few steps on the synthetic data (24 of the 32 training images,
# batches of 8: 3 steps per epoch, flips and 4-pixel crops on, as in real runs). The teacher
# is a small wide ResNet (its He initialisation and BatchNorm give it distinct predictions
# after a few steps, so that the KD and hint terms weigh in); its layer3 (64x8x8) matches the
# seed_vgg_student hint tap H (64x8x8).
BASE = {
    "seed": 1,
    "loss": {"reduction": "sum"},
    "kd": {"temperature": 1.0},
    "data": {"source": "golden-synthetic", "train_subset": 24, "batch_size": 8},
    "train": {"epochs": 2},
    "hint": {"epochs": 1, "teacher_tap": "layer3"},
    "teacher": {"arch": "wrn_10_1", "train": {"epochs": 2}},
}

# name -> config overrides on top of BASE. Every registered method needs at least one case.
CASES: dict[str, dict] = {
    # also the teacher of kd, fitnets and hint_mutual (run.teacher_config of those cases)
    "individual": {"method": "individual", "arch": ["wrn_10_1"]},
    # the blog's student alone: SGD with Nesterov momentum and weight decay, a step schedule, mean reduction
    "individual_vgg_sgd_mean": {
        "method": "individual", "arch": ["seed_vgg_student"], "loss": {"reduction": "mean"},
        "train": {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
                  "schedule": {"name": "step", "milestones": [1], "gamma": 0.1}},
    },
    "kd_t4": {"method": "kd", "arch": ["seed_vgg_student"], "kd": {"temperature": 4.0, "alpha": 0.9}},
    # simultaneous updates, fused cohort step (the default path of a same-arch cohort)
    "mutual_fused": {"method": "mutual", "arch": ["seed_vgg_student"], "cohort": 2},
    # simultaneous updates, plain path; K = 3 so that peer_weight mean (1/2) differs from sum (1)
    "mutual_plain_k3": {"method": "mutual", "arch": ["seed_vgg_student"], "cohort": 3, "mutual": {"fuse": False}},
    # the paper's Algorithm 1, a mixed cohort (one member with BatchNorm), peer_weight sum
    "mutual_sequential": {"method": "mutual", "arch": ["seed_vgg_student", "wrn_10_1"], "cohort": 2,
                          "mutual": {"update_order": "sequential", "peer_weight": "sum"}},
    "fitnets": {"method": "fitnets", "arch": ["seed_vgg_student"], "kd": {"temperature": 2.0}},
    "hint_mutual": {"method": "hint_mutual", "arch": ["seed_vgg_student"], "cohort": 2},
    # composable hint pretraining: hints, then the student alone
    "individual_after_hints": {"method": "individual", "arch": ["seed_vgg_student"], "pretrain": "hints"},
}

# ----------------------------------------------------------------------------- the data
DATA_SEED = 20240607
NUM_CLASSES = 10
N_TRAIN, N_TEST, SIZE = 32, 10, 32


def synthetic_dataset() -> ImageDataset:
    """32 train and 10 test uint8 images (32x32x3, 10 classes) from a fixed numpy seed: a
    per-class colour plus noise, so that the models learn something in a few steps."""
    rng = np.random.default_rng(DATA_SEED)
    colours = rng.integers(40, 216, (NUM_CLASSES, 1, 1, 3))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)
        noise = rng.integers(-40, 41, (n, SIZE, SIZE, 3))
        return np.clip(colours[labels] + noise, 0, 255).astype(np.uint8), labels

    train_x, train_y = split(N_TRAIN)
    test_x, test_y = split(N_TEST)
    h = hashlib.sha256()
    for a in (train_x, train_y, test_x, test_y):
        h.update(np.ascontiguousarray(a).tobytes())
    return ImageDataset(name="golden-synthetic", classes=[f"c{i}" for i in range(NUM_CLASSES)],
                        train_images=train_x, train_labels=train_y, test_images=test_x, test_labels=test_y,
                        sha256=h.hexdigest(), source="golden-synthetic")


# ----------------------------------------------------------------------------- running
@contextlib.contextmanager
def float64() -> Iterator[None]:
    """New tensors and modules in float64 inside; the previous default dtype restored after."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _dotted(updates: dict, shape: dict, prefix: str = "") -> dict:
    """The nested ``updates`` as ``{dotted key: value}`` down to the config's own leaves
    (``shape``: a full config): a case sets single keys of a section, never a whole one."""
    out = {}
    for key, value in updates.items():
        dotted = prefix + key
        if isinstance(value, dict) and isinstance(get_key(shape, dotted), dict):
            out.update(_dotted(value, shape, dotted + "."))
        else:
            out[dotted] = value
    return out


def case_config(name: str) -> dict:
    """The full run config of golden case ``name`` (``compose_config``): the case's method,
    architectures and cohort, then BASE, then the case's keys over them."""
    cases = all_cases()
    if name not in cases:
        raise UserError(f"unknown golden case {name!r}; known: {', '.join(cases)}")
    case, shape, source = cases[name], default_config(), f"golden case {name}"
    return compose_config(case.get("method", BASE_DEFAULTS["method"]), case.get("arch", BASE_DEFAULTS["arch"]),
                          seed=BASE["seed"], data=BASE["data"]["source"], cohort=case.get("cohort"),
                          settings=[(source, _dotted(BASE, shape)), (source, _dotted(case, shape))])


def all_cases() -> dict[str, dict]:
    """``CASES`` plus the cases methods declare themselves (a ``golden_cases`` class attribute,
    ``{case name: overrides on BASE}``), so a new method's file can bring its own."""
    cases = dict(CASES)
    for name in METHODS.names():
        for case, overrides in (getattr(METHODS.get(name), "golden_cases", None) or {}).items():
            cases[case] = {"method": name, **overrides}
    return cases


def missing_methods() -> list[str]:
    """Registered methods that no golden case runs."""
    covered = {c["method"] for c in all_cases().values()}
    return [m for m in METHODS.names() if m not in covered]


def missing_methods_message(missing: list[str]) -> str:
    return (f"method(s) {', '.join(missing)} have no golden case: give each method class a "
            "golden_cases = {\"case name\": {config overrides}} attribute (or add a case to CASES in "
            f"src/mutualbench/training/golden.py): a few steps on the synthetic data; then run `{WRITE_COMMAND}` "
            "and commit the file")


def checksum(tensors: dict[str, torch.Tensor]) -> dict:
    """Sums over every floating-point value of a state_dict, in float64: count, sum, sum of
    absolute values, sum of squares, and a sum weighted by position (catches permutations)."""
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors.values() if t.is_floating_point()])
    weights = (torch.arange(flat.numel(), dtype=torch.int64) % 7 - 3).to(torch.float64)
    return {"numel": int(flat.numel()), "sum": float(flat.sum()), "abs_sum": float(flat.abs().sum()),
            "sq_sum": float(flat.pow(2).sum()), "weighted_sum": float((flat * weights).sum())}


class _Recorder:
    """Wraps each stage's ``step`` and ``end_epoch`` to record every loss at every step."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def attach(self, stage) -> None:
        inner_step, inner_end = stage.step, stage.end_epoch
        position = {"epoch": 1, "batch": 0}

        def step(x, y):
            losses = inner_step(x, y)
            totals, _ = split_terms(losses)  # each model's total; its terms are checked by tests/test_loss_terms.py
            narrow = [n for n, v in losses.items() if v.dtype != torch.float64]
            if narrow:  # a code path cast to a narrower type: the check would become machine-dependent
                raise RuntimeError(f"stage {stage.name} computed the losses of {', '.join(narrow)} below float64")
            position["batch"] += 1
            self.steps.append({"stage": stage.name, "epoch": position["epoch"], "batch": position["batch"],
                               "losses": {n: float(v) for n, v in totals.items()}})
            return losses

        def end_epoch():
            inner_end()
            position["epoch"] += 1
            position["batch"] = 0

        stage.step, stage.end_epoch = step, end_epoch


class GoldenRunner:
    """Runs golden cases on the CPU in float64, training each teacher once."""

    def __init__(self) -> None:
        self.ds = synthetic_dataset()
        self._teachers: dict[str, dict[str, torch.Tensor]] = {}

    def run_config(self, config: dict) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
        """One run: its trajectory (JSON-able) and its trained models' state_dicts."""
        resolved = resolve(config)
        teacher = self._teacher(config) if uses_teacher(get_method(resolved["method"]), config) else None
        with float64(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            run = assemble(resolved, self.ds, torch.device("cpu"), teacher, dtype=torch.float64)
            recorder = _Recorder()
            for stage in run.stages:
                recorder.attach(stage)
            curves = run.engine().run()
        states = {n: m.state_dict() for n, m in run.models.items()}
        for n, state in states.items():
            bad = [k for k, t in state.items() if t.is_floating_point() and t.dtype != torch.float64]
            if bad:  # a code path cast to a narrower type: the check would become machine-dependent
                raise RuntimeError(f"model {n} of method {resolved['method']} holds non-float64 tensors: {bad[:3]}")
        trajectory = {
            "method": resolved["method"],
            "config": resolved,
            "steps": recorder.steps,
            "test_acc": [{"epoch": e["epoch"], "stage": e["stage"], "acc": e["test_acc"]} for e in curves],
            "checksums": {n: checksum(state) for n, state in states.items()},
        }
        return trajectory, states

    def _teacher(self, config: dict):
        tcfg = teacher_config(config)
        key = canonical_json(resolve(tcfg))
        if key not in self._teachers:
            _, states = self.run_config(tcfg)
            self._teachers[key] = states["model"]
        with float64():
            return new_teacher(resolve(config), self.ds.num_classes, lambda t: t.load_state_dict(self._teachers[key]))

    def run_case(self, name: str) -> dict:
        config = case_config(name)
        trajectory, states = self.run_config(config)
        if config["method"] == "individual":  # it may be a later case's teacher: keep it
            key = canonical_json(resolve(config))
            self._teachers.setdefault(key, states["model"])
        return trajectory


def compute(cases: list[str] | None = None, runner: GoldenRunner | None = None) -> dict:
    """The golden trajectories of ``cases`` (default: all), as a JSON-able dict; ``runner``
    reuses the teachers another call trained."""
    names = list(all_cases()) if cases is None else list(cases)
    for name in names:
        case_config(name)  # unknown names fail before any training
    runner = runner or GoldenRunner()
    return {
        "format": FORMAT,
        "about": "float64 golden trajectories of mutualbench.training.golden; regenerate with " + WRITE_COMMAND,
        "data_sha256": runner.ds.sha256,
        "torch": torch.__version__,
        "cases": {name: runner.run_case(name) for name in names},
    }


# ----------------------------------------------------------------------------- comparing
def _rel(a: float, b: float, scale: float | None = None) -> float:
    """|a - b| relative to max(|a|, |b|) (or to ``scale`` when given, for sums that may cancel)."""
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    denom = scale if scale is not None else max(abs(a), abs(b))
    return abs(a - b) / denom if denom > 0 else math.inf


def differences(case: str, stored: dict, now: dict, rtol: float = RTOL) -> tuple[list[str], float]:
    """The mismatches of one case (readable lines) and the largest relative difference seen."""
    problems: list[str] = []
    worst = 0.0
    if len(stored["steps"]) != len(now["steps"]):
        problems.append(f"{case}: {len(now['steps'])} steps now, {len(stored['steps'])} stored")
    bad_steps = []
    for i, (s, n) in enumerate(zip(stored["steps"], now["steps"], strict=False)):
        where = f"step {i + 1} (stage {s['stage']}, epoch {s['epoch']}, batch {s['batch']})"
        if (s["stage"], s["epoch"], s["batch"]) != (n["stage"], n["epoch"], n["batch"]) or set(s["losses"]) != set(n["losses"]):
            bad_steps.append(f"{case}: {where}: now stage {n['stage']}, epoch {n['epoch']}, batch {n['batch']}, "
                             f"losses of {', '.join(n['losses'])}; stored losses of {', '.join(s['losses'])}")
            continue
        for model, value in s["losses"].items():
            r = _rel(value, n["losses"][model])
            worst = max(worst, r)
            if not r <= rtol:
                bad_steps.append(f"{case}: {where}: loss of {model} is {n['losses'][model]!r}, stored {value!r} "
                                 f"(relative difference {r:.2e} > {rtol:g})")
    if bad_steps:
        more = f" (and {len(bad_steps) - 1} more differing losses)" if len(bad_steps) > 1 else ""
        problems.append(bad_steps[0] + more)
    for s, n in zip(stored["test_acc"], now["test_acc"], strict=False):
        if s["acc"] != n["acc"]:
            problems.append(f"{case}: test accuracy after epoch {s['epoch']} is {n['acc']}, stored {s['acc']}")
            break
    if len(stored["test_acc"]) != len(now["test_acc"]):
        problems.append(f"{case}: {len(now['test_acc'])} evaluated epochs now, {len(stored['test_acc'])} stored")
    if set(stored["checksums"]) != set(now["checksums"]):
        problems.append(f"{case}: models {', '.join(now['checksums'])} now, stored {', '.join(stored['checksums'])}")
    for model, s in stored["checksums"].items():
        n = now["checksums"].get(model)
        if n is None:
            continue
        if s["numel"] != n["numel"]:
            problems.append(f"{case}: final weights of {model} have {n['numel']} values, stored {s['numel']}")
            continue
        abs_sum = max(s["abs_sum"], n["abs_sum"])
        # signed sums may cancel: measure them against the sum of absolute values (times the
        # largest weight, 3, for the weighted sum)
        scales = {"sum": abs_sum, "abs_sum": None, "sq_sum": None, "weighted_sum": 3 * abs_sum}
        for key, scale in scales.items():
            r = _rel(s[key], n[key], scale)
            worst = max(worst, r)
            if not r <= rtol:
                problems.append(f"{case}: final weights of {model}: {key} is {n[key]!r}, stored {s[key]!r} "
                                f"(relative difference {r:.2e} > {rtol:g})")
                break
    return problems, worst


def compare(stored: dict, now: dict, rtol: float = RTOL) -> tuple[list[str], float]:
    """Mismatches between stored and recomputed trajectories (every case of ``now`` must be
    stored), and the largest relative difference over everything compared."""
    problems: list[str] = []
    worst = 0.0
    if stored.get("data_sha256") != now.get("data_sha256"):
        problems.append("the synthetic golden data differ from the stored ones (numpy's generator or "
                        "synthetic_dataset changed); every case will differ")
    for case, traj in now["cases"].items():
        if case not in stored["cases"]:
            problems.append(f"{case}: no stored trajectory; run `{WRITE_COMMAND}`")
            continue
        p, w = differences(case, stored["cases"][case], traj, rtol)
        problems += p
        worst = max(worst, w)
    return problems, worst


def load(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no stored golden trajectories; write them with `{WRITE_COMMAND}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(data, dict) and isinstance(data.get("cases"), dict)
    except (json.JSONDecodeError, AssertionError):
        raise UserError(f"{path}: not a golden-trajectory file; rewrite it with `{WRITE_COMMAND}`") from None
    if data.get("format") != FORMAT:
        raise UserError(f"{path}: golden format {data.get('format')!r}, this code writes {FORMAT}; "
                        f"rewrite it with `{WRITE_COMMAND}`")
    return data


def coverage_problems(stored: dict) -> list[str]:
    """Registered methods without a golden case, and stored cases no longer defined."""
    problems = []
    missing = missing_methods()
    if missing:
        problems.append(missing_methods_message(missing))
    gone = [c for c in stored["cases"] if c not in all_cases()]
    if gone:
        problems.append(f"stored cases {', '.join(gone)} are no longer defined; run `{WRITE_COMMAND}`")
    return problems


def check(path: Path, cases: list[str] | None = None, rtol: float = RTOL) -> tuple[list[str], float]:
    """Recompute ``cases`` (default: all, and then every registered method must have a case)
    and compare them with the file."""
    stored = load(path)
    problems = coverage_problems(stored) if cases is None else []
    p, worst = compare(stored, compute(cases), rtol)
    return problems + p, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mutualbench.training.golden", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", metavar="PATH", nargs="?", const=str(DEFAULT_PATH),
                      help=f"compute every case and write the golden file (default {DEFAULT_PATH})")
    mode.add_argument("--check", metavar="PATH", nargs="?", const=str(DEFAULT_PATH),
                      help=f"recompute and compare with the golden file, exit 1 if different (default {DEFAULT_PATH})")
    parser.add_argument("--case", action="append", help="only this case (repeatable; --check only)")
    parser.add_argument("--rtol", type=float, default=RTOL, help=f"relative tolerance of --check (default {RTOL:g})")
    args = parser.parse_args(argv)
    try:
        t0 = time.perf_counter()
        if args.write:
            if args.case:
                raise UserError("--case works with --check only: --write always writes every case")
            missing = missing_methods()
            if missing:
                raise UserError(missing_methods_message(missing))
            atomic_write_json(Path(args.write), compute())
            print(f"wrote {args.write}: {len(all_cases())} cases ({time.perf_counter() - t0:.1f}s)")
            return 0
        problems, worst = check(Path(args.check), args.case, args.rtol)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    took = time.perf_counter() - t0
    if problems:
        print(f"golden trajectories differ from {args.check} (relative tolerance {args.rtol:g}):")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"golden trajectories match {args.check}: largest relative difference {worst:.1e} "
          f"(tolerance {args.rtol:g}; {took:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
