"""One run, assembled: from a resolved config, its data set, a device and (where the method
learns from one) a trained teacher, to the models, stages, loaders and engine that train it,
and the method's own measurements at the end.

``assemble`` is pure: it reads nothing from disk and writes nothing. The runner
(``mutualbench.training.run``) adds what persists around it (locks, reuse of complete runs, the teacher
cache, checkpoints, records); the golden trajectories (``mutualbench.training.golden``) and the time
estimate (``mutualbench.training.estimate``) call the same function, so all three train the run the
same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..archs import FeatureModel, create_arch
from ..core.config import BASE_DEFAULTS
from ..core.errors import UserError
from ..data import DeviceLoader, ImageDataset
from ..methods import BuildContext, Method, ModelSlot, Stage, get_method
from ..methods.base import config_dtype, default_dtype, freeze, hashed_config
from ..methods.pretrain import build_run
from .engine import Engine

EVAL_BATCH_SIZE = 1000


def loaders(resolved: dict, ds: ImageDataset, device: torch.device,
            dtype: torch.dtype | None = None) -> tuple[DeviceLoader, DeviceLoader]:
    """The run's train and test loaders (``dtype``: of the batches; default the run's
    ``speed.dtype``; the golden trajectories ask float64)."""
    dtype = config_dtype(resolved) if dtype is None else dtype
    d, seed = resolved["data"], resolved["seed"]
    mean, std = (ds.mean, ds.std) if d["normalize"] else (None, None)
    try:
        train = DeviceLoader(ds.train_images, ds.train_labels, batch_size=d["batch_size"], device=device,
                             shuffle=True, flip=d["flip"], crop_padding=d["crop_padding"], mean=mean, std=std,
                             seed=seed, subset=d["train_subset"], dtype=dtype)
        test = DeviceLoader(ds.test_images, ds.test_labels, batch_size=EVAL_BATCH_SIZE, device=device,
                            shuffle=False, mean=mean, std=std, seed=seed, subset=d["test_subset"], dtype=dtype)
    except ValueError as e:
        raise UserError(f"data: {e}") from None
    return train, test


def new_teacher(resolved: dict, num_classes: int, load: Callable[[FeatureModel], None] | None = None,
                device: torch.device | None = None) -> FeatureModel:
    """The run's teacher architecture, its weights set by ``load`` (None: as initialised, for
    timing), on ``device``, frozen (eval mode, no gradients). A float64 run's teacher is
    float64; a float32 run's is in the ambient default type, as its models are
    (``BuildContext.new_model``: the golden trajectories run float32 configs in float64)."""
    dtype = config_dtype(resolved)
    with default_dtype(dtype) if dtype != torch.float32 else contextlib.nullcontext():
        teacher = create_arch(resolved["teacher"]["arch"], num_classes)
    if load is not None:
        load(teacher)
    return freeze(teacher.to(device) if device is not None else teacher)


@dataclass
class Assembly:
    """A run ready to train: the method, its models (slots), stages and loaders."""

    method: Method
    slots: dict[str, ModelSlot]
    stages: list[Stage]
    train_loader: DeviceLoader
    test_loader: DeviceLoader
    device: torch.device

    @property
    def models(self) -> dict[str, nn.Module]:
        return {name: slot.module for name, slot in self.slots.items()}

    @property
    def epochs(self) -> int:
        return sum(stage.epochs for stage in self.stages)

    def engine(self, *, checkpoint_path: Path | None = None, run_id: str = "", desc: str = "",
               log: Callable[[str], None] | None = None, segment: dict | None = None,
               root: Path | None = None) -> Engine:
        return Engine(self.models, self.stages, self.train_loader, self.test_loader, device=self.device,
                      checkpoint_path=checkpoint_path, run_id=run_id, desc=desc, log=log, segment=segment, root=root)

    def parameter_counts(self) -> dict[str, int]:
        """Each model's parameters, as the method counts them."""
        return self.method.parameter_counts(self.slots)

    def evaluate(self) -> dict | None:
        """The method's measurement of the trained run beyond its models (a cohort's ensemble)."""
        return self.method.evaluate(self.slots, self.test_loader)


def stages_layout(stages: list[Stage]) -> str:
    """The memory layout a run of these stages records (``records.record_layout`` of their
    descriptions): what a process that trains them puts in its segment, and what a run not yet
    made is timed by."""
    from ..storage.records import record_layout

    return record_layout({"stages": [{"epochs": s.epochs, **s.describe()} for s in stages]})


def run_channels_last(config: dict, dtype: torch.dtype | None = None) -> bool:
    """Whether a run's single-model stages (supervised, KD, hints, ONE) train channels-last:
    ``speed.channels_last`` (on by default) of its full config, in a run whose arithmetic is
    float32 (bf16 autocast included). A float64 run keeps NCHW there: the exact tier keeps the
    one layout its stored sets were made in. ``dtype``: the arithmetic when it is not the
    config's (the golden trajectories run float32 configs in float64). The cohort stages read
    ``speed.channels_last`` from their own section, as they always have."""
    speed = config.get("speed") or {}
    on = speed.get("channels_last", BASE_DEFAULTS["speed"]["channels_last"])
    return bool(on) and (config_dtype(config) if dtype is None else dtype) == torch.float32


def assemble(resolved: dict, ds: ImageDataset, device: torch.device, teacher: FeatureModel | None = None, *,
             dtype: torch.dtype | None = None, channels_last: bool | None = None) -> Assembly:
    """Build the run of ``resolved`` (``run.resolve``) on ``ds``: its loaders, then its models
    and stages (seeded from the config alone, so the order of the two does not matter). The
    method sees only the sections its run id hashes (``HashedConfig``). ``channels_last``: the
    layout of the single-model stages, ``run_channels_last`` of the full config (the resolved
    config of a method without a speed section does not keep it); None: read from
    ``resolved``."""
    method = get_method(resolved["method"])
    train, test = loaders(resolved, ds, device, dtype)
    if channels_last is None:
        channels_last = run_channels_last(resolved, dtype)
    elif dtype is not None and dtype != torch.float32:
        channels_last = False
    ctx = BuildContext(hashed_config(resolved, method.name), device, ds.num_classes, teacher,
                       channels_last=channels_last)
    slots, stages = build_run(method, ctx)
    return Assembly(method, slots, stages, train, test, device)
