"""The mutual-learning step of a cohort of the blog's student, batch 128, three ways:

- ``sequential``: the paper's Algorithm 1 (update one student, recompute, update the next);
- ``loop``: simultaneous updates as a plain loop over K modules;
- ``fused``: the stacked cohort (one forward call, one backward, one optimizer step);
- ``fused-bf16``: the same with bf16 autocast (``speed.bf16``): a change of precision, not of
  the update, listed apart so that its gain is never read as the fusion's.

All use the same memory format (the ``speed.channels_last`` default), so the float32 ratios
measure the update scheme and the fusion alone. Per K = 2 and 4: one training step, and the
images per second of an epoch over 5,120 training images (40 steps; on a GPU the GPU check
script times whole 50,000-image epochs).

    make bench     # writes results/bench/cohort-cpu.{json,md}
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import SMOKE
from mutualbench.archs import create_arch
from mutualbench.core.config import apply_overrides, default_config
from mutualbench.methods.base import BuildContext
from mutualbench.methods.mutual import make_mutual_stage

BATCH = 16 if SMOKE else 128  # smoke mode only checks that the code runs (bf16 is emulated on many CPUs)
EPOCH_STEPS = 2 if SMOKE else 40
WAYS = {
    "sequential": ["mutual.update_order=sequential"],
    "loop": ["mutual.fuse=false"],
    "fused": [],
    "fused-bf16": ["speed.bf16=true"],
}


def make_stage(way: str, k: int):
    cfg = apply_overrides(default_config(), WAYS[way] + ["train.optimizer.lr=3e-4", "train.optimizer.betas=[0.5,0.99]"])
    torch.manual_seed(0)
    members = {f"student{i + 1}": create_arch("seed_vgg_student") for i in range(k)}
    stage = make_mutual_stage(copy.deepcopy(members), BuildContext(cfg, torch.device("cpu"), 10))
    stage.begin()
    stage.train_mode()
    expected = "fused" if way.startswith("fused") else "plain"
    assert stage.describe()["cohort_path"] == expected
    return stage


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 3, 32, 32, generator=g), torch.randint(0, 10, (BATCH,), generator=g)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("way", list(WAYS))
def test_cohort_step(benchmark, way, k):
    stage = make_stage(way, k)
    x, y = batch()
    benchmark.group = f"cohort-step-K{k}"
    benchmark.extra_info.update(role="baseline" if way in ("sequential", "loop") else "candidate", k=k,
                                batch=BATCH, arch="seed_vgg_student", way=way)
    benchmark.pedantic(stage.step, args=(x, y), rounds=3 if SMOKE else 15, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("way", list(WAYS))
def test_cohort_epoch(benchmark, way, k):
    stage = make_stage(way, k)
    batches = [batch(i) for i in range(EPOCH_STEPS)]

    def epoch():
        for x, y in batches:
            stage.step(x, y)

    benchmark.group = f"cohort-epoch-K{k} ({EPOCH_STEPS * BATCH} images)"
    benchmark.extra_info.update(role="baseline" if way in ("sequential", "loop") else "candidate", k=k,
                                images=EPOCH_STEPS * BATCH, way=way)
    benchmark.pedantic(epoch, rounds=1 if SMOKE else 2, iterations=1, warmup_rounds=0)
    stats = benchmark.stats.stats if hasattr(benchmark.stats, "stats") else None
    if stats is not None:
        benchmark.extra_info["images_per_s"] = round(EPOCH_STEPS * BATCH / stats.mean, 1)
