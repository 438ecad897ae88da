"""What a method is: the models it trains, a sequence of stages over the shared engine, and
how its result is measured.

A ``Method`` validates its config, then ``build(ctx)`` returns its models (named, with roles)
and its stages; ``evaluate`` measures what the method offers beyond its models (a cohort's
ensemble) and ``parameter_counts`` what each model costs. A ``Stage`` owns its optimizers
and performs the parameter updates of one training step, returning its losses term by term;
the engine owns everything else (epochs, evaluation, timing, checkpoints). Adding a method
is one new file that registers itself; the engine never changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..archs import (
    FeatureModel,
    StagedModel,
    count_parameters,
    count_unique_parameters,
    create_arch,
    he_normal_conv,
    he_normal_fan_out,
)
from ..core.config import derive_seed
from ..core.errors import UserError
from ..core.evaluation import evaluate_ensemble
from ..core.optim import ScheduledOptimizer
from ..core.registry import Registry


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


# The config's ``init`` choices other than ``pytorch_default`` (the architecture's own init).
INITS = {"he_normal_fan_out": he_normal_fan_out, "he_normal_conv": he_normal_conv}


class HashedConfig(dict):
    """A run's resolved config as its method's build sees it: exactly the sections the run id
    hashes (``run.resolve``). Reading a section outside them is an error that names the fix,
    so a method cannot depend on a setting its run id does not cover (two different runs
    would share an id). ``get`` of an absent optional section (``speed``) stays allowed."""

    method: str = "?"

    def __missing__(self, key):
        raise UserError(f"method {self.method!r} reads config section {key!r}, which its run id does not cover; "
                        f"add {key!r} to the method's `sections` (so that the run id hashes it), or stop reading it")


def hashed_config(resolved: dict, method: str) -> HashedConfig:
    config = HashedConfig(resolved)
    config.method = method
    return config


@dataclass
class BuildContext:
    """What a method builds its run from: the config sections its run id hashes, the device,
    the data set's classes, the trained teacher (where it learns from one) and the memory
    layout its single-model stages train in (``channels_last``: ``speed.channels_last`` in a
    float32 run; the cohort stages read their ``speed`` section themselves)."""

    config: dict
    device: torch.device
    num_classes: int
    teacher: FeatureModel | None = None
    channels_last: bool = False

    def new_parts(self, arch: str, index: int, split_at: str) -> tuple[nn.Module, nn.Module]:
        """Model ``index`` of the run (``new_model``) in two parts: its stages up to and
        including ``split_at``, and the stages after it with the head. A method with a shared
        trunk and branches takes the trunk of one index and the rests of several, so every
        part starts where the same index's whole model would."""
        model = self.new_model(arch, index)
        if not isinstance(model, StagedModel):
            raise UserError(f"architecture {arch!r} is not a chain of stages, so it cannot be split into a trunk and "
                            "branches; pick one of the suite's CIFAR architectures (see `mutualbench archs`)")
        return model.split(split_at)

    def new_model(self, arch: str, index: int) -> FeatureModel:
        """Model ``index`` of the run, initialised from its own seed (seed, "init", index):
        the same index gets the same initial weights in every method for a given seed. The
        config's ``init`` redraws the architecture's own initialisation (``INITS``)."""
        def make() -> FeatureModel:
            model = create_arch(arch, self.num_classes)
            init = self.config.get("init", "pytorch_default")
            if init != "pytorch_default":
                INITS[init](model)
            return model

        return self.new_module(make, "init", index)

    def new_module(self, make: Callable[[], nn.Module], what: str, index: int) -> nn.Module:
        """``make()`` drawn from its own seed (seed, ``what``, index), in the run's dtype, on
        the run's device; the global RNG is left as it was. Models use ``what = "init"``;
        a method's other trained parts (a gate, a regressor) name themselves."""
        # float64 runs draw their weights in float64; float32 ones in the ambient default type
        # (the golden trajectories run float32 configs under a float64 default)
        in_dtype = default_dtype(self.dtype) if self.dtype != torch.float32 else contextlib.nullcontext()
        with torch.random.fork_rng(devices=[]), in_dtype:
            torch.manual_seed(derive_seed(self.config["seed"], what, index))
            module = make()
        return module.to(self.device)

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
        """Update the parameters on one batch; return the (detached) losses: each model's
        total under its name, and its terms under ``"<model>/<term>"`` (``loss_terms``)."""
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


class OptimizingStage(Stage):
    """A stage whose updates are made by ``ScheduledOptimizer``s it owns: ``begin`` fills
    ``self.optimizers`` (name -> optimizer, in a fixed order); the per-epoch schedule step
    and the checkpoint state of every optimizer are kept here once. A stage with more state
    (hint regressors) adds it with ``extra_state`` / ``load_extra_state``."""

    optimizers: dict[str, ScheduledOptimizer]

    def new_optimizer(self, params, cfg: dict, device: torch.device) -> ScheduledOptimizer:
        """An optimizer over ``params`` with ``cfg``'s optimizer and schedule for this stage's epochs."""
        return ScheduledOptimizer(params, cfg["optimizer"], cfg["schedule"], self.epochs, device)

    def end_epoch(self) -> None:
        for opt in self.optimizers.values():
            opt.end_epoch()

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {"optimizers": {n: o.state_dict() for n, o in self.optimizers.items()}, **self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        for opt, opt_state in zip(self.optimizers.values(), _optimizer_states(state, len(self.optimizers)), strict=True):
            opt.load_state_dict(opt_state)
        self.load_extra_state(state)


def _optimizer_states(state: dict, count: int) -> list[dict]:
    """The optimizer states of a stage checkpoint, in the stage's optimizer order. Checkpoints
    written before ``OptimizingStage`` kept them as ``trainer`` (one), or ``trainers`` (a list,
    or a dict by model name in insertion order); a run resumed from one continues exactly."""
    if "optimizers" in state:
        states = list(state["optimizers"].values())
    elif "trainer" in state:
        states = [state["trainer"]]
    else:
        trainers = state["trainers"]
        states = list(trainers.values()) if isinstance(trainers, dict) else list(trainers)
    if len(states) != count:
        raise ValueError(f"the checkpoint holds {len(states)} optimizer states, the stage has {count}")
    return states


TERM_SEP = "/"


def loss_terms(model: str, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model's losses as a stage returns them: the total under the model's name, each term
    under ``"<model>/<term>"``, all detached. Terms are parts of the total (weights applied),
    so they add up to it up to rounding."""
    out = {model: total.detach()}
    out.update({f"{model}{TERM_SEP}{term}": value.detach() for term, value in terms.items()})
    return out


def split_terms(losses: dict) -> tuple[dict, dict[str, dict]]:
    """(totals by model, terms by model then term) of a stage's losses."""
    totals, terms = {}, {}
    for key, value in losses.items():
        if TERM_SEP in key:
            model, term = key.split(TERM_SEP, 1)
            terms.setdefault(model, {})[term] = value
        else:
            totals[key] = value
    return totals, terms


class Method:
    """A training method. Subclasses set ``name``, ``sections`` (the config sections their
    result depends on), ``needs_teacher``, and implement ``build``."""

    name: str = "?"
    sections: tuple[str, ...] = ("data", "loss", "train")
    # Without a "speed" section: the speed keys this method honours (set away from their
    # defaults they enter its config and run id; any other non-default speed key is an error).
    speed_keys: tuple[str, ...] = ("bf16", "dtype")
    needs_teacher: bool = False
    records_ensemble: bool = False  # the record's ``ensemble``: the mean softmax of the cohort members

    def check(self, config: dict) -> None:
        """Method-specific checks of the whole config (types and registries are checked
        before; architectures, taps and cohort sizes are the method's to check here), run
        before any data is loaded; raise ``UserError`` with the fix."""

    def build(self, ctx: BuildContext) -> tuple[dict[str, ModelSlot], list[Stage]]:
        raise NotImplementedError

    def member_names(self, config: dict) -> list[str] | None:
        """The names of the models a run of this method records (its slots, in order), from
        ``config``'s ``arch`` (a list) and ``cohort`` alone: a study checks the members its
        published numbers name against them before anything runs. None: not declared (the
        study then takes any name)."""
        return None

    def compared_members(self, config: dict) -> list[str] | None:
        """The models that stand for the method in a study's comparisons, contrasts and claims
        (an arm's accuracy on a seed is their mean), from the same ``arch`` and ``cohort`` as
        ``member_names``: the networks one would deploy, each alone. A teacher, a temporal
        mean or an ensemble that a run also records is left out: averaged in, it would lift
        the arm against methods that record none. Default: every model the run records (None
        where the method declares none); a study arm may name others with ``compare``."""
        return self.member_names(config)

    def parameter_counts(self, slots: dict[str, ModelSlot]) -> dict[str, int]:
        """Each model's parameters, as the record reports them (a model sharing a trunk with
        others counts the trunk: it is what that model costs alone)."""
        return {name: count_parameters(slot.module) for name, slot in slots.items()}

    def evaluate(self, slots: dict[str, ModelSlot], test_loader) -> dict | None:
        """A measurement of the trained run beyond its models' own accuracies, for the
        record's ``ensemble``; None (the default) for methods of independent models."""
        return None


def mean_softmax_ensemble(slots: dict[str, ModelSlot], test_loader, role: str = "cohort member") -> dict | None:
    """The ensemble of a cohort (the slots of ``role``): the mean of the members' softmaxes,
    its final test accuracy and NLL, and its parameters (each counted once); None for fewer
    than two members."""
    members = [name for name, slot in slots.items() if slot.role == role]
    if len(members) < 2:
        return None
    modules = [slots[n].module for n in members]
    acc, nll = evaluate_ensemble(modules, test_loader)
    return {"members": members, "params": count_unique_parameters(modules), "final_test_acc": acc,
            "final_test_nll": nll}


class CohortMethod(Method):
    """A method whose models are a cohort: its result includes the members' mean-softmax
    ensemble (``records_ensemble``). Its members are ``student1..K`` unless it says otherwise,
    and a study compares it on all of them (``compared_members``), never on that ensemble."""

    records_ensemble = True

    def member_names(self, config: dict) -> list[str] | None:
        return [f"student{k + 1}" for k in range(cohort_size(config))]

    def evaluate(self, slots: dict[str, ModelSlot], test_loader) -> dict | None:
        return mean_softmax_ensemble(slots, test_loader)


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


def cohort_size(config: dict) -> int:
    """K: ``cohort``, or the number of architectures listed when there are several."""
    return len(config["arch"]) if len(config["arch"]) > 1 else config["cohort"]


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
