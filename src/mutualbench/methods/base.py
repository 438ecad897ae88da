"""What a method is: the models it trains and a sequence of stages over the shared engine.

A ``Method`` validates its config, then ``build(ctx)`` returns its models (named, with roles)
and its stages. A ``Stage`` owns its optimizers and performs the parameter updates of one
training step; the engine owns everything else (epochs, evaluation, timing, checkpoints).
Adding a method is one new file that registers itself; the engine never changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..archs import FeatureModel, create_arch
from ..config import derive_seed
from ..errors import UserError
from ..registry import Registry


@dataclass
class ModelSlot:
    """A model of a run: ``role`` is what it is in the method (individual, student, cohort
    member, teacher); ``trained`` is False for a frozen teacher."""

    name: str
    role: str
    arch: str
    module: FeatureModel
    trained: bool = True


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def config_dtype(config: dict) -> torch.dtype:
    """The floating-point type a run's models, batches and losses are in (``speed.dtype``)."""
    return DTYPES[(config.get("speed") or {}).get("dtype", "float32")]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """New tensors and modules in ``dtype`` inside (the previous default restored after):
    a float64 model's initial weights are drawn in float64, not rounded from float32 draws,
    whose vectorised kernels differ between instruction sets."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@dataclass
class BuildContext:
    config: dict
    device: torch.device
    num_classes: int
    teacher: FeatureModel | None = None

    def new_model(self, arch: str, index: int) -> FeatureModel:
        """Model ``index`` of the run, initialised from its own seed (seed, "init", index):
        the same index gets the same initial weights in every method for a given seed."""
        # float64 runs draw their weights in float64; float32 ones in the ambient default type
        # (the golden trajectories run float32 configs under a float64 default)
        in_dtype = default_dtype(self.dtype) if self.dtype != torch.float32 else contextlib.nullcontext()
        with torch.random.fork_rng(devices=[]), in_dtype:
            torch.manual_seed(derive_seed(self.config["seed"], "init", index))
            model = create_arch(arch, self.num_classes)
            if self.config.get("init", "pytorch_default") == "he_normal_fan_out":
                he_normal_fan_out(model)
        return model.to(self.device)

    @property
    def dtype(self) -> torch.dtype:
        """``speed.dtype``: the type of every model, regressor, batch and loss of the run."""
        return config_dtype(self.config)

    @property
    def bf16(self) -> bool:
        """``speed.bf16``: bfloat16 autocast of the forward passes, for every stage that trains."""
        return bool((self.config.get("speed") or {}).get("bf16"))

    @property
    def reduction(self) -> str:
        return self.config["loss"]["reduction"]


def he_normal_fan_out(model: nn.Module) -> nn.Module:
    """He et al. 2015 normal initialisation (fan-out, ReLU gain) of every convolution and
    linear layer, biases zero, drawn from the global RNG (seeded by the caller)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


class Stage:
    """One phase of a method (e.g. hint pretraining, then mutual learning).

    Lifecycle per run: ``begin()`` (also on resume, before ``load_state_dict``), then per
    epoch ``begin_epoch(epoch, global_epoch)``, ``train_mode()``, ``step(x, y)`` per batch,
    ``end_epoch()``, ``sync()`` before evaluation and checkpoints; ``finish()`` at the end.
    """

    name: str = "train"
    epochs: int = 0
    eval_names: tuple[str, ...] = ()  # models evaluated after each epoch of this stage
    epoch: int = 0  # the epoch being trained, 0-based within this stage (set by begin_epoch)
    global_epoch: int = 0  # the same, counted over all stages of the run

    def begin_epoch(self, epoch: int, global_epoch: int) -> None:
        """Called by the engine before each epoch, on resume too: ``epoch`` is 0-based within
        this stage, ``global_epoch`` over the run (a warm-up or a ramped loss weight reads
        ``self.epoch``). Subclasses that override it call ``super().begin_epoch``."""
        self.epoch, self.global_epoch = epoch, global_epoch

    def describe(self) -> dict:
        """What ran, for the record (e.g. which cohort path and why)."""
        return {}

    def begin(self) -> None:
        pass

    def train_mode(self) -> None:
        raise NotImplementedError

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Update the parameters on one batch; return the (detached) losses by name."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        pass

    def sync(self) -> None:
        """Make the run's modules hold this stage's current weights (a no-op unless the
        stage keeps weights elsewhere, as the fused cohort does)."""

    def finish(self) -> None:
        self.sync()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Method:
    """A training method. Subclasses set ``name``, ``sections`` (the config sections their
    result depends on), ``needs_teacher``, and implement ``build``."""

    name: str = "?"
    sections: tuple[str, ...] = ("data", "loss", "train")
    # Without a "speed" section: the speed keys this method honours (set away from their
    # defaults they enter its config and run id; any other non-default speed key is an error).
    speed_keys: tuple[str, ...] = ("bf16", "dtype")
    needs_teacher: bool = False

    def check(self, config: dict) -> None:
        """Method-specific checks of the whole config (types and registries are checked
        before; architectures, taps and cohort sizes are the method's to check here), run
        before any data is loaded; raise ``UserError`` with the fix."""

    def build(self, ctx: BuildContext) -> tuple[dict[str, ModelSlot], list[Stage]]:
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def decorator(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name)(cls)

    return decorator


def get_method(name: str) -> Method:
    return METHODS.get(name)()


def check_single_model(config: dict, method: str, what: str = "one student") -> None:
    if config["cohort"] != 1 or len(config["arch"]) != 1:
        raise UserError(f"{method} trains {what}: give one --arch and no --cohort")


def cohort_archs(config: dict) -> list[str]:
    """The student architecture of every cohort member (one arch repeated, or a list)."""
    archs, k = list(config["arch"]), config["cohort"]
    if len(archs) == 1:
        return archs * k
    if len(archs) != k:
        raise UserError(f"--arch lists {len(archs)} architectures but the cohort has {k}; give one, or one per member")
    return archs


def resolve_tap(model: FeatureModel, requested: str | None, what: str) -> str:
    if requested is None:
        if len(model.tap_names) != 1:
            taps = ", ".join(model.tap_names) or "none"
            raise UserError(
                f"{what}: architecture {model.arch_name!r} has taps ({taps}); choose one with --set hint.{what.split()[0]}_tap=NAME"
                if model.tap_names else
                f"{what}: architecture {model.arch_name!r} has no feature tap, so hint methods cannot use it; pick one with taps (see `mutualbench archs`)"
            )
        return model.tap_names[0]
    model.check_tap(requested)
    return requested


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
