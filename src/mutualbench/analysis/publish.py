"""Weights & Biases publishing (optional; ``pip install 'mutualbench[wandb]'``).

``publish(folder)``: one W&B run per study and profile, holding the summary table as a
``wandb.Table``, the paired comparisons, the curve plots, the study config, and the
manifest, records and tables as an artifact. ``log_run(record)`` logs one finished run's
per-epoch curves (``replicate --wandb``). Without wandb, or without credentials outside
offline mode, it says so and changes nothing.

Starting a W&B run (logins and retries included) waits at most ``$MUTUALBENCH_NET_TIMEOUT``
seconds (default 60) in all; past that, or on any other failure to start, it is a one-line error. ``publish``
writes the study's table files only once its W&B run has started, so a failed publish
changes nothing in the folder."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..core.errors import UserError
from ..core.net import NET_TIMEOUT_ENV, is_timeout, net_timeout


def _wandb():
    try:
        import wandb
    except ImportError:
        raise UserError("wandb is not installed: pip install 'mutualbench[wandb]' (nothing was changed)") from None
    net_timeout()  # a bad $MUTUALBENCH_NET_TIMEOUT fails here, before any work (replicate --wandb checks first)
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode not in ("offline", "disabled", "dryrun"):
        key = os.environ.get("WANDB_API_KEY")
        if not key:
            try:
                key = wandb.Api().api_key
            except Exception:
                key = None
        if not key:
            raise UserError("no W&B credentials: run `wandb login` or set WANDB_API_KEY, or set WANDB_MODE=offline "
                            "to write the run locally (nothing was changed)")
    return wandb


def _run_dir() -> str | None:
    """Where W&B writes its local files: $WANDB_DIR when set, read at each call (wandb keeps
    process-wide settings otherwise)."""
    return os.environ.get("WANDB_DIR") or None


def _init(wandb, what: str, after: str, **kwargs):
    """``wandb.init`` bounded by the network timeout; a failure to start is a ``UserError``."""
    timeout = net_timeout()
    outcome: dict = {}

    def start() -> None:
        try:
            outcome["run"] = wandb.init(settings=wandb.Settings(init_timeout=timeout), **kwargs)
        except Exception as e:  # wandb.errors.CommError on a timeout, a refused connection, a bad project...
            outcome["error"] = e

    # wandb's init_timeout covers only its wait for its backend (logins and retries come on top):
    # the whole start is given the timeout, in a thread left behind (a daemon) when it runs over
    thread = threading.Thread(target=start, name="wandb-init", daemon=True)
    thread.start()
    thread.join(timeout)
    if "run" in outcome:
        return outcome["run"]
    try:
        raise outcome.get("error") or TimeoutError(f"no answer within {timeout:g} s")
    except Exception as e:
        text = " ".join(str(e).split())
        if is_timeout(e) or "timed out" in text.lower():
            why = (f"no answer within {timeout:g} s; set {NET_TIMEOUT_ENV}=<seconds> to wait longer, or "
                   "WANDB_MODE=offline to write the run locally and `wandb sync` it later")
        else:
            why = f"{type(e).__name__}: {text}; check the network and the project name, or set WANDB_MODE=offline"
        raise UserError(f"could not start the W&B run {what} ({why}); {after}") from None


def publish(folder: Path, project: str = "mutualbench", entity: str | None = None) -> str:
    from ..storage.layout import MANIFEST, RUNS
    from .report import write_report
    from .results import load_study

    wandb = _wandb()
    folder = Path(folder)
    study = load_study(folder)
    manifest, df, summary, paired = study.manifest, study.runs, study.summary, study.paired
    spec, profile = manifest["spec"], manifest["profile"]
    name = f"{spec['study']['name']}-{profile}"
    run = _init(wandb, f"{name!r} for {folder}", f"nothing in {folder} was changed",
                project=project, entity=entity, name=name, job_type="study", reinit=True, dir=_run_dir(),
                config={"study": spec["study"]["name"], "profile": profile, "seeds": manifest["seeds"],
                        "data": manifest["data"], "spec": spec})
    try:
        written = write_report(study)  # only now that the upload can start
        logged = {"summary_table": wandb.Table(dataframe=summary.astype(object).where(summary.notna(), None)),
                  "runs_table": wandb.Table(dataframe=df.astype(object).where(df.notna(), None))}
        if not paired.empty:
            logged["paired_comparisons"] = wandb.Table(dataframe=paired.astype(object).where(paired.notna(), None))
        from .claims import evaluate

        # every table carries both statistics (final epoch, last-5 mean) and Holm-adjusted p
        for key, frame in (("contrasts", study.contrasts), ("ablation_comparisons", study.ablations),
                           ("claims", evaluate(study))):
            if not frame.empty:
                logged[key] = wandb.Table(dataframe=frame.astype(object).where(frame.notna(), None))
        for key, path in written.items():
            if key.endswith(".png"):
                logged[key[:-4]] = wandb.Image(str(path))
        run.log(logged)
        artifact = wandb.Artifact(f"{name}-records", type="run-records",
                                  metadata={"data_sha256": manifest["data"]["sha256"]})
        for path in [folder / MANIFEST, folder / "table.md", folder / "table.csv", *sorted((folder / RUNS).glob("*.json"))]:
            artifact.add_file(str(path), name=str(path.relative_to(folder)))
        run.log_artifact(artifact)
        return run.dir
    finally:
        run.finish()


def run_logger(project: str, group: str | None = None, entity: str | None = None):
    """A callback logging each finished run to W&B; fails now (before any training) when
    wandb or its credentials are missing."""
    _wandb()
    return lambda record: log_run(record, project=project, entity=entity, group=group)


def log_run(record: dict, project: str = "mutualbench", entity: str | None = None, group: str | None = None) -> None:
    """One W&B run for one finished RunRecord: its config and per-epoch curves."""
    wandb = _wandb()
    run = _init(wandb, f"{record['run_id']!r}", "the run's record is written; only its W&B copy is missing",
                project=project, entity=entity, name=record["run_id"], group=group,
                job_type="run", dir=_run_dir(), reinit=True,
                config={"config": record["config"], "data": record["data"], "env": record["env"]})
    try:
        for e in record["curves"]:
            row = {"epoch": e["epoch"], "stage": e["stage"], "images_per_s": e["images_per_s"]}
            row.update({f"test_acc/{n}": a for n, a in e["test_acc"].items()})
            row.update({f"train_loss/{n}": v for n, v in e["train_loss"].items()})
            row.update({f"train_loss/{n}/{t}": v for n, ts in (e.get("train_loss_terms") or {}).items()
                        for t, v in ts.items()})
            run.log(row)
        run.summary.update({f"final_test_acc/{n}": m["final_test_acc"] for n, m in record["models"].items()})
    finally:
        run.finish()
