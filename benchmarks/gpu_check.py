"""GPU check for the fused cohort step: equivalence on the GPU, then timings with and without
bf16, channels_last, torch.compile and CUDA graphs (compile mode "reduce-overhead"); one table
printed last. Meant for one H100 in under 5 minutes:

    python benchmarks/gpu_check.py --out results/bench/gpu-check.md

Every configuration is tried on its own; one that fails is reported as failed, not fatal.
Timings are ratios against the sequential and plain-loop baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from mutualbench.archs import create_arch
from mutualbench.cohort import make_mutual_stage
from mutualbench.config import DEFAULTS, apply_overrides
from mutualbench.data import DeviceLoader
from mutualbench.envinfo import environment
from mutualbench.methods.base import BuildContext

BATCH = 128


def stage_for(overrides: list[str], k: int, device: torch.device, seed: int = 0):
    cfg = apply_overrides(DEFAULTS, overrides + ["train.optimizer.lr=3e-4", "train.optimizer.betas=[0.5,0.99]"])
    torch.manual_seed(seed)
    members = {f"s{i}": create_arch("seed_vgg_student").to(device) for i in range(k)}
    stage = make_mutual_stage(members, BuildContext(cfg, device, 10))
    stage.begin()
    stage.train_mode()
    return stage, members


def time_steps(stage, x, y, steps: int = 30, warmup: int = 5) -> float:
    for _ in range(warmup):
        stage.step(x, y)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        stage.step(x, y)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def equivalence(device: torch.device) -> list[list]:
    rows = []
    for k in (2, 3):
        for extra, tol in (([], 1e-5), (["speed.channels_last=false"], 1e-5), (["speed.bf16=true"], 2e-2)):
            fused, fm = stage_for(["mutual.fused_impl=vmap"] + extra, k, device)
            plain, pm = stage_for(["mutual.fuse=false", "speed.bf16=false"] + [e for e in extra if "bf16" not in e], k, device)
            g = torch.Generator(device="cpu").manual_seed(1)
            for _ in range(5):
                x = torch.randn(32, 3, 32, 32, generator=g).to(device)
                y = torch.randint(0, 10, (32,), generator=g).to(device)
                fused.step(x, y)
                plain.step(x, y)
            fused.sync()
            num = sum(((a - b).double() ** 2).sum() for ma, mb in zip(fm.values(), pm.values(), strict=True)
                      for a, b in zip(ma.parameters(), mb.parameters(), strict=True))
            den = sum((b.double() ** 2).sum() for mb in pm.values() for b in mb.parameters())
            rel = float((num / den).sqrt())
            rows.append([f"K={k} {' '.join(extra) or 'fp32'}", f"{rel:.2e}", "ok" if rel < tol else f"FAIL (tol {tol})"])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: this script is for the GPU machine", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    lines = [f"# GPU check: {torch.cuda.get_device_name(0)}", "",
             f"- {environment(device)}", f"- python {platform.python_version()}", ""]
    print("\n".join(lines), flush=True)
    eq = equivalence(device)
    lines += ["## Equivalence: fused vs plain simultaneous, relative parameter difference after 5 steps", "",
              "| case | rel diff | verdict |", "|---|---|---|"] + [f"| {' | '.join(r)} |" for r in eq] + [""]
    print("\n".join(lines[-len(eq) - 4:]), flush=True)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (BATCH,), generator=g).to(device)
    variants = [
        ("sequential", ["mutual.update_order=sequential", "speed.channels_last=false"]),
        ("loop", ["mutual.fuse=false", "speed.channels_last=false"]),
        ("fused", ["speed.channels_last=false"]),
        ("fused+cl", []),
        ("fused+cl+bf16", ["speed.bf16=true"]),
        ("fused+cl+bf16+compile", ["speed.bf16=true", "speed.compile=true"]),
        ("fused+cl+bf16+cudagraphs", ["speed.bf16=true", "speed.compile=true", "speed.compile_mode=reduce-overhead"]),
    ]
    rows = []
    for k in (2, 4):
        base = {}
        for name, overrides in variants:
            try:
                stage, _ = stage_for(overrides, k, device)
                t = time_steps(stage, x, y, args.steps)
                base.setdefault(name, t)
                rows.append([k, name, f"{t * 1e3:.2f}", f"{base['sequential'] / t:.2f}" if "sequential" in base else "",
                             f"{base['loop'] / t:.2f}" if "loop" in base else "", f"{BATCH / t:,.0f}"])
            except Exception as e:  # report, continue
                rows.append([k, name, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}", "", "", ""])
            print(rows[-1], flush=True)

    # A whole 50,000-image epoch of a K=2 cohort through the DeviceLoader, best variant that ran.
    images = torch.randint(0, 256, (50_000, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(0, 10, (50_000,))
    loader = DeviceLoader(images, labels, batch_size=BATCH, device=device, flip=True, crop_padding=4,
                          mean=(0.5,) * 3, std=(0.25,) * 3, seed=0)
    epoch_rows = []
    for name, overrides in variants[2:]:
        try:
            stage, _ = stage_for(overrides, 2, device)
            for xb, yb in loader.epoch_batches(0):  # warm-up epoch (compilation, autotuning)
                stage.step(xb, yb)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for xb, yb in loader.epoch_batches(1):
                stage.step(xb, yb)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            epoch_rows.append([name, f"{dt:.3f}", f"{50_000 / dt:,.0f}"])
        except Exception as e:
            epoch_rows.append([name, f"failed: {type(e).__name__}", ""])
        print(epoch_rows[-1], flush=True)

    lines += ["## One training step, blog student, batch 128", "",
              "| K | way | ms/step | x vs sequential | x vs loop | images/s |", "|---|---|---|---|---|---|"]
    lines += [f"| {' | '.join(map(str, r))} |" for r in rows]
    lines += ["", "## One 50,000-image epoch of a K=2 cohort (DeviceLoader, flip + crop)", "",
              "| way | seconds | images/s |", "|---|---|---|"] + [f"| {' | '.join(r)} |" for r in epoch_rows]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
