"""GPU check for the fused cohort step: equivalence on the GPU, then timings with and without
bf16, channels_last, torch.compile and CUDA graphs (compile mode "reduce-overhead"); one table
printed last. Meant for one H100 in under 5 minutes:

    python benchmarks/gpu_check.py --out results/bench/gpu-check.md

``--device cpu --quick`` is a dry run of the same code on the CPU (a few steps, small
epoch, no compile or CUDA graphs): CI runs it so that the script does not first fail on a
scarce GPU machine. Its timings mean nothing.

Every configuration is tried on its own; one that fails is reported as failed, not fatal.
Eager ways run first, compiled ones last, and ``--out`` is rewritten after every row, so a
run stopped by a time limit keeps everything it measured.
Timings are ratios against the sequential and plain-loop baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch

from mutualbench.archs import create_arch
from mutualbench.core.config import apply_overrides, default_config
from mutualbench.core.envinfo import environment
from mutualbench.data import DeviceLoader
from mutualbench.methods.base import BuildContext
from mutualbench.methods.mutual import make_mutual_stage

BATCH = 128


def stage_for(overrides: list[str], k: int, device: torch.device, seed: int = 0):
    cfg = apply_overrides(default_config(), overrides + ["train.optimizer.lr=3e-4", "train.optimizer.betas=[0.5,0.99]"])
    torch.manual_seed(seed)
    members = {f"s{i}": create_arch("seed_vgg_student").to(device) for i in range(k)}
    stage = make_mutual_stage(members, BuildContext(cfg, device, 10))
    stage.begin()
    stage.train_mode()
    return stage, members


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(stage, x, y, device: torch.device, steps: int = 30, warmup: int = 5) -> float:
    for _ in range(warmup):
        stage.step(x, y)
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        stage.step(x, y)
    synchronize(device)
    return (time.perf_counter() - t0) / steps


def _params(models: dict) -> list[torch.Tensor]:
    return [p.detach().double().cpu().clone() for m in models.values() for p in m.parameters()]


def _rel(a: list[torch.Tensor], b: list[torch.Tensor], start: list[torch.Tensor]) -> float:
    """Relative difference of two paths' displacements from the common start (the weights
    themselves barely move in 5 steps, so comparing them would hide any error)."""
    num = sum(((x - y) ** 2).sum() for x, y in zip(a, b, strict=True))
    return float((num / sum(((y - s) ** 2).sum() for y, s in zip(b, start, strict=True))).sqrt())


# SGD with momentum: an update linear in the gradient, so a trajectory difference measures
# the gradients. (Adam's first steps are close to lr * sign(g): in this BatchNorm-free VGG
# the early layers' gradients are ~1e-6 of the head's, and float32 rounding flips the sign
# of a few near-zero elements, which moves two float32 paths ~1e-3 apart even when both are
# right: seen on the CPU, where channels-last and plain layouts differ that much from each
# other and from float64.)
EQUIV_OPT = ["train.optimizer.name=sgd", "train.optimizer.lr=0.01", "train.optimizer.momentum=0.9"]


def _equivalence_case(device: torch.device, k: int, extra: list[str], tol: float) -> list[str]:
    bf16 = "speed.bf16=true" in extra
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bf16
    ref, rm = stage_for(EQUIV_OPT + ["mutual.fuse=false", "speed.channels_last=false"], k, torch.device("cpu"))
    for m in rm.values():
        m.double()
    ref.begin()  # the optimizer over the float64 parameters
    fused, fm = stage_for(EQUIV_OPT + ["mutual.fused_impl=vmap"] + extra, k, device)
    plain, pm = stage_for(EQUIV_OPT + ["mutual.fuse=false"] + extra, k, device)
    start = _params(rm)
    g = torch.Generator(device="cpu").manual_seed(1)
    for _ in range(5):
        x = torch.randn(32, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (32,), generator=g)
        ref.step(x.double(), y)
        fused.step(x.to(device), y.to(device))
        plain.step(x.to(device), y.to(device))
    fused.sync()
    reference = _params(rm)
    d_fused, d_plain = _rel(_params(fm), reference, start), _rel(_params(pm), reference, start)
    d_pair = _rel(_params(fm), _params(pm), start)
    ok = math.isfinite(d_fused) and (d_fused < tol or d_fused <= 2 * d_plain)
    return [f"{d_fused:.2e}", f"{d_plain:.2e}", f"{d_pair:.2e}", "ok" if ok else f"FAIL (tol {tol})"]


def equivalence(device: torch.device, ks: tuple[int, ...] = (2, 3)) -> list[list]:
    """Fused and plain simultaneous paths, 5 SGD steps, each against a float64 plain
    reference on the CPU; TF32 off for the float32 cases. A case passes when the fused path
    is within ``tol`` of the reference or no further from it than twice the plain path."""
    rows = []
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        for k in ks:
            for extra, tol in (([], 1e-5), (["speed.channels_last=false"], 1e-5), (["speed.bf16=true"], 2e-2)):
                case = f"K={k} {' '.join(extra) or 'fp32 channels_last'}"
                try:
                    rows.append([case, *_equivalence_case(device, k, extra, tol)])
                except Exception as e:  # report, continue
                    rows.append([case, "", "", "", f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"])
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return rows


# Every way in the training default layout (channels-last) unless its name says otherwise,
# so the ratios against the sequential and loop baselines measure the update and the fusion.
VARIANTS = [
    ("sequential", ["mutual.update_order=sequential"]),
    ("loop", ["mutual.fuse=false"]),
    ("fused", []),
    ("fused-unbind", ["mutual.fused_impl=unbind"]),
    ("fused-rowmajor", ["speed.channels_last=false"]),
    ("fused+bf16", ["speed.bf16=true"]),
    ("fused+bf16+compile", ["speed.bf16=true", "speed.compile=true"]),
    ("fused+bf16+cudagraphs", ["speed.bf16=true", "speed.compile=true", "speed.compile_mode=reduce-overhead"]),
]


class Report:
    """The markdown report, rewritten to ``out`` after every row."""

    def __init__(self, out: str | None, header: list[str]) -> None:
        self.out, self.header, self.epoch_images = out, header, 0
        self.rows: dict[str, list[tuple[tuple, list]]] = {"eq": [], "step": [], "epoch": []}

    def add(self, section: str, row: list, order: tuple = ()) -> None:
        self.rows[section].append((order, [str(v) for v in row]))
        print(row, flush=True)
        self.save()

    def _table(self, section: str) -> list[str]:
        return [f"| {' | '.join(r)} |" for _, r in sorted(self.rows[section], key=lambda t: t[0])]

    def render(self) -> str:
        lines = self.header + [
            "", "## Equivalence after 5 SGD steps: relative difference of the weight updates from a float64 reference",
            "", "| case | fused vs float64 | plain vs float64 | fused vs plain | verdict |", "|---|---|---|---|---|",
            *self._table("eq"),
            "", "## One training step, blog student, batch 128", "",
            "| K | way | ms/step | x vs sequential | x vs loop | images/s |", "|---|---|---|---|---|---|",
            *self._table("step"),
            "", f"## One {self.epoch_images:,}-image epoch of a K=2 cohort (DeviceLoader, flip + crop)", "",
            "| way | seconds | images/s |", "|---|---|---|", *self._table("epoch"),
        ]
        return "\n".join(lines) + "\n"

    def save(self) -> str:
        text = self.render()
        if self.out:
            Path(self.out).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(self.out).with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.out)
        return text


def time_variant_steps(report, chosen, k, base, device, x, y, steps, warmup) -> None:
    for i, name, overrides in chosen:
        try:
            stage, _ = stage_for(overrides, k, device)
            t = time_steps(stage, x, y, device, steps, warmup)
            base[k].setdefault(name, t)
            seq, loop = base[k].get("sequential"), base[k].get("loop")
            row = [k, name, f"{t * 1e3:.2f}", f"{seq / t:.2f}" if seq else "", f"{loop / t:.2f}" if loop else "",
                   f"{BATCH / t:,.0f}"]
        except Exception as e:  # report, continue
            row = [k, name, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}", "", "", ""]
        report.add("step", row, order=(k, i))


def time_variant_epochs(report, chosen, device, loader, epoch_images) -> None:
    """A whole epoch of a K=2 cohort through the DeviceLoader, after a warm-up epoch
    (compilation, autotuning), for each fused way."""
    for i, name, overrides in chosen:
        if not name.startswith("fused"):
            continue
        try:
            stage, _ = stage_for(overrides, 2, device)
            for xb, yb in loader.epoch_batches(0):
                stage.step(xb, yb)
            synchronize(device)
            t0 = time.perf_counter()
            for xb, yb in loader.epoch_batches(1):
                stage.step(xb, yb)
            synchronize(device)
            dt = time.perf_counter() - t0
            row = [name, f"{dt:.3f}", f"{epoch_images / dt:,.0f}"]
        except Exception as e:  # report, continue
            row = [name, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}", ""]
        report.add("epoch", row, order=(i,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="dry run: K = 2 equivalence only, 2 timed steps and a 256-image epoch in batches of 16")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: this script is for the GPU machine (--device cpu --quick is a dry run)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    global BATCH
    steps, warmup = (2, 1) if args.quick else (args.steps, 5)
    if args.quick:  # a dry run checks that the code runs: small batches (bf16 is emulated on many CPUs)
        BATCH = 16
    epoch_images = 256 if args.quick else 50_000
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        title = f"GPU check: {torch.cuda.get_device_name(0)}"
    else:
        title = "GPU check, dry run on the CPU (timings meaningless)"
    report = Report(args.out, [f"# {title}", "", f"- {environment(device)}", f"- python {platform.python_version()}"])
    report.epoch_images = epoch_images
    print("\n".join(report.header), flush=True)
    for row in equivalence(device, ks=(2,) if args.quick else (2, 3)):  # the dry run: K = 2 only
        report.add("eq", row)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (BATCH,), generator=g).to(device)
    images = torch.randint(0, 256, (epoch_images, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(0, 10, (epoch_images,))
    loader = DeviceLoader(images, labels, batch_size=BATCH, device=device, flip=True, crop_padding=4,
                          mean=(0.5,) * 3, std=(0.25,) * 3, seed=0)
    base: dict[int, dict[str, float]] = {2: {}, 4: {}}
    # eager ways first, compiled ones last (minutes of compilation); the report is rewritten
    # after every row, so a run stopped by its time limit keeps what it measured
    for compiled in (False, True):
        chosen = [(i, n, o) for i, (n, o) in enumerate(VARIANTS) if ("speed.compile=true" in o) == compiled]
        if compiled and device.type == "cpu":
            for k in (2, 4):
                for i, name, _ in chosen:
                    report.add("step", [k, name, "skipped on the CPU", "", "", ""], order=(k, i))
            continue
        # K = 2 steps, then the K = 2 epoch (the aims), then K = 4 steps
        time_variant_steps(report, chosen, 2, base, device, x, y, steps, warmup)
        time_variant_epochs(report, chosen, device, loader, epoch_images)
        time_variant_steps(report, chosen, 4, base, device, x, y, steps, warmup)
    print("\n" + report.save())
    return 0


if __name__ == "__main__":
    sys.exit(main())
