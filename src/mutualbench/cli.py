"""The ``mutualbench`` command line. Each subcommand is a thin wrapper over the library;
a ``UserError`` becomes a one-line ``error: ...`` on stderr and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from .core.errors import UserError, one_line
from .storage.layout import RUNS, stored_results
from .studies.request import DEVICES, LAUNCHERS, StudyRequest


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


def cmd_methods(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .methods import METHODS

    rows = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().split("\n\n")[0].replace("\n", " ").replace("``", "")
        rows.append([name, "yes" if cls.needs_teacher else "", ", ".join(cls.sections), doc])
    print(tabulate(rows, headers=["method", "teacher", "config sections", "what it does"], tablefmt="github",
                   maxcolwidths=[None, None, 30, 70]))
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
    if ds.cache_path is None:
        print("cache      none (the data root cannot hold one; decoded from the source)")
    else:
        print(f"cache      {ds.cache_path} ({how})")
    print(f"images     train {len(ds.train_labels):,} / test {len(ds.test_labels):,}, "
          f"{ds.train_images.shape[2]}x{ds.train_images.shape[1]} RGB, {ds.num_classes} classes")
    print(f"mean/std   {ds.mean} / {ds.std} (train, per channel)")
    rows = [[i, c, counts["train"][i], counts["test"][i]] for i, c in enumerate(ds.classes)]
    print(tabulate(rows, headers=["label", "class", "train", "test"], tablefmt="github"))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .core.config import compose_config
    from .storage.io_utils import check_output_folder
    from .storage.locks import clean_temporaries
    from .training.engine import TrainingDiverged
    from .training.run import Runner, check_fault_env

    check_fault_env()
    config = compose_config(args.method, args.arch, seed=args.seed, data=args.data, cohort=args.cohort,
                            settings=_run_settings(args))
    _check_teacher_flags(args, config)
    log = _log(args.quiet)
    check_output_folder(Path(args.out))  # before any data is loaded or teacher trained
    clean_temporaries(Path(args.out), log)
    runner = Runner(Path(args.out), data_root=args.data_root, device=config["device"], log=log)
    try:
        record = runner.run(config)
    except TrainingDiverged as e:
        print(one_line(f"error: training diverged: {e} (record marked failed in {args.out})"), file=sys.stderr)
        return 1
    for name, m in record["models"].items():
        print(f"{record['run_id']}  {name:9s} {m['arch']:18s} {m['params']:>11,} params  "
              f"final {m['final_test_acc']:.2f}%  (best {m['best_test_acc_test_selected']:.2f}% at epoch "
              f"{m['best_epoch_test_selected']}, selected on the test set)")
    return 0


def _run_settings(args: argparse.Namespace) -> Iterator[tuple[str, dict]]:
    """What ``run``'s options set over the run's identity, in order, as settings layers
    (``config.apply_settings``): the device, the teacher, every stage's epochs, the training
    subset, the plain cohort step, then each ``--set`` (which may override any of them)."""
    from .core.config import default_config, get_key, leaf_keys, override_settings

    yield "--device", {"device": args.device}
    if args.teacher:
        yield "--teacher", {"teacher.arch": args.teacher}
    if args.teacher_checkpoint:
        yield "--teacher-checkpoint", {"teacher.checkpoint": args.teacher_checkpoint}
    if args.epochs is not None:  # every stage's epochs, whichever sections declare them
        shape = default_config()
        yield "--epochs", {key: args.epochs for key in leaf_keys(shape)
                           if key.split(".")[-1] == "epochs" and isinstance(get_key(shape, key), int)}
    if args.train_subset is not None:
        yield "--train-subset", {"data.train_subset": args.train_subset}
    if args.no_fuse:  # every cohort method's fused step, whichever sections declare it
        shape = default_config()
        yield "--no-fuse", {key: False for key in leaf_keys(shape)
                            if key.split(".")[-1] == "fuse" and isinstance(get_key(shape, key), bool)}
    yield from override_settings(args.set or [])


def _check_teacher_flags(args: argparse.Namespace, config: dict) -> None:
    """``--teacher`` and ``--teacher-checkpoint`` only on a run that learns from a teacher."""
    from .methods import METHODS, get_method
    from .methods.pretrain import uses_teacher

    given = [flag for flag, value in (("--teacher", args.teacher), ("--teacher-checkpoint", args.teacher_checkpoint))
             if value]
    if given and config["method"] in METHODS and not uses_teacher(get_method(config["method"]), config):
        raise UserError(f"{' and '.join(given)}: method {config['method']!r} learns from no teacher, so "
                        f"{'they' if len(given) > 1 else 'it'} would be ignored; drop {' and '.join(given)}, or choose "
                        "a method with a teacher (kd, fitnets, hint_mutual) or --set pretrain=hints")


def _name_list(text: str) -> list[str]:
    """``--arms a,b`` or ``--ablations a,b``: names, in order, without repeats or empty names."""
    return list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))


def _log(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def cmd_replicate(args: argparse.Namespace) -> int:
    """``replicate`` with its request checked before anything is loaded (``StudyRequest``), and
    the study folder locked (``<out>/.lock``) for the whole command: one writer per study
    folder. The per-GPU processes of a study run under its lock, SLURM jobs after it (per-run
    locks keep them apart)."""
    from .storage.io_utils import check_output_folder
    from .storage.locks import LOCK, FolderLock, clean_temporaries

    request = StudyRequest.from_args(args)
    if args.dry_run:
        return _dry_run(request)
    out = request.out
    check_output_folder(out, request.out_option)
    if request.shard is not None:  # a process of a study whose parent holds the lock
        return _replicate(args, request)
    log = _log(args.quiet)
    with FolderLock(out / LOCK, f"study folder {out} is in use by another replicate", root=out):
        clean_temporaries(out, log)
        clean_temporaries(out / RUNS, log)
        return _replicate(args, request)


def _dry_run(request: StudyRequest) -> int:
    from tabulate import tabulate

    from .core.envinfo import device_name, resolve_device
    from .core.progress import count_runs
    from .studies.study import dry_run
    from .training.estimate import estimate_sources, format_duration

    rows, total = dry_run(request, log=_log(True), progress=_log(False))
    print(f"{request.spec_path}, profile {request.profile}, into {request.out} (dry run: nothing is trained or "
          "written)")
    print(tabulate([list(r.values()) for r in rows], headers=list(rows[0]), tablefmt="github"))
    todo = sum(r["status"] == "to run" for r in rows)
    done = sum(r["status"] == "complete" for r in rows)
    print(f"\n{count_runs(done)} complete, {todo} to run: about {format_duration(total)} on this machine "
          f"({device_name(resolve_device(request.device))}; {estimate_sources('there')})")
    return 0


def _replicate(args: argparse.Namespace, request: StudyRequest) -> int:
    """Run the study ``request`` asks for, then (unless ``--no-report`` or a shard) its
    tables and the comparison with the stored study."""
    from .analysis.report import report_study
    from .core.progress import count_runs
    from .studies.study import run_study

    out = request.out
    log = _log(args.quiet)
    on_record = None
    if args.wandb:
        from .analysis.publish import run_logger

        on_record = run_logger(args.wandb_project, group=f"{request.spec_path.stem}-{request.profile}")
    result = run_study(request, announce_estimate=not args.quiet, on_record=on_record, log=log)
    if result.get("submitted") is not None:  # fire and forget: the jobs run on; no table yet
        n = len(result["submitted"])
        if n == 0:
            print(f"no run submitted: the {count_runs(result['left'])} to do are pending or running already; "
                  f"`mutualbench status {out}` follows them")
            return 0
        print(f"submitted {count_runs(n)} to SLURM; `mutualbench status {out}` follows them, "
              f"`mutualbench table {out}` writes the tables of those complete; the same command submits "
              "what failed again")
        return 0
    if result.get("left"):
        log(f"study incomplete: {count_runs(result['left'])} left after the time budget; the same command continues")
    code = 1 if result["errors"] else 0
    if request.shard is not None or args.no_report:
        return code
    against = request.against if request.against is not None else stored_results(request.spec_path, request.profile)
    report = report_study(out, against, arms=request.arms, ablations=request.ablations)
    if report is None:
        log(f"no complete run in {out} yet: no table written")
        for e in result["errors"]:
            print(f"error: {one_line(e)}", file=sys.stderr)
        return code
    if report.exact is not None:  # the exact tier's verdict is the answer: keep the output short
        print(f"wrote {out / 'table.md'} and {len(report.written) - 1} more files (`mutualbench table {out}` "
              "prints the table)")
    else:
        print(f"wrote {', '.join(str(p) for p in report.written.values())}")
        print(report.table)
    for e in result["errors"]:
        print(f"error: {one_line(e)}", file=sys.stderr)
    if report.exact is not None:
        print("\n".join(report.exact.lines()))
    if report.comparison is not None:
        for line in report.comparison.lines():
            print(line)
    return code


def cmd_status(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .analysis.results import load_manifest
    from .studies.slurm import run_states

    folder = Path(args.folder)
    manifest = load_manifest(folder)
    order = list(dict.fromkeys(e["run_id"] for e in manifest["runs"]))
    arms: dict[str, list[str]] = {}
    for e in manifest["runs"]:
        label = e["arm"] + (f" [{e['ablation']}={e['value']}]" if e.get("ablation") else "")
        arms.setdefault(e["run_id"], []).append(f"{label} seed {e['seed']}")
    states = run_states(folder / RUNS, order)
    rows = [[rid, "; ".join(dict.fromkeys(arms[rid])), states[rid]["state"], states[rid]["job"], states[rid]["detail"]]
            for rid in order]
    print(tabulate(rows, headers=["run id", "arm", "state", "job", "detail"], tablefmt="github"))
    counts = {}
    for v in states.values():
        counts[v["state"]] = counts.get(v["state"], 0) + 1
    kinds = ("complete", "running", "pending", "failed", "not submitted")
    print(f"\n{folder}: " + ", ".join(f"{counts[k]} {k}" for k in kinds if counts.get(k)) + f" (of {len(order)} runs)")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from .analysis.report import write_report
    from .analysis.results import has_complete_runs

    if not has_complete_runs(Path(args.folder)):
        raise UserError(f"{args.folder}: no complete run yet, so no table; `mutualbench status {args.folder}` shows "
                        "where the runs are")
    written = write_report(Path(args.folder))
    print((Path(args.folder) / "table.md").read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in written.values())}")
    return 0


def cmd_claims(args: argparse.Namespace) -> int:
    from .analysis.claims import evaluate, markdown
    from .analysis.results import load_study
    from .core.errors import UserError

    studies = [load_study(Path(f)) for f in args.folders]
    names = {s.spec["study"]["name"] for s in studies}
    if len(names) > 1:
        raise UserError(f"claims: the folders hold different studies ({', '.join(sorted(names))}); "
                        "give the profiles of one study")
    profiles = [s.manifest["profile"] for s in studies]
    if len(set(profiles)) < len(profiles):
        raise UserError(f"claims: a profile is given twice ({', '.join(profiles)}); give each profile's folder once")
    text = markdown({s.manifest["profile"]: evaluate(s) for s in studies})
    print(text or f"{args.folders[0]}: the spec states no [[claims]]")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .analysis.results import load_study
    from .core.errors import UserError
    from .studies.planning import render

    study = load_study(Path(args.folder))
    spec = args.spec or study.manifest.get("spec_path")
    if not spec or not Path(spec).is_file():
        raise UserError(f"plan: the spec of {args.folder} ({spec or 'not recorded'}) is not here; give it with --spec "
                        "PATH, e.g. --spec replication/seed_blog.toml")
    print(render(study, Path(spec), data=args.data), end="")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .analysis.report import asked_selection, compare_selected, not_selected_note
    from .analysis.results import load_study

    new, stored = load_study(Path(args.folder)), load_study(Path(args.against))
    # what the folder's replicate asked for (its manifest's asked: --arms, --ablations), as
    # replicate's own comparison does; a float64 study run by run (mutualbench.analysis.exact), float32
    # statistically (mutualbench.analysis.compare)
    arms, ablations = asked_selection(new.manifest, stored.manifest)
    result = compare_selected(new, stored, arms, ablations)
    note = not_selected_note(new, stored, arms, ablations)
    if result is None:
        raise UserError(f"{stored.folder}: no complete runs to compare against"
                        + (f" among the arms and ablations the replicate that made {new.folder} asked for" if note else ""))
    for line in result.lines():
        print(line)
    if note:
        print(note)
    return 0 if result.ok else 1


def cmd_publish(args: argparse.Namespace) -> int:
    from .analysis.publish import publish

    where = publish(Path(args.folder), project=args.project, entity=args.entity)
    print(f"published {args.folder} to W&B project {args.project} (run files: {where})")
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

    p = sub.add_parser("methods", help="list the training methods and the config sections each uses")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("data", help="load a data set (cifar10, cifar100, a folder or archive) and summarise it")
    p.add_argument("source", help="cifar10, cifar100, a class-per-folder tree, or a .tar.gz/.zip of one")
    p.add_argument("--data-root", default=None,
                   help="where downloads and caches live (default $MUTUALBENCH_DATA_ROOT or ~/.cache/mutualbench)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("run", help="train one method on one architecture with one seed; write a RunRecord")
    p.add_argument("--method", required=True, help="a registered method (see `mutualbench methods`)")
    p.add_argument("--arch", default="seed_vgg_student",
                   help="the (student) architecture; a comma-separated list gives a mixed cohort")
    p.add_argument("--teacher", default=None, help="teacher architecture, e.g. seed_vgg_teacher (methods with a teacher need it)")
    p.add_argument("--teacher-checkpoint", default=None, help="load the teacher's weights instead of training it")
    p.add_argument("--cohort", type=int, default=None, help="cohort size K for mutual methods (default: number of --arch names)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="cifar10", help="cifar10, cifar100, a class-per-folder tree or archive")
    p.add_argument("--data-root", default=None, help="downloads and caches (default $MUTUALBENCH_DATA_ROOT or ~/.cache/mutualbench)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of every stage (every *.epochs key: training, hints, the teacher's training, ...)")
    p.add_argument("--train-subset", type=int, default=None, help="train on a fixed, seeded, class-balanced subset of N images")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, e.g. --set kd.temperature=4")
    p.add_argument("--no-fuse", action="store_true",
                   help="cohort methods: the plain per-model step instead of the fused cohort (every *.fuse key: "
                        "--set mutual.fuse=false for mutual, kdcl.fuse for kdcl, ...)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", required=True, help="folder for the RunRecord (<run_id>.json) and weights")
    p.add_argument("--quiet", action="store_true", help="no per-epoch log lines")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("replicate", help="run a study spec (seeded repeats of every arm), then its table and plots")
    p.add_argument("spec", help="a study spec, e.g. replication/seed_blog.toml")
    p.add_argument("--profile", default=None, help="a profile of the spec (default: full on a GPU, cpu otherwise)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds, 0..N-1 (default: the profile's seeds, else the spec's [study] seeds)")
    p.add_argument("--data", default=None,
                   help="where to read the spec's data set: a local copy of it (archive or folder); default: the "
                        "spec's [study] data. A different data set is an error")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--out", default=None, help="output folder (default runs/<spec>/<profile>)")
    p.add_argument("--launcher", default="local", choices=LAUNCHERS)
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs per SLURM job (default: 1 when the runs are on CUDA, i.e. --device cuda, or auto on a "
                        "machine with a GPU; else none)")
    p.add_argument("--time-min", type=int, default=60,
                   help="SLURM time limit per job, minutes; a job stopped at it is requeued and resumes")
    p.add_argument("--max-parallel", type=int, default=None, metavar="N",
                   help="SLURM: at most N tasks of each job array at once (sbatch --array=...%%N)")
    p.add_argument("--max-requeues", type=int, default=3, metavar="N",
                   help="SLURM: requeue a job stopped at its time limit or preempted at most N times (default 3)")
    p.add_argument("--slurm-setup", action="append", default=None, metavar="LINE",
                   help="SLURM: a shell line each job runs first, e.g. 'module load cuda/12' (repeatable)")
    p.add_argument("--slurm-option", action="append", default=None, metavar="KEY=VALUE",
                   help="SLURM: an extra sbatch option without its dashes, e.g. account=myproject, qos=low, "
                        "mem=16G, or a bare flag such as exclusive (repeatable)")
    p.add_argument("--wait", action="store_true",
                   help="SLURM: wait for the jobs, then write the tables (default: submit every run and return)")
    p.add_argument("--no-ablations", action="store_true", help="only the main arms")
    p.add_argument("--ablations", default=None, type=_name_list, metavar="NAME[,NAME...]",
                   help="run only these ablations of the spec (with the main arms), opt-in ones (opt_in = true) "
                        "included; default: every ablation that is not opt-in")
    p.add_argument("--arms", default=None, type=_name_list, metavar="NAME[,NAME...]",
                   help="run only these arms of the spec (their main and ablation runs); the table still shows "
                        "every arm with complete runs")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (every run with its run id, which are complete in --out, an estimated time "
                        "for the rest on this machine) and exit: nothing is trained or written")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="start no run that would end past this many seconds, counted from the start of the "
                        "first run: a run's length is the larger of an estimate for this machine made before the "
                        "runs start (what a complete run of the same kind in the study folder took on this kind of "
                        "machine in its layout, or that time on another machine or layout scaled by the kinds of run "
                        "recorded in both, or else a few timed training steps; plus the teacher's training when it is still "
                        "to do) and the longest run of its kind so far; the same command continues later")
    p.add_argument("--against", default=None, help="stored study to compare with (default results/<spec>/<profile>)")
    p.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # I/N: seeds s with s % N == I
    p.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--wandb", action="store_true", help="also log each finished run to W&B")
    p.add_argument("--wandb-project", default="mutualbench")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_replicate)

    p = sub.add_parser("publish", help="publish a study folder to Weights & Biases (table, curves, records)")
    p.add_argument("folder")
    p.add_argument("--project", default="mutualbench")
    p.add_argument("--entity", default=None)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("status", help="list a study's runs as complete, running, pending, failed or not submitted")
    p.add_argument("folder")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("table", help="aggregate a study folder's records into table.md/.csv and curve plots")
    p.add_argument("folder")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("claims", help="the spec's claims tested on one or more profiles' study folders "
                       "(the first folder's verdict leads)")
    p.add_argument("folders", nargs="+", help="study folders of one study, e.g. results/seed_blog/full results/seed_blog/cpu")
    p.set_defaults(func=cmd_claims)

    p = sub.add_parser("plan", help="per claim, the seeds its test needs for 80%% power, and the runs missing to "
                       "reach the profile's planned seeds, in order, with their time and replicate commands")
    p.add_argument("folder", help="a study folder, e.g. results/seed_blog/full")
    p.add_argument("--spec", default=None, help="the study's spec (default: the one its manifest names)")
    p.add_argument("--data", default=None, help="the local copy of the data set, written into the commands")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("compare", help="check a study against stored results (exit 0 same, 1 different, 2 bad input)")
    p.add_argument("folder")
    p.add_argument("--against", required=True, help="the stored study folder, e.g. results/seed_blog/smoke")
    p.set_defaults(func=cmd_compare)
    return parser


PATH_OPTIONS = ("out", "data", "data_root", "spec", "against", "folder", "folders", "write", "check")


def _check_paths(args: argparse.Namespace) -> None:
    """Every path given on the command line can exist (no name over the file system's limit):
    else one line now, not an ENAMETOOLONG traceback after the work has begun."""
    from .storage.io_utils import PATH_MAX, check_path_length

    for option in PATH_OPTIONS:
        values = getattr(args, option, None)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str) and value:
                check_path_length(Path(value), "--" + option.replace("_", "-") if option not in (
                    "spec", "folder", "folders") else option.rstrip("s"), PATH_MAX)


def _utf8_streams() -> None:
    """Print as UTF-8 whatever the locale (tables hold '−', '±' and '→'; under LC_ALL=C Python
    would write ASCII and fail on them), as every file is read and written."""
    for stream in (sys.stdout, sys.stderr):
        if (getattr(stream, "encoding", None) or "utf-8").lower().replace("-", "") != "utf8" and hasattr(
                stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    _utf8_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_paths(args)
        return args.func(args)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
