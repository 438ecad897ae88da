"""What ``replicate`` is asked, as one typed, immutable ``StudyRequest``: the study (spec,
profile, folder), which of its runs (seeds, arms, ablations), where they read their data and
on which device, how they are launched (here, one process per GPU, or SLURM, with its
options), for how long, and what to compare the tables with.

It is built from the command line in one place (``StudyRequest.from_args``), checked once as
it is made, before anything is loaded or the study folder touched, and passed whole:
``study.run_study`` -> ``study.replicate`` -> ``study.plan_study`` (and ``study.dry_run``),
and ``launch.run_per_gpu``, which writes it back as each GPU's command line. What depends on
the spec (its arms, ablations and data set) is checked where the spec is read
(``study.plan_study``); that ``--time-budget`` runs on one device where the GPUs are counted
(``study.run_study``)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError
from ..storage.layout import MANIFEST, default_out

DEVICES = ("auto", "cpu", "cuda")
LAUNCHERS = ("local", "slurm")


@dataclass(frozen=True)
class SlurmOptions:
    """``replicate``'s SLURM options as given (None: not given); only ``--launcher slurm``
    uses them."""

    partition: str | None = None
    gpus: int | None = None  # per job; None: 1 where the runs are on CUDA, else none (``gpus_for``)
    time_min: int = 60  # the time limit per job, minutes
    max_parallel: int | None = None  # tasks of each job array at once
    max_requeues: int = 3
    setup: tuple[str, ...] | None = None  # --slurm-setup: shell lines each job runs first
    options: tuple[str, ...] | None = None  # --slurm-option: KEY=VALUE or KEY, as given
    wait: bool = False  # wait for the jobs, then write the tables

    def __post_init__(self) -> None:
        for name in ("setup", "options"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def given(self) -> list[str]:
        """The options given, as flags (those that have a default are always there)."""
        return [flag for flag, value in (("--partition", self.partition), ("--gpus", self.gpus),
                                         ("--max-parallel", self.max_parallel), ("--slurm-setup", self.setup),
                                         ("--slurm-option", self.options), ("--wait", self.wait or None))
                if value is not None]

    def check(self) -> None:
        """Every count in range, every ``--slurm-option`` of the form KEY=VALUE or KEY."""
        for name in ("gpus", "time_min", "max_parallel", "max_requeues"):
            value, least = getattr(self, name), 0 if name in ("gpus", "max_requeues") else 1
            if value is not None and value < least:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} {value} is not allowed; give a number of at least {least}")
        self.sbatch_options()

    def check_here(self) -> None:
        """This machine can submit: submitit and SLURM's commands are here, and ``--wait``'s
        poll interval (``$MUTUALBENCH_SLURM_POLL_S``) is a number (its error now, not after
        the jobs are submitted)."""
        from .slurm import check_available, poll_seconds

        if self.wait:
            poll_seconds()
        check_available()

    def sbatch_options(self) -> dict:
        """``--slurm-option`` as sbatch options, ``{key: value, or True for a flag}``."""
        from .slurm import slurm_options

        return slurm_options(list(self.options) if self.options is not None else None)

    def gpus_for(self, device: str) -> int:
        """GPUs per job: as given, else 1 where the runs are on CUDA (``--device cuda``, or
        ``auto`` where this machine has one), else none."""
        if self.gpus is not None:
            return self.gpus
        import torch

        return 1 if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else 0

    def submit_options(self, device: str) -> dict:
        """The options of ``slurm.submit_study`` for runs on ``device`` (all but ``wait``)."""
        return {"partition": self.partition, "gpus": self.gpus_for(device), "time_min": self.time_min,
                "max_parallel": self.max_parallel, "max_requeues": self.max_requeues,
                "setup": list(self.setup) if self.setup is not None else None, "options": self.sbatch_options()}


@dataclass(frozen=True)
class StudyRequest:
    """One ``replicate``: the spec at ``spec_path`` in ``profile``, into the study folder
    ``out``. ``data``: where to read the spec's data set (None: the spec's ``[study] data``);
    ``seeds``: 0..N-1 (None: the profile's, else the spec's); ``arms``: only these arms (None:
    every one); ``ablations``: True (the spec's default ones), False (none) or the names to run;
    ``shard``: (I, N), only the seeds s with s % N == I (a process of a study split over GPUs);
    ``time_budget_s``: start no run that would end past it; ``against``: the stored study to
    compare with (None: ``results/<spec>/<profile>``); ``out_given``: ``out`` came from
    ``--out`` (errors name the option), not the default. Checked as it is made (``check``)."""

    spec_path: Path
    profile: str
    out: Path
    data: str | None = None
    data_root: Path | None = None
    seeds: int | None = None
    arms: tuple[str, ...] | None = None
    ablations: bool | tuple[str, ...] = True
    device: str = "auto"
    launcher: str = "local"
    shard: tuple[int, int] | None = None
    time_budget_s: float | None = None
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    against: Path | None = None
    out_given: bool = True

    def __post_init__(self) -> None:
        for name in ("spec_path", "out", "data_root", "against"):  # paths given as text too
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.arms is not None:
            object.__setattr__(self, "arms", tuple(self.arms))
        if not isinstance(self.ablations, bool):
            object.__setattr__(self, "ablations", tuple(self.ablations))
        self.check()

    @property
    def out_option(self) -> str:
        """How errors about the study folder name it."""
        return "--out" if self.out_given else "the study folder"

    def check(self) -> None:
        """Every count and limit in range, ``--against`` a study, the study folder not a file,
        the SLURM options only with ``--launcher slurm`` (and in range there), before any work.
        The one check of these options."""
        from ..storage.io_utils import check_not_a_file
        from ..storage.spec_schema import MAX_SEEDS

        for flag, value, allowed in (("--device", self.device, DEVICES), ("--launcher", self.launcher, LAUNCHERS)):
            if value not in allowed:  # (the command line's choices; a caller of the library may give others)
                raise UserError(f"{flag} {value!r} is not allowed; give one of {', '.join(allowed)}")
        seeds = self.seeds
        if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool)
                                  or not 1 <= seeds <= MAX_SEEDS):
            raise UserError(f"--seeds {seeds} is not allowed; give a positive number of seeds, at most {MAX_SEEDS} "
                            "(0..N-1 are run)")
        budget = self.time_budget_s
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise UserError(f"--time-budget must be a positive number of seconds, not {budget:g}")
        if self.slurm.time_min < 1:
            raise UserError(f"--time-min {self.slurm.time_min} is not allowed; give the SLURM time limit per job in "
                            "whole minutes, at least 1")
        self._check_against()
        check_not_a_file(self.out, self.out_option)
        if self.launcher != "slurm":
            given = self.slurm.given()
            if given:
                verb, them = ("applies", "it") if len(given) == 1 else ("apply", "them")
                raise UserError(f"{', '.join(given)} {verb} to --launcher slurm; add --launcher slurm, or drop {them}")
        else:
            self.slurm.check()
        if self.shard is not None:
            index, count = self.shard
            if not 0 <= index < count:
                raise UserError(f"--shard '{index}/{count}' is not allowed; give I/N with 0 <= I < N, e.g. 0/2")
        if budget is not None and self.launcher != "local":  # and one device: study.run_study counts the GPUs
            raise UserError("--time-budget works with the local launcher on one device: drop it, or set "
                            "CUDA_VISIBLE_DEVICES to one GPU")

    def _check_against(self) -> None:
        """``--against`` a study folder (``--against`` the study folder itself compares with
        nothing: the folder may not exist yet)."""
        against = self.against
        if against is None or against.resolve() == self.out.resolve() or (against / MANIFEST).is_file():
            return
        what = "does not exist" if not against.exists() else f"has no {MANIFEST}"
        raise UserError(f"--against {against} {what}; give a study folder written by `mutualbench replicate` "
                        "(e.g. results/<spec>/<profile>), or drop --against to compare with the stored one")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StudyRequest:
        """The request of ``mutualbench replicate``'s options: the one place they are read.
        The profile defaults to ``full`` on a machine with a GPU, else ``cpu``; the study folder
        to ``runs/<spec>/<profile>``. With ``--launcher slurm``, also that this machine can
        submit (``SlurmOptions.check_here``)."""
        from ..training.run import check_fault_env

        check_fault_env()
        profile = args.profile or default_profile()
        request = cls(
            spec_path=Path(args.spec), profile=profile,
            out=Path(args.out) if args.out else default_out(args.spec, profile), out_given=bool(args.out),
            data=args.data, data_root=args.data_root, seeds=args.seeds, arms=args.arms,
            ablations=_ablations(args.no_ablations, args.ablations), device=args.device, launcher=args.launcher,
            shard=parse_shard(args.shard) if args.shard else None, time_budget_s=args.time_budget,
            slurm=SlurmOptions(partition=args.partition, gpus=args.gpus, time_min=args.time_min,
                               max_parallel=args.max_parallel, max_requeues=args.max_requeues,
                               setup=args.slurm_setup, options=args.slurm_option, wait=args.wait),
            against=args.against)
        if request.launcher == "slurm":
            request.slurm.check_here()  # before the study folder is touched
        return request


def default_profile() -> str:
    """``full`` on a machine with a GPU, else ``cpu``."""
    import torch

    return "full" if torch.cuda.is_available() else "cpu"


def _ablations(none: bool, names: list[str] | None) -> bool | list[str]:
    """``--no-ablations`` (none), ``--ablations NAMES`` (those) or the spec's default ones."""
    if none and names is not None:
        raise UserError("--no-ablations and --ablations contradict each other: give one of them")
    return False if none else (names if names is not None else True)


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` as (I, N): the seeds s with s % N == I, for a process of a study split
    over GPUs (``StudyRequest.check``: 0 <= I < N)."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()):
        raise UserError(f"--shard {text!r} is not allowed; give I/N with 0 <= I < N, e.g. 0/2")
    return int(index), int(count)
