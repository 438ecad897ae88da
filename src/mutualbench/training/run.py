"""One seeded run of one method: resolve the config, get the data and (if needed) a
teacher, train through the engine, and write the RunRecord.

Output layout for ``out_dir``::

    <run_id>.json          the RunRecord (written atomically; the run's only result file)
    <run_id>/checkpoint.pt while running: the per-epoch checkpoint a rerun resumes from
    <run_id>/.lock         while running: the process training the run (see ``locks``)
    <run_id>/final.pt      the trained weights ({"models": {name: state_dict}}), used to reuse
                           a teacher; loaded with weights_only=True
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from ..archs import FeatureModel, count_parameters, create_arch, is_known_arch
from ..core.config import BASE_DEFAULTS, arch_names, compose_config, run_id, validate
from ..core.envinfo import (
    current_machine_kind,
    environment,
    load_average,
    machine_kind,
    record_machine_kind,
    resolve_device,
)
from ..core.errors import UserError, warn
from ..core.progress import closing_line
from ..data import ImageDataset, load_dataset
from ..data.sources import sha256_file
from ..methods import METHODS, get_method
from ..methods.base import config_dtype
from ..methods.pretrain import check_pretrain, pretrain_sections, uses_teacher
from ..storage.io_utils import atomic_torch_save, move_aside, safe_target, safe_torch_load
from ..storage.locks import LOCK, FolderLock
from ..storage.records import (
    CHANNELS_LAST,
    NCHW,
    complete_record,
    finish_record,
    model_result,
    record_layout,
    record_path,
    record_problem,
    started_record,
    write_record,
)
from .assembly import assemble, new_teacher, run_channels_last, stages_layout
from .engine import TrainingDiverged

RETRAIN_TEACHERS_ENV = "MUTUALBENCH_RETRAIN_TEACHERS"
TOP_LEVEL = ("method", "arch", "cohort", "seed", "init", "pretrain")


def resolve(config: dict) -> dict:
    """Check a full config (registries included) and keep only what the method's result
    depends on; the run id hashes exactly this."""
    validate(config)
    if config["method"] not in METHODS:
        raise UserError(METHODS.unknown_message(config["method"]))
    method = get_method(config["method"])
    if isinstance(config["arch"], str):
        config = dict(config, arch=arch_names(config["arch"]))
    for arch in config["arch"]:
        if not is_known_arch(arch):
            create_arch(arch)  # raises the helpful unknown-name error
    if uses_teacher(method, config):
        if config["teacher"]["arch"] is None:
            raise UserError(f"method {method.name!r} learns from a teacher: name its architecture with --teacher ARCH "
                            "(or --set teacher.arch=ARCH), e.g. seed_vgg_teacher; add --teacher-checkpoint PATH to load "
                            "its weights instead of training it")
        if not is_known_arch(config["teacher"]["arch"]):
            create_arch(config["teacher"]["arch"])
    if config["speed"].get("dtype") == "float64" and config["speed"]["bf16"]:
        raise UserError("speed.bf16 = true and speed.dtype = \"float64\" contradict each other (bf16 autocast "
                        "narrows the forward passes that float64 keeps exact); set one of them")
    method.check(config)
    check_pretrain(method, config)
    resolved = {k: copy.deepcopy(config[k]) for k in TOP_LEVEL}
    for section in dict.fromkeys(method.sections + pretrain_sections(config)):
        resolved[section] = copy.deepcopy(config[section])
    if "speed" not in method.sections:
        speed = _honoured_speed(method, config["speed"])
        if speed:
            resolved["speed"] = speed
    return resolved


# Keys of ``speed`` every method honours without their entering the run id of a method
# without a speed section: the memory layout changes float32 rounding as the kind of machine
# does, and like the machine it is recorded (the record's ``layout`` and its stages), not
# hashed, so the runs stored before the single-model stages honoured it keep their ids. (A
# method with a speed section, the cohort methods, has always hashed it with the section.)
LAYOUT_KEYS = ("channels_last",)


def _honoured_speed(method, speed: dict) -> dict:
    """The ``speed`` keys a method without a speed section honours (``Method.speed_keys``),
    when set away from their defaults; a non-default key it cannot honour is an error, so no
    record claims a setting that did not apply. The layout keys (``LAYOUT_KEYS``) are honoured
    by every method and never hashed."""
    out = {}
    for key, value in speed.items():
        if key in LAYOUT_KEYS or value == BASE_DEFAULTS["speed"][key]:
            continue
        if key not in method.speed_keys:
            honoured = ", ".join(f"speed.{k}" for k in (*method.speed_keys, *LAYOUT_KEYS))
            raise UserError(f"speed.{key} = {value!r} does not apply to method {method.name!r} (it honours: {honoured}; "
                            "the cohort methods, such as mutual, honour every speed key); remove it for this run")
        out[key] = value
    return out


def run_precision(resolved: dict) -> str:
    """The arithmetic a run trains in: ``float32``, ``float64`` (``speed.dtype``: models,
    batches, losses and evaluation in float64), or ``bf16-autocast`` (bfloat16 autocast of
    the forward passes, float32 weights, optimizer and losses) where ``speed.bf16`` is on."""
    speed = resolved.get("speed") or {}
    if speed.get("bf16"):
        return "bf16-autocast"
    return speed.get("dtype", "float32")


@contextlib.contextmanager
def _float64_threads(resolved: dict, device: torch.device):
    """A float64 run trains on one intra-op thread: how a kernel splits a reduction over
    threads changes its rounding (measured: 1e-14 after one epoch of a ResNet-32 between 1
    and 2 threads, grown to 1e-4 in a chaotic DML pair), and the exact tier promises the
    same numbers on any thread count. float32 runs keep every thread."""
    if config_dtype(resolved) != torch.float64 or device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def teacher_config(config: dict) -> dict:
    """The ``individual`` run that trains this config's teacher (``compose_config``): its
    architecture, one model, the same seed, and the run's initialisation scheme (a profile
    that sets ``init`` sets it for the teacher too), data, loss, the teacher's own ``train``,
    the run's precision (a float64 run's teacher is float64) and memory layout."""
    t = config["teacher"]
    inherited = {"init": config.get("init", BASE_DEFAULTS["init"]), "data": config["data"], "loss": config["loss"],
                 "train": t["train"], "speed.dtype": (config.get("speed") or {}).get("dtype", "float32"),
                 "speed.channels_last": (config.get("speed") or {}).get("channels_last",
                                                                          BASE_DEFAULTS["speed"]["channels_last"])}
    return compose_config("individual", [t["arch"]], cohort=1, seed=config["seed"], data=config["data"]["source"],
                          settings=[("the teacher of a run", inherited)])


def load_state_dict_file(path: Path, model: FeatureModel, what: str, fix: str | None = None) -> None:
    """Load a model's weights from ``path`` (weights only); ``fix``: what to do about a file
    that cannot be used (default: give the right state_dict)."""
    state = safe_torch_load(path, what, fix)
    if isinstance(state, dict) and "models" in state and isinstance(state["models"], dict):
        if len(state["models"]) != 1:
            raise UserError(f"{what} {path} holds {len(state['models'])} models ({', '.join(state['models'])}); "
                            + (fix or "give a single model's weights"))
        state = next(iter(state["models"].values()))
    if not isinstance(state, dict):
        raise UserError(f"{what} {path} is not a state_dict; " + (fix or "give one saved with torch.save"))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{what} {path} does not fit architecture {model.arch_name!r}: {str(e).splitlines()[0]}"
                        + (f"; {fix}" if fix else "")) from None


def check_fault_env() -> None:
    """The fault-injection hook ``$MUTUALBENCH_FAULT_KILL_AFTER_EPOCHS`` (tests: kill the process
    after N checkpoints) is a positive integer when set; anything else is an error before any work."""
    from .engine import FAULT_ENV

    raw = os.environ.get(FAULT_ENV)
    if not raw:
        return
    try:
        ok = int(raw) >= 1
    except ValueError:
        ok = False
    if not ok:
        raise UserError(f"{FAULT_ENV}={raw!r} is not a positive integer; unset it (it is a test hook that kills the "
                        "process after N checkpoints), or set it to e.g. 2")


def check_subsets(resolved: dict, ds: ImageDataset) -> None:
    """``data.train_subset`` and ``data.test_subset`` fit in the data set's splits."""
    for key, split in (("train_subset", "train"), ("test_subset", "test")):
        size, have = resolved["data"][key], len(ds.split(split)[1])
        if size is not None and size > have:
            raise UserError(f"{ds.source}: data.{key} = {size} is more than the {have} {split} images of {ds.name}; "
                            f"give data.{key} at most {have} (or null for all), or a larger copy of the data set")


class Runner:
    """Executes runs into one output folder, sharing the loaded data set and reusing
    teachers (and any complete run) found there. ``root``: the folder nothing a run writes may
    leave (a study's folder for its ``runs/``; by default ``out_dir``): every record, checkpoint,
    weights file and lock is checked not to go through a symbolic link below it."""

    def __init__(self, out_dir: Path, *, data_root: Path | None = None, device: str = "auto",
                 log: Callable[[str], None] | None = None, on_record: Callable[[dict], None] | None = None,
                 root: Path | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.root = Path(root) if root is not None else self.out_dir
        self.on_record = on_record  # called with each newly completed record (e.g. W&B logging)
        self.data_root = data_root
        self.device = resolve_device(device)
        self.log = log or (lambda msg: None)
        self._datasets: dict[str, ImageDataset] = {}

    def dataset(self, source: str) -> ImageDataset:
        if source not in self._datasets:
            self._datasets[source] = load_dataset(source, root=self.data_root)
        return self._datasets[source]

    def prepare(self, config: dict) -> tuple[dict, str, ImageDataset, Path | None]:
        """Validate everything that can be checked before training; returns the resolved
        config, its run id, the data set and the explicit teacher checkpoint (if any)."""
        resolved = resolve(config)
        ckpt = None
        extra = ""
        if uses_teacher(get_method(resolved["method"]), resolved) and resolved["teacher"]["checkpoint"]:
            ckpt = Path(resolved["teacher"]["checkpoint"])
            safe_torch_load(ckpt, "teacher checkpoint")  # fail before any training
            extra = sha256_file(ckpt)
        ds = self.dataset(resolved["data"]["source"])
        check_subsets(resolved, ds)
        rid = run_id(resolved, ds.sha256 + extra)
        self._check_confined(rid)
        return resolved, rid, ds, ckpt

    def has_weights(self, config: dict) -> bool:
        """Whether ``config`` has a complete record and its trained weights here."""
        _, rid, _, _ = self.prepare(config)
        return complete_record(self.out_dir, rid) is not None and (self.out_dir / rid / "final.pt").exists()

    def run(self, config: dict, force: bool = False) -> dict:
        """Run ``config`` unless a complete record of it exists (``force``: run anyway)."""
        resolved, rid, ds, ckpt = self.prepare(config)
        done = None if force else complete_record(self.out_dir, rid)
        if done is not None:
            self.log(f"{rid}: complete record found, nothing to run")
            return done
        # One process trains a run at a time: <out>/<run_id>/.lock (a second process on the same
        # run, e.g. `mutualbench run` into a running study's runs/, refuses at once).
        with FolderLock(self.out_dir / rid / LOCK, f"run {rid} in {self.out_dir} is being trained by another process",
                        root=self.root):
            done = None if force else complete_record(self.out_dir, rid)
            if done is not None:  # finished by another process meanwhile
                self.log(f"{rid}: complete record found, nothing to run")
                return done
            self._set_aside_damaged_record(rid)
            teacher, teacher_info = None, {}
            method = get_method(resolved["method"])
            if uses_teacher(method, resolved):
                teacher, teacher_info = self._teacher(resolved, config, ds, ckpt)
            return self._execute(resolved, rid, ds, method, teacher, teacher_info, run_channels_last(config))

    def _check_confined(self, rid: str) -> None:
        """Every file run ``rid`` writes stays inside ``root``, checked before any run of a study
        is trained: a symbolic link planted at its work folder, checkpoint, weights, lock or record
        (or at a folder above them) is an error, also one that points back inside (a link may be
        changed later). Each write checks again."""
        work = self.out_dir / rid
        for path in (record_path(self.out_dir, rid), work / LOCK, work / "checkpoint.pt", work / "final.pt"):
            safe_target(self.root, path)

    def _set_aside_damaged_record(self, rid: str) -> None:
        """A record of this run that cannot be read (not UTF-8, not JSON, the wrong shape) is a
        damaged result of this very run: keep it as ``<run_id>.json.unreadable-<UTC time>``,
        warn, and run again (``table`` and ``compare`` treat such a record as an error)."""
        problem = record_problem(self.out_dir, rid)
        if problem is not None:
            aside = move_aside(record_path(self.out_dir, rid), root=self.root)
            warn(f"{problem}; moved it to {aside} and running {rid} again")

    # ------------------------------------------------------------------ teacher
    def _teacher(self, resolved: dict, config: dict, ds: ImageDataset, ckpt: Path | None):
        arch = resolved["teacher"]["arch"]
        if ckpt is not None:
            teacher = new_teacher(resolved, ds.num_classes, lambda t: load_state_dict_file(ckpt, t, "teacher checkpoint"),
                                  self.device)
            info = {"source": "checkpoint", "path": str(ckpt), "sha256": sha256_file(ckpt)}
        else:
            tcfg = teacher_config(config)
            t_resolved, t_rid, _, _ = self.prepare(tcfg)
            final = self.out_dir / t_rid / "final.pt"
            stored = complete_record(self.out_dir, t_rid)
            recorded = stored is not None
            reused = recorded and final.exists()
            if recorded and not reused:
                self._check_teacher_retrain(stored, t_rid, tcfg)
            if not reused:
                self.log(f"training the teacher ({arch}) as run {t_rid}"
                         + (" again: its record is here but not its weights (results/ stores no weights)"
                            if recorded else ""))
            record = self.run(tcfg, force=not reused)
            fix = f"it is damaged: delete it and run the same command again, which trains the teacher (run {t_rid}) anew"
            teacher = new_teacher(resolved, ds.num_classes,
                                  lambda t: load_state_dict_file(final, t, "teacher weights", fix=fix), self.device)
            info = {"source": "reused" if reused else "trained", "run_id": t_rid,
                    "final_test_acc": record["models"]["model"]["final_test_acc"],
                    "weights_sha256": sha256_file(final)}
        info.update(arch=arch, params=count_parameters(teacher))
        return teacher, info

    def _check_teacher_retrain(self, stored: dict, t_rid: str, tcfg: dict) -> None:
        """A teacher whose record is here but not its weights is retrained under the same run
        id, which replaces the record. On the kind of machine that made the record that gives
        the same teacher (training is deterministic there); on another kind float32 rounds
        differently and it would be a different teacher under the old record's name, so that
        is refused unless MUTUALBENCH_RETRAIN_TEACHERS=1 says to replace it."""
        made_on = record_machine_kind(stored)  # a teacher resumed across kinds: made on no single one
        here = current_machine_kind(self.device)
        if made_on != here and os.environ.get(RETRAIN_TEACHERS_ENV) != "1":
            raise UserError(
                f"the teacher run {t_rid} in {self.out_dir} has a record (made on {made_on}) but not its weights; "
                f"retraining it on this machine ({here}) would replace that record with a different teacher, since "
                f"float32 rounds differently on each kind of machine. Put its weights at {self.out_dir / t_rid / 'final.pt'}, "
                f"run where the record was made, or set {RETRAIN_TEACHERS_ENV}=1 to retrain it here and replace the record")
        made_in, here_in = record_layout(stored), (CHANNELS_LAST if run_channels_last(tcfg) else NCHW)
        if made_in != here_in and os.environ.get(RETRAIN_TEACHERS_ENV) != "1":
            raise UserError(
                f"the teacher run {t_rid} in {self.out_dir} has a record (trained in {made_in}) but not its weights; "
                f"retraining it in {here_in} would replace that record with a different teacher, since float32 rounds "
                f"differently in each memory layout. Put its weights at {self.out_dir / t_rid / 'final.pt'}, retrain "
                f"it in its layout (--set speed.channels_last={'true' if made_in == CHANNELS_LAST else 'false'}), or "
                f"set {RETRAIN_TEACHERS_ENV}=1 to retrain it here and replace the record")

    # ------------------------------------------------------------------ training
    def _execute(self, resolved, rid, ds, method, teacher, teacher_info, channels_last: bool) -> dict:
        with _float64_threads(resolved, self.device):
            return self._execute_here(resolved, rid, ds, method, teacher, teacher_info, channels_last)

    def _execute_here(self, resolved, rid, ds, method, teacher, teacher_info, channels_last: bool) -> dict:
        started = datetime.now(UTC)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        t0 = time.perf_counter()
        run = assemble(resolved, ds, self.device, teacher, channels_last=channels_last)
        work = self.out_dir / rid
        env = environment(self.device)
        # plain str and int: the checkpoint that keeps it loads with weights_only
        # and the layout this process trains in: a checkpoint resumed in another layout rounds
        # differently, as one resumed on another kind of machine does
        segment = {"machine": str(machine_kind(env)), "threads": int(env["cpu"]["threads"]),
                   "torch": str(env["torch"]), "git_commit": str(env["git_commit"]),
                   "layout": stages_layout(run.stages)}
        engine = run.engine(checkpoint_path=work / "checkpoint.pt", run_id=rid, desc=rid, log=self.log, segment=segment,
                            root=self.root)
        data = dict(ds.provenance(), train_used=run.train_loader.num_samples, test_used=run.test_loader.num_samples)
        record = started_record(rid, resolved, data, teacher_info, run_precision(resolved), started, env)
        try:
            curves = engine.run()
        except TrainingDiverged as e:
            finish_record(record, status="failed", error=str(e), curves=engine.curves,
                          timings=dict(engine.timings, total_s=round(time.perf_counter() - t0, 3)))
            write_record(self.out_dir, record, root=self.root)
            raise
        params = run.parameter_counts()
        models = {name: model_result(slot.role, slot.arch, params[name], curves, name)
                  for name, slot in run.slots.items()}
        ensemble = run.evaluate()
        atomic_torch_save(work / "final.pt", {"models": {n: m.state_dict() for n, m in run.models.items()}},
                          root=self.root)
        train_s = engine.timings["train_s"]
        timings = {
            "train_s": round(train_s, 3),
            "eval_s": round(engine.timings["eval_s"], 3),
            "wall_s_this_process": round(time.perf_counter() - t0, 3),
            "images_per_s_train": round(run.epochs * run.train_loader.num_samples / train_s, 1) if train_s > 0 else None,
            # other work on the machine slows a run: the 1-minute load average when it ended
            "load_avg_1m_at_end": load_average(),
        }
        finish_record(record, status="complete", models=models, curves=curves, timings=timings,
                      stages=[{"name": s.name, "epochs": s.epochs, **s.describe()} for s in run.stages],
                      resumed_from_epoch=engine.resumed_from_epoch, segments=engine.segments, ensemble=ensemble)
        path = write_record(self.out_dir, record, root=self.root)
        (work / "checkpoint.pt").unlink(missing_ok=True)
        self.log(f"{rid}: {closing_line(models, ensemble, curves, timings['train_s'])}; wrote {path}")
        if self.on_record is not None:
            self.on_record(record)
        return record
