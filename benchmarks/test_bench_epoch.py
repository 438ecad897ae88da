"""Whole training epochs per method and per way on the CPU at hand.

Methods: the blog's student alone (``individual``), with a frozen teacher (``kd``), a DML
pair (``mutual``, cohort 2, the fused path), the FitNets hint stage and ONE (cohort 3,
WRN-10-1); ways: float32 NCHW, float32 channels-last, and bf16 autocast where this CPU runs
bf16 natively (see ``epoch_runs``). Each is built as training builds it (``assemble``) and
one epoch of a fixed class-balanced subset (20 batches of 128 training images) is timed
through its stage's ``step``, after ``begin``, ``train_mode`` and a warm-up step.

Two baselines from the same process: per method and way (one benchmark group each) a
hand-written PyTorch loop of the same models in the same way (``plain_loops``, role
``baseline``), so the group's ratio is the suite's overhead; and this CPU's convolution
throughput (``conv_ceiling``): each measurement's ``extra_info`` has the FLOPs of its epoch
(``FlopCounterMode`` over one step) and their time at that rate, the ceiling.

    make bench    # writes results/bench/<cpu kind>.{json,md} (benchmarks/epoch_report.py)
"""

from __future__ import annotations

import pytest

from conftest import SMOKE
from conv_ceiling import conv_throughput
from epoch_runs import METHODS, WAYS, bench_dataset, build, step_flops
from mutualbench.core.envinfo import cpu_kind
from plain_loops import PLAIN

BATCH = 32 if SMOKE else 128
STEPS = 2 if SMOKE else 20  # batches per timed epoch: 2,560 images
ROUNDS = 1 if SMOKE else 2  # epochs timed per measurement (the report takes the fastest)
CONV_BATCH, CONV_ROUNDS = (8, 1) if SMOKE else (128, 5)

CASES = [(m, w, impl) for m in METHODS for w in WAYS for impl in ("plain", "suite")]


@pytest.fixture(scope="module")
def dataset(cifar_train):
    return bench_dataset(*cifar_train)


@pytest.fixture(scope="module")
def ceiling():
    """The conv throughput of a way, measured once per way (at its first use)."""
    measured: dict[str, dict] = {}

    def of(way_name: str) -> dict:
        if way_name not in measured:
            measured[way_name] = conv_throughput(WAYS[way_name], CONV_BATCH, CONV_ROUNDS)
        return measured[way_name]

    return of


@pytest.mark.parametrize(("method", "way", "impl"), CASES, ids=["-".join(c) for c in CASES])
def test_epoch(benchmark, dataset, ceiling, method, way, impl):
    cpu = cpu_kind()
    if WAYS[way].bf16 and not cpu["bf16_native"]:
        pytest.skip(f"bf16 autocast: {cpu['model']} ({cpu['isa']}) has no native bf16 (avx512_bf16, amx_bf16); "
                    "emulated it is about 12x slower")
    b = build(METHODS[method], WAYS[way], dataset, STEPS * BATCH, BATCH)
    if impl == "suite":
        b.stage.begin()
        b.stage.train_mode()
        step = b.stage.step
    else:
        step = PLAIN[method](b, WAYS[way])
    batches = b.batches
    assert len(batches) == STEPS
    flops = step_flops(step, *batches[0])
    step(*batches[-1])  # warm-up

    def epoch():
        for x, y in batches:
            step(x, y)

    conv = ceiling(way)
    benchmark.group = f"epoch {method} {way}"
    benchmark.extra_info.update(
        role="baseline" if impl == "plain" else "candidate", method=method, way=way, impl=impl,
        run_method=b.resolved["method"], arch=b.resolved["arch"][0], cohort=b.resolved["cohort"], stage=b.stage.name,
        images=STEPS * BATCH, batch=BATCH, steps=STEPS, flops_per_step=flops, flops_per_epoch=flops * STEPS,
        conv_gflops=conv["gflops"], conv_shape=conv["shape"], ceiling_s=flops * STEPS / (conv["gflops"] * 1e9))
    benchmark.pedantic(epoch, rounds=ROUNDS, iterations=1, warmup_rounds=0)
