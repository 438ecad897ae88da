"""Benchmark fixtures. ``MUTUALBENCH_BENCH_SMOKE=1`` (CI) shrinks every benchmark to a quick
check that the code runs; timings from smoke mode mean nothing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from conftest import SMOKE`

SMOKE = os.environ.get("MUTUALBENCH_BENCH_SMOKE") == "1"
SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg75.tar.gz"


@pytest.fixture(scope="session")
def cifar_train():
    """(images, labels, mean, std, name): the shared CIFAR-10 copy's train split when present,
    else random images of the same shape; 2,000 images in smoke mode."""
    if SHARED_CIFAR.exists():
        from mutualbench.data import load_dataset

        ds = load_dataset(SHARED_CIFAR)
        images, labels, mean, std, name = ds.train_images, ds.train_labels, ds.mean, ds.std, ds.name
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)
        labels = np.repeat(np.arange(10), 5_000)
        mean, std, name = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "random-50k"
    if SMOKE:
        images, labels = images[::25], labels[::25]
    return images, labels, mean, std, name


def pytest_benchmark_update_machine_info(config, machine_info):
    """What decides a CPU timing beyond the model name pytest-benchmark records: the
    instruction set PyTorch dispatches to, native bf16, the threads, the torch version, and
    the kind of machine the results are filed under (``results/bench/<slug>.md``)."""
    import torch

    from mutualbench.core.envinfo import cpu_kind, machine_kind, machine_slug

    cpu = cpu_kind()
    kind = machine_kind({"cpu": cpu})
    machine_info["mutualbench"] = {"cpu": cpu, "kind": kind, "slug": machine_slug(kind), "torch": torch.__version__}
