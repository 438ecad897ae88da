"""The methods and ways of the epoch benchmark (``test_bench_epoch.py``), each built through
the suite's own path: ``compose_config``, ``resolve``, then ``assemble``, as ``mutualbench
run`` and the time estimate build a run, so that the step timed is the step training runs.

A way is a memory layout and a precision: float32 NCHW (``speed.channels_last=false``),
float32 channels-last (``speed.channels_last=true``, every stage honours it), and bf16
autocast (``speed.bf16=true``, channels-last as by default), which only a CPU with native
bf16 is asked to run (emulated, it is about 12x slower, and says nothing about the suite).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from mutualbench.core.config import compose_config
from mutualbench.data import ImageDataset
from mutualbench.methods import Stage, get_method
from mutualbench.methods.pretrain import uses_teacher
from mutualbench.training.assembly import Assembly, assemble, new_teacher, run_channels_last
from mutualbench.training.run import resolve

CPU = torch.device("cpu")
TEACHER = "seed_vgg_teacher"


@dataclass(frozen=True)
class MethodCase:
    """One method as benchmarked: its run (method, architecture, cohort, extra settings), the
    stage timed (None: the run's first) and, for a cohort, the path it must take."""

    method: str
    arch: str
    cohort: int = 1
    stage: str | None = None
    settings: tuple[tuple[str, object], ...] = ()
    cohort_path: str | None = None


# The blog's student alone, with a frozen teacher (KD), as a DML pair (the fused path the
# default config takes), in the FitNets hint stage, and ONE (cohort 3: WRN-10-1, the
# golden case's network, small enough to keep the whole benchmark within minutes).
METHODS: dict[str, MethodCase] = {
    "individual": MethodCase("individual", "seed_vgg_student"),
    "kd": MethodCase("kd", "seed_vgg_student", settings=(("teacher.arch", TEACHER),)),
    "dml": MethodCase("mutual", "seed_vgg_student", cohort=2, cohort_path="fused"),
    "hint": MethodCase("fitnets", "seed_vgg_student", stage="hint", settings=(("teacher.arch", TEACHER),)),
    "one": MethodCase("one", "wrn_10_1", cohort=3),
}


@dataclass(frozen=True)
class Way:
    channels_last: bool
    bf16: bool = False


WAYS: dict[str, Way] = {
    "nchw": Way(channels_last=False),
    "channels_last": Way(channels_last=True),
    "bf16": Way(channels_last=True, bf16=True),
}


def bench_dataset(images: np.ndarray, labels: np.ndarray, mean, std, name: str) -> ImageDataset:
    """The training split as the suite's data set (no test is timed: its test split is a few
    training images)."""
    return ImageDataset(name=name, classes=[str(c) for c in range(int(labels.max()) + 1)],
                        train_images=images, train_labels=labels, test_images=images[:16],
                        test_labels=labels[:16], sha256="", source=name, mean=tuple(mean), std=tuple(std))


def bench_config(case: MethodCase, way: Way, images: int, batch: int) -> dict:
    """The run's full config: the defaults, the case, the way, and a fixed class-balanced
    subset of ``images`` training images in batches of ``batch``."""
    settings = {"data.train_subset": images, "data.batch_size": batch, "speed.channels_last": way.channels_last,
                "speed.bf16": way.bf16, **dict(case.settings)}
    return compose_config(case.method, case.arch, seed=0, data="bench", cohort=case.cohort,
                          settings=[("the epoch benchmark", settings)])


@dataclass
class BenchRun:
    resolved: dict
    run: Assembly
    stage: Stage
    teacher: torch.nn.Module | None
    batches: list[tuple[torch.Tensor, torch.Tensor]]


def build(case: MethodCase, way: Way, ds: ImageDataset, images: int, batch: int) -> BenchRun:
    """The run of ``case`` in ``way``, as training assembles it (a teacher freshly
    initialised: its weights do not change the time of a step), its timed stage not yet
    begun, and the batches of its first epoch (made once: the loader has its own benchmark)."""
    config = bench_config(case, way, images, batch)
    resolved = resolve(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher = new_teacher(resolved, ds.num_classes, device=CPU) \
            if uses_teacher(get_method(resolved["method"]), resolved) else None
    # the layout from the full config: the resolved config of a method without a speed
    # section does not keep it (as the runner and the estimate do)
    run = assemble(resolved, ds, CPU, teacher, channels_last=run_channels_last(config))
    stage = next(s for s in run.stages if case.stage in (None, s.name))
    described = stage.describe()
    if bool(described.get("channels_last")) != way.channels_last or bool(described.get("bf16")) != way.bf16:
        raise AssertionError(f"{case.method}'s {stage.name} stage runs {described}, not the way asked: {way}")
    if case.cohort_path is not None and described.get("cohort_path") != case.cohort_path:
        raise AssertionError(f"{case.method}'s cohort takes the {described.get('cohort_path')} path, "
                             f"not the {case.cohort_path} one")
    batches = list(run.train_loader.epoch_batches(0))
    return BenchRun(resolved, run, stage, teacher, batches)


def step_flops(step, x: torch.Tensor, y: torch.Tensor) -> int:
    """The FLOPs of one training step (forward and backward; the optimizer's element-wise
    update counts none), counted by ``FlopCounterMode`` while the step runs."""
    with FlopCounterMode(display=False) as counter:
        step(x, y)
    return int(counter.get_total_flops())
