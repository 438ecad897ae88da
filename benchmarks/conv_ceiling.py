"""This CPU's convolution throughput: the GFLOP/s of the forward and backward passes of one
3x3 convolution of the shape these CIFAR networks spend their time in (64 to 64 channels on
32x32 maps, batch 128), in a given way (layout and precision), the best of a few rounds.

An epoch cannot run faster than its FLOPs at this rate (its *ceiling time*): a large,
regular convolution is the best case of oneDNN's kernels, and an epoch also has narrow early
layers, pooling, element-wise work and the optimizer. The fraction of the ceiling a way
reaches says how much of the machine it uses, which a ratio between two ways cannot."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from epoch_runs import Way

CHANNELS, SIZE = 64, 32


def conv_throughput(way: Way, batch: int = 128, rounds: int = 5) -> dict:
    """``{"gflops", "flops", "best_s", "shape"}`` of forward + backward (gradients of the input,
    the weight and the bias, as in a hidden layer) of the convolution in ``way``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        x = torch.randn(batch, CHANNELS, SIZE, SIZE)
    if way.channels_last:
        conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad: list[torch.Tensor] = []  # the output's gradient, made once in the output's layout and type

    def once() -> None:
        conv.zero_grad()
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=way.bf16):
            out = conv(x)
        if not grad:
            grad.append(torch.ones_like(out))
        out.backward(grad[0])

    with FlopCounterMode(display=False) as counter:
        once()
    flops = int(counter.get_total_flops())
    once()  # warm-up: kernel selection, allocation
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"gflops": round(flops / best / 1e9, 2), "flops": flops, "best_s": best,
            "shape": f"3x3 conv {CHANNELS}->{CHANNELS} channels, {SIZE}x{SIZE}, batch {batch}"}
