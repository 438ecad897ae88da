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
