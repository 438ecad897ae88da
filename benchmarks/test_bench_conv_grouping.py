"""Is one grouped convolution faster than K separate ones? Each distinct 3x3 convolution of
the blog's student, batch 128, forward + backward (input and weight gradients), for K = 2
members: ``separate`` (K calls, the CPU's fused path) against ``grouped`` (one call with
``groups=K`` on the members' concatenated channels: what ``vmap`` turns a batched conv into).
Channels-last, like the training default.

    make bench     # writes results/bench/conv_grouping-cpu.{json,md}
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import SMOKE

K = 2
BATCH = 8 if SMOKE else 128
# (in, out, spatial size) of every distinct conv of seed_vgg_student at 32x32 input
LAYERS = [(16, 16, 32), (16, 32, 16), (32, 32, 16), (32, 64, 8), (64, 64, 8), (64, 128, 4), (128, 128, 4),
          (128, 256, 2), (256, 256, 2)]


def tensors(c_in: int, c_out: int, size: int, groups: int):
    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(BATCH, c_in * groups, size, size, generator=g).contiguous(memory_format=cl).requires_grad_()
    w = torch.randn(c_out * groups, c_in, 3, 3, generator=g).contiguous(memory_format=cl).requires_grad_()
    b = torch.randn(c_out * groups, generator=g).requires_grad_()
    grad = torch.randn(BATCH, c_out * groups, size, size, generator=g).contiguous(memory_format=cl)
    return x, w, b, grad


@pytest.mark.parametrize("way", ["separate", "grouped"])
@pytest.mark.parametrize("layer", LAYERS, ids=[f"{i}to{o}@{s}" for i, o, s in LAYERS])
def test_conv_fwd_bwd(benchmark, way, layer):
    c_in, c_out, size = layer
    if way == "grouped":
        x, w, b, grad = tensors(c_in, c_out, size, K)

        def step():
            F.conv2d(x, w, b, padding=1, groups=K).backward(grad)
    else:
        members = [tensors(c_in, c_out, size, 1) for _ in range(K)]

        def step():
            for x, w, b, grad in members:
                F.conv2d(x, w, b, padding=1).backward(grad)

    benchmark.group = f"conv {c_in}->{c_out} at {size}x{size}, K={K}, batch {BATCH}"
    benchmark.extra_info.update(role="baseline" if way == "separate" else "candidate", way=way)
    benchmark.pedantic(step, rounds=2 if SMOKE else 20, iterations=1, warmup_rounds=1)
