"""The ``mutualbench`` command line. Each subcommand is a thin wrapper over the library;
a ``UserError`` becomes a one-line ``error: ...`` on stderr and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import UserError


def cmd_archs(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .archs import ARCHS, count_parameters, create_arch, pattern_descriptions

    rows = []
    for name in ARCHS.names():
        entry = ARCHS.get(name)
        m10 = create_arch(name, 10)
        p100 = count_parameters(create_arch(name, 100))
        rows.append([name, entry.family, f"{count_parameters(m10):,}", f"{p100:,}", ", ".join(m10.tap_names)])
    print(tabulate(rows, headers=["architecture", "family", "params (10 classes)", "params (100 classes)", "taps"],
                   tablefmt="github", colalign=("left", "left", "right", "right", "left")))
    print("\nAlso accepted by name: " + "; ".join(pattern_descriptions()) + ".")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .data import load_dataset

    ds = load_dataset(args.source, root=args.data_root)
    counts = ds.counts()
    print(f"data set   {ds.name}")
    print(f"source     {ds.source}")
    print(f"sha256     {ds.sha256}")
    how = "read from cache" if ds.from_cache else "decoded from the source and cached"
    print(f"cache      {ds.cache_path} ({how})")
    print(f"images     train {len(ds.train_labels):,} / test {len(ds.test_labels):,}, "
          f"{ds.train_images.shape[2]}x{ds.train_images.shape[1]} RGB, {ds.num_classes} classes")
    print(f"mean/std   {ds.mean} / {ds.std} (train, per channel)")
    rows = [[i, c, counts["train"][i], counts["test"][i]] for i, c in enumerate(ds.classes)]
    print(tabulate(rows, headers=["label", "class", "train", "test"], tablefmt="github"))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .config import DEFAULTS, apply_overrides
    from .engine import TrainingDiverged
    from .run import Runner

    config = apply_overrides(DEFAULTS, [])
    config.update(method=args.method, seed=args.seed, arch=[a for a in args.arch.split(",") if a])
    config["cohort"] = args.cohort if args.cohort is not None else len(config["arch"])
    config["data"]["source"] = args.data
    config["device"] = args.device
    if args.teacher:
        config["teacher"]["arch"] = args.teacher
    if args.teacher_checkpoint:
        config["teacher"]["checkpoint"] = args.teacher_checkpoint
    if args.epochs is not None:
        for key in ("train", "hint"):
            config[key]["epochs"] = args.epochs
        config["teacher"]["train"]["epochs"] = args.epochs
    if args.train_subset is not None:
        config["data"]["train_subset"] = args.train_subset
    config = apply_overrides(config, args.set or [])
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    runner = Runner(Path(args.out), data_root=args.data_root, device=config["device"], log=log)
    try:
        record = runner.run(config)
    except TrainingDiverged as e:
        print(f"error: training diverged: {e} (record marked failed in {args.out})", file=sys.stderr)
        return 1
    for name, m in record["models"].items():
        print(f"{record['run_id']}  {name:9s} {m['arch']:18s} {m['params']:>11,} params  "
              f"final {m['final_test_acc']:.2f}%  (best {m['best_test_acc_test_selected']:.2f}% at epoch "
              f"{m['best_epoch_test_selected']}, selected on the test set)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="mutualbench",
        description="Reproducible knowledge-transfer benchmarks: individual, KD, DML, hint+DML.",
    )
    parser.add_argument("--version", action="version", version=f"mutualbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("archs", help="list architectures with parameter counts and feature taps")
    p.set_defaults(func=cmd_archs)

    p = sub.add_parser("data", help="load a data set (cifar10, cifar100, a folder or archive) and summarise it")
    p.add_argument("source", help="cifar10, cifar100, a class-per-folder tree, or a .tar.gz/.zip of one")
    p.add_argument("--data-root", default=None,
                   help="where downloads and caches live (default $MUTUALBENCH_DATA_ROOT or ~/.cache/mutualbench)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("run", help="train one method on one architecture with one seed; write a RunRecord")
    p.add_argument("--method", required=True, help="individual, kd, mutual, fitnets or hint_mutual")
    p.add_argument("--arch", default="seed_vgg_student",
                   help="the (student) architecture; a comma-separated list gives a mixed cohort")
    p.add_argument("--teacher", default=None, help="teacher architecture (default seed_vgg_teacher)")
    p.add_argument("--teacher-checkpoint", default=None, help="load the teacher's weights instead of training it")
    p.add_argument("--cohort", type=int, default=None, help="cohort size K for mutual methods (default: number of --arch names)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="cifar10", help="cifar10, cifar100, a class-per-folder tree or archive")
    p.add_argument("--data-root", default=None, help="downloads and caches (default $MUTUALBENCH_DATA_ROOT or ~/.cache/mutualbench)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every stage (training, hints, the teacher's training)")
    p.add_argument("--train-subset", type=int, default=None, help="train on a fixed, seeded, class-balanced subset of N images")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, e.g. --set kd.temperature=4")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", required=True, help="folder for the RunRecord (<run_id>.json) and weights")
    p.add_argument("--quiet", action="store_true", help="no per-epoch log lines")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
