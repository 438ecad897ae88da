"""What a kind of run took, from a folder's records: on this machine, or scaled from another.

A complete run's record holds its epochs' times (``estimate.recorded_estimate``): a later seed
of the same kind of run takes what the earlier ones took on the same kind of machine, in the
same memory layout (their median). A kind of run recorded only on another kind of machine, or
in another layout, has its time there scaled by how this machine compares *on whole runs*:
the median, over the other kinds of run recorded both there and here (in the layout the run
will train in), of their time here over their time there. Both are read from records only,
so two plans or dry runs in a row agree exactly however busy the machine is, and they count
every epoch of real runs rather than a few timed steps. A kind of run recorded here only for
other epochs (DML for 30 epochs, when the run is DML for 40) takes their median epoch per
stage times its own epochs, before any record from elsewhere. Where no other kind of run was
recorded in both places, a time from elsewhere is given unscaled and named so
(``Found.scaled`` is then false; ``RunTimer`` times the run's steps instead).

A record from a run resumed on other kinds of machine (its ``segments``) took no single
machine's time and is skipped; one made with another number of threads counts as another
kind of machine.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from .assembly import run_channels_last
from .estimate import PlannedRun, RunEstimate, planned_run, recorded_estimate, without_epochs

Place = tuple[str, str]  # (kind of machine, memory layout)
HERE = "this kind of machine"
NOT_RECORDED = "no run of this kind recorded here"


COST_FREE_KEYS = ("seed", "init")  # what a run draws, not what it computes: runs differing only here cost the same


def kind_of_run(resolved: dict) -> str:
    """A run's kind: its resolved config without what does not change its cost (its seed and
    its models' init, ``COST_FREE_KEYS``) and without the path its data was read from (a
    record names the local copy it read), as a record made before a later key existed would
    give it."""
    from ..core.config import canonical_json, without_later_defaults

    data = {k: v for k, v in (resolved.get("data") or {}).items() if k != "source"}
    kept = {k: v for k, v in without_later_defaults(dict(resolved, data=data)).items() if k not in COST_FREE_KEYS}
    return canonical_json(kept)


def family_of(kind: str) -> str:
    """A kind of run without any of its epochs: runs that differ only in how long they train."""
    import json

    from ..core.config import canonical_json

    return canonical_json(without_epochs(json.loads(kind)))


def scaled(est: RunEstimate, factor: float) -> RunEstimate:
    """``est`` with every time multiplied by ``factor`` (its stages and epochs kept)."""
    return replace(est, train_s=est.train_s * factor, eval_s=est.eval_s * factor, teacher_s=est.teacher_s * factor,
                   per_epoch=tuple((a * factor, b * factor) for a, b in est.per_epoch))


def _total(est: RunEstimate) -> float:
    return est.train_s + est.eval_s


def median_estimate(ests: list[RunEstimate]) -> RunEstimate:
    """The median of several runs of one kind: the run at the lower median total, scaled to
    the median total (so its stages and epochs stay those of a real run)."""
    totals = [_total(e) for e in ests]
    base = ests[totals.index(statistics.median_low(totals))]
    return scaled(base, statistics.median(totals) / _total(base)) if _total(base) > 0 else base


@dataclass(frozen=True)
class Found:
    """A kind of run's time found in the records, and how: ``how`` names where it was recorded
    and any scaling; ``scaled`` is false only for a time from elsewhere used as it was."""

    estimate: RunEstimate | None
    how: str
    scaled: bool = True

    @property
    def seconds(self) -> float | None:
        return None if self.estimate is None else _total(self.estimate)


class RecordedTimes:
    """The complete runs of a folder by kind of run, then by (kind of machine, layout)."""

    def __init__(self, times: dict[str, dict[Place, list[RunEstimate]]], here: str) -> None:
        self.times, self.here = times, here
        self._plans: dict[tuple[str, bool], PlannedRun] = {}  # (kind, channels_last asked) -> its plan

    def planned(self, config: dict, resolved: dict) -> PlannedRun:
        """``estimate.planned_run`` of a run, once per kind of run and asked layout."""
        asked = (kind_of_run(resolved), run_channels_last(config))
        if asked not in self._plans:
            self._plans[asked] = planned_run(config, resolved)
        return self._plans[asked]

    def find_run(self, config: dict, resolved: dict) -> Found:
        """``find`` for a run of ``config`` (``resolved``: ``run.resolve`` of it): its kind, and
        the layout and stage epochs of its plan."""
        plan = self.planned(config, resolved)
        return self.find(kind_of_run(resolved), plan.layout, plan.stage_epochs)

    @classmethod
    def read(cls, runs_dir: Path, here: str, threads: int | None = None) -> RecordedTimes:
        """The records of ``runs_dir``; ``here`` is this machine's kind (``current_machine_kind``),
        ``threads`` the threads this process trains with (a record made with others is
        another kind of machine; None: not compared)."""
        from ..core.envinfo import MIXED, record_machine_kind
        from ..storage.records import read_record, record_layout

        times: dict[str, dict[Place, list[RunEstimate]]] = {}
        for path in sorted(Path(runs_dir).glob("*.json")):
            try:
                rec = read_record(path)
            except Exception:  # noqa: BLE001 -- a damaged record times nothing; table/compare report it
                continue
            machine = record_machine_kind(rec)
            if rec.get("status") != "complete" or MIXED in machine:
                continue
            made_with = ((rec.get("env") or {}).get("cpu") or {}).get("threads")
            if threads is not None and isinstance(made_with, int) and made_with != threads:
                machine = f"{machine}, {made_with} threads"
            times.setdefault(kind_of_run(rec["config"]), {}).setdefault(
                (machine, record_layout(rec)), []).append(recorded_estimate(rec))
        return cls(times, here)

    def _median_s(self, kind: str, place: Place) -> float:
        return statistics.median(_total(e) for e in self.times[kind][place])

    def ratio(self, kind: str, source: Place, target: Place) -> tuple[float, int] | None:
        """How much longer runs take at ``target`` than at ``source``: the median, over the
        kinds of run other than ``kind`` recorded at both, of their median times' ratio; and
        how many kinds that is (None: no such kind)."""
        ratios = [self._median_s(k, target) / self._median_s(k, source)
                  for k, places in self.times.items()
                  if k != kind and source in places and target in places and self._median_s(k, source) > 0]
        return (statistics.median(ratios), len(ratios)) if ratios else None

    def _where(self, place: Place, layout: str) -> str:
        machine, made_in = place
        where = HERE if machine == self.here else f"recorded on {machine}"
        return where if made_in == layout else f"{where}, in {made_in}"

    def _other_epochs(self, kind: str, target: Place, stage_epochs: tuple[int, ...]) -> Found | None:
        """Runs of the same kind but for other epochs, recorded at ``target``, each stage's
        median epoch times the epochs this run's stage will train (the kind recorded most
        often first; None: none with one time per epoch of each of as many stages)."""
        family = family_of(kind)
        options = [(len(places[target]), k, median_estimate(places[target])) for k, places in self.times.items()
                   if k != kind and target in places and family_of(k) == family]
        options = [o for o in options if len(o[2].per_epoch) == len(stage_epochs)]
        if not options:
            return None
        _, _, est = max(options, key=lambda o: (o[0], o[1]))
        before = "+".join(str(e) for e in est.stage_epochs)
        return Found(est.for_epochs(stage_epochs),
                     f"{HERE}, from runs of this kind for {before} epochs, per epoch")

    def find(self, kind: str, layout: str, stage_epochs: tuple[int, ...] | None = None) -> Found:
        """The time of a run of ``kind`` that will train in ``layout`` on this machine (its
        stages for ``stage_epochs``, where known): the median of its kind's records here in
        that layout; else runs of the same kind for other epochs recorded here in that layout,
        per epoch; else a record from another layout or machine scaled by ``ratio`` (this
        machine first, then the one compared through the most kinds of run); else a record
        from elsewhere as it is, named so."""
        target = (self.here, layout)
        recorded = self.times.get(kind)
        if recorded and target in recorded:
            return Found(median_estimate(recorded[target]), HERE)
        if stage_epochs:
            longer = self._other_epochs(kind, target, tuple(stage_epochs))
            if longer is not None:
                return longer
        if not recorded:
            return Found(None, NOT_RECORDED, scaled=False)
        options = [(place, r) for place in recorded if (r := self.ratio(kind, place, target)) is not None]
        if options:
            place, (factor, n) = max(options, key=lambda o: (o[0][0] == self.here, o[1][1], len(recorded[o[0]]), o[0]))
            kinds = "kind" if n == 1 else "kinds"
            return Found(scaled(median_estimate(recorded[place]), factor),
                         f"{self._where(place, layout)}, scaled x{factor:.2f}: the median over {n} other {kinds} of "
                         f"run recorded there and here in {layout}")
        place = max(recorded, key=lambda p: (p[0] == self.here, p[1] == layout, len(recorded[p]), p))
        how = self._where(place, layout)
        if place[1] != layout:
            how += f"; this run trains {layout}"
        return Found(median_estimate(recorded[place]), how, scaled=False)
