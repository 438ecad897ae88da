"""The exact tier: a float64 study compared run by run with a stored one.

float64 training rounds differently on different instruction sets and thread counts only
around 1e-16, far below anything a test image or a loss can show over a smoke-sized run, so
a float64 rerun must reproduce the stored records themselves, not only their means: for
every run id of the seeds both studies hold, the same final and per-epoch test accuracies
(exactly, every model and the cohort's ensemble) and every epoch's training losses within
a relative ``LOSS_RTOL``, or the profile's own ``loss_rtol`` where its training amplifies
rounding differences more (the rerun's spec says; its accuracies must still be equal). A stored study is exact when every complete record in it trained in
float64 (``precision`` of the record, ``speed.dtype``); float32 studies are compared
statistically (``mutualbench.analysis.results``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..core.progress import count_runs
from .results import Study

LOSS_RTOL = 1e-9
SHOWN = 5  # differing runs named in the output; the rest are counted


@dataclass
class ExactComparison:
    """The outcome: how many runs of which seeds were compared, and what differed (one line per
    differing run, its first differing field)."""

    runs: int
    seeds: list[int]
    stored_seeds: list[int]
    new_seeds: list[int]
    problems: list[str] = field(default_factory=list)
    missing: int = 0  # stored runs without a complete record of the same id here
    rtol: float = LOSS_RTOL

    @property
    def ok(self) -> bool:
        return self.runs > 0 and not self.problems

    def lines(self) -> list[str]:
        """What ``compare`` and ``replicate`` print: one line when it matches."""
        seeds = _seed_text(self.seeds)
        if not self.seeds:
            return [f"not reproduced exactly: no seed in common (stored seeds {_seed_text(self.stored_seeds)}, "
                    f"these {_seed_text(self.new_seeds) or 'none'})"]
        unused = sorted(set(self.stored_seeds) ^ set(self.new_seeds))
        also = (f"; seed{'s' if len(unused) > 1 else ''} {_seed_text(unused)} "
                f"{'are' if len(unused) > 1 else 'is'} on one side only, not compared") if unused else ""
        if self.ok:
            within = f"; losses within a relative {self.rtol:g}, the profile's loss_rtol" if self.rtol != LOSS_RTOL else ""
            return [f"reproduced exactly: {count_runs(self.runs)} (seed{'s' if len(self.seeds) > 1 else ''} {seeds}"
                    f"{within}){also}"]
        if self.missing == self.runs:
            return [f"not reproduced exactly: none of the {self.runs} stored runs of seeds {seeds} is here (their run "
                    "ids hash every setting: these runs were made with other settings, code defaults or data)"]
        head = (f"not reproduced exactly: {len(self.problems)} of {self.runs} runs differ (seeds {seeds}{also}; "
                f"accuracies must be equal, losses within a relative {self.rtol:g}):")
        more = len(self.problems) - SHOWN
        return [head] + [f"  {p}" for p in self.problems[:SHOWN]] + ([f"  ... and {more} more"] if more > 0 else [])


def _seed_text(seeds: list[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def is_exact(study: Study) -> bool:
    """Whether ``study``'s complete runs all trained in float64 (and there is at least one)."""
    complete = [r for r in study.records.values() if r["status"] == "complete"]
    return bool(complete) and all(r.get("precision") == "float64" for r in complete)


def _seeds(study: Study) -> list[int]:
    return sorted({e["seed"] for e in study.manifest["runs"]
                   if (study.records.get(e["run_id"]) or {}).get("status") == "complete"})


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if not (isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def run_difference(stored: dict, new: dict, rtol: float = LOSS_RTOL) -> str | None:
    """The first field in which record ``new`` differs from ``stored`` (None: the same): the
    precision, the models, every epoch's stage, test accuracies and training losses, the
    final and best accuracies and the ensemble's."""
    if new.get("precision") != stored.get("precision"):
        return f"precision {new.get('precision')}, stored {stored.get('precision')}"
    if set(new["models"]) != set(stored["models"]):
        return f"models {', '.join(new['models'])}, stored {', '.join(stored['models'])}"
    if len(new["curves"]) != len(stored["curves"]):
        return f"{len(new['curves'])} epochs, stored {len(stored['curves'])}"
    for s, n in zip(stored["curves"], new["curves"], strict=True):
        where = f"epoch {s['epoch']}"
        if n.get("stage") != s.get("stage"):
            return f"{where}: stage {n.get('stage')}, stored {s.get('stage')}"
        for model, acc in s["test_acc"].items():
            if n["test_acc"].get(model) != acc:
                return f"{where}: {model} test accuracy {n['test_acc'].get(model)}%, stored {acc}%"
        if set(n["test_acc"]) != set(s["test_acc"]):
            return f"{where}: evaluated {', '.join(n['test_acc'])}, stored {', '.join(s['test_acc'])}"
        n_loss = n.get("train_loss") or {}  # optional in a record (stored_schema.CurvePoint)
        for model, loss in (s.get("train_loss") or {}).items():
            r = _rel(loss, n_loss.get(model, math.nan))
            if not r <= rtol:
                return (f"{where}: {model} training loss {n_loss.get(model)!r}, stored {loss!r} "
                        f"(relative difference {r:.1e})")
    for model, m in stored["models"].items():
        for key in ("final_test_acc", "best_test_acc_test_selected", "best_epoch_test_selected"):
            if new["models"][model].get(key) != m.get(key):
                return f"{model} {key} {new['models'][model].get(key)}, stored {m.get(key)}"
    s_ens, n_ens = (stored.get("ensemble") or {}).get("final_test_acc"), (new.get("ensemble") or {}).get("final_test_acc")
    if s_ens != n_ens:
        return f"ensemble final accuracy {n_ens}%, stored {s_ens}%"
    s_nll = (stored.get("ensemble") or {}).get("final_test_nll")  # recorded by runs made since it existed
    if s_nll is not None:
        n_nll = (new.get("ensemble") or {}).get("final_test_nll")
        r = _rel(s_nll, n_nll if n_nll is not None else math.nan)
        if not r <= rtol:
            return f"ensemble test NLL {n_nll!r}, stored {s_nll!r} (relative difference {r:.1e})"
    return None


def loss_rtol(study: Study) -> float:
    """The relative loss tolerance of a study's profile: its spec's ``[profiles.<name>]
    loss_rtol``, else ``LOSS_RTOL``."""
    try:
        value = study.manifest["spec"]["profiles"][study.manifest["profile"]].get("loss_rtol")
    except (KeyError, TypeError, AttributeError):
        return LOSS_RTOL
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        return LOSS_RTOL
    return float(value)


def compare_exact(new: Study, stored: Study, rtol: float | None = None) -> ExactComparison:
    """Every complete stored run of the seeds both studies hold, by run id, against the new
    study's record of the same run id (a missing or incomplete one is a difference). ``rtol``:
    the losses' relative tolerance, by default the rerun's profile's (``loss_rtol``)."""
    rtol = loss_rtol(new) if rtol is None else rtol
    stored_seeds, new_seeds = _seeds(stored), _seeds(new)
    seeds = sorted(set(stored_seeds) & set(new_seeds))
    problems, compared, missing, seen = [], 0, 0, set()
    for entry in stored.manifest["runs"]:
        rid = entry["run_id"]
        rec = stored.records.get(rid)
        if entry["seed"] not in seeds or rid in seen or rec is None or rec["status"] != "complete":
            continue
        seen.add(rid)
        compared += 1
        name = f"{entry['arm']} seed {entry['seed']}" + (f" [{entry['ablation']}={entry['value']}]"
                                                         if entry.get("ablation") else "")
        other = new.records.get(rid)
        if other is None or other["status"] != "complete":
            problems.append(f"{name} ({rid}): no complete run of this id in {new.folder}")
            missing += 1
            continue
        diff = run_difference(rec, other, rtol)
        if diff is not None:
            problems.append(f"{name} ({rid}): {diff}")
    return ExactComparison(compared, seeds, stored_seeds, new_seeds, problems, missing, rtol)
