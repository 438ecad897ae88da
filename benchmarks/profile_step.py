"""Where the time of one mutual-learning step goes, by operator (torch.profiler, CPU):

    python benchmarks/profile_step.py [--k 2] [--way fused|loop|sequential] [--bf16]

Prints the share of self CPU time in convolutions (forward and backward), the rest by
operator, and the step time. This is the evidence for what fusion can and cannot save."""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from gpu_check import stage_for

WAYS = {"sequential": ["mutual.update_order=sequential"], "loop": ["mutual.fuse=false"], "fused": []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--way", choices=list(WAYS), default="fused")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    stage, _ = stage_for(WAYS[args.way] + (["speed.bf16=true"] if args.bf16 else []), args.k, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g)
    for _ in range(2):
        stage.step(x, y)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        stage.step(x, y)
    step_s = (time.perf_counter() - t0) / args.steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            stage.step(x, y)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    print(f"{args.way}, K={args.k}{', bf16' if args.bf16 else ''}, batch 128, {torch.get_num_threads()} threads: "
          f"{step_s * 1e3:.1f} ms/step; convolutions {100 * conv / total:.1f}% of aten self time")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"  {e.key:45s} {100 * e.self_cpu_time_total / total:5.1f}%  ({e.count} calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
