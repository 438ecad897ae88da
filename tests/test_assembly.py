"""One run assembly, the layering of imports, loss terms in the records, the optimizer-owning
stage base and the run-id coverage check."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch

import mutualbench
from conftest import run_config
from mutualbench.core.config import default_config
from mutualbench.core.errors import UserError
from mutualbench.core.optim import ScheduledOptimizer
from mutualbench.methods import METHODS, Method, ModelSlot, get_method, register_method
from mutualbench.methods.base import OptimizingStage, loss_terms, split_terms
from mutualbench.methods.losses import kd_loss_terms, mutual_loss_terms
from mutualbench.methods.pretrain import uses_teacher
from mutualbench.training import assembly, estimate, golden
from mutualbench.training import run as run_module
from mutualbench.training.run import Runner, resolve

SRC = Path(mutualbench.__file__).parent
# the floors, lowest first: a module may import from its own floor or below, never above. A
# floor names packages and modules; a module belongs to the most specific name that holds it.
FLOORS = [
    {"core.errors", "core.registry", "storage.layout"},
    {"core", "storage", "archs", "data"},
    {"methods"},
    {"training.engine"},
    {"training"},
    {"analysis"},
    {"studies"},
    {"cli"},
]


def _floor(module: str) -> int | None:
    """The floor of a dotted module inside the package (``core.config``: 1), from the longest
    name of FLOORS that is the module or a package holding it."""
    parts = module.split(".")
    for size in range(len(parts), 0, -1):
        name = ".".join(parts[:size])
        for i, floor in enumerate(FLOORS):
            if name in floor:
                return i
    return None


def _imports(source: str, module: str) -> set[str]:
    """The package-relative modules that ``module`` (dotted, inside the package) imports with
    ``from .x import`` / ``from ..x import``; ``from . import x`` gives x."""
    package = module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                out.add(".".join([*base, node.module]))
            else:
                out.update(".".join([*base, a.name]) for a in node.names)
    return out


def _upward(source: str, module: str) -> list[str]:
    here = _floor(module)
    if here is None:
        return []
    return [m for m in _imports(source, module) if (_floor(m) or -1) > here]


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] + ("__init__",)) if parts[-1] == "__init__" else ".".join(parts)


def test_no_module_imports_a_floor_above_its_own():
    """core, storage, archs and data import nothing from methods or above; methods nothing from
    training; the engine not the rest of training; training nothing from analysis; analysis
    nothing from studies; nothing from the CLI. Only the package's ``__init__`` (the
    composition root) imports the method plugins."""
    wrong = []
    for path in SRC.rglob("*.py"):
        if path == SRC / "__init__.py":
            continue
        wrong += [f"{path.relative_to(SRC)} imports {m}" for m in _upward(path.read_text(), _module(path))]
    assert wrong == []


def test_the_layering_check_sees_an_import_from_above():
    """Not vacuous: config's old plugin loader, or a method reaching for the engine, is flagged."""
    assert _upward("def f():\n    from .. import methods\n", "core.config") == ["methods"]
    assert _upward("from ..training.engine import Engine\n", "methods.kd") == ["training.engine"]
    assert _upward("from .base import Stage\n", "methods.kd") == []
    assert _upward("from .assembly import assemble\n", "training.engine") == ["training.assembly"]
    assert _upward("from ..studies.spec import load_spec\n", "analysis.results") == ["studies.spec"]
    assert _upward("from ..core.errors import UserError\n", "studies.spec") == []
    assert [_floor(m) for m in ("core.errors", "core.config", "training.engine", "training.run", "cli")] == [
        0, 1, 3, 4, 7]


def test_default_config_has_every_method_section_without_config_importing_methods():
    assert {"mutual", "kd", "hint", "one"} <= set(default_config())
    assert not any(m.startswith("methods") for m in _imports((SRC / "core" / "config.py").read_text(), "core.config"))


# ----------------------------------------------------------------------------- one assembly
def test_runner_golden_and_estimate_all_build_through_assemble(monkeypatch, tiny_cifar, tmp_path):
    calls = []
    real = assembly.assemble

    def counting(resolved, *args, **kwargs):
        calls.append(resolved["method"])
        return real(resolved, *args, **kwargs)

    for module in (run_module, golden, estimate):
        monkeypatch.setattr(module, "assemble", counting)
    data, root = tiny_cifar
    runner = Runner(tmp_path / "out", data_root=root, device="cpu")
    config = run_config("individual", data, arch=["seed_vgg_student"], **{"train.epochs": 1})
    runner.run(config)
    estimate.measure_run_seconds(runner, config, steps=1)
    golden.compute(["individual"])
    assert calls == ["individual"] * 3
    assert not hasattr(Runner, "_loaders")


def test_a_method_reading_a_section_its_run_id_does_not_hash_is_refused(tiny_cifar, tmp_path):
    """Forgetting a section in ``sections`` would let two different runs share a run id."""

    @register_method("forgets_kd")
    class ForgetsKD(Method):
        sections = ("data", "loss", "train")

        def build(self, ctx):
            ctx.config["kd"]["temperature"]  # read, but not hashed
            raise AssertionError("unreachable")

    try:
        data, root = tiny_cifar
        runner = Runner(tmp_path / "out", data_root=root, device="cpu")
        with pytest.raises(UserError, match="method 'forgets_kd' reads config section 'kd', which its run id does "
                                            "not cover; add 'kd' to the method's `sections`"):
            runner.run(run_config("forgets_kd", data, arch=["seed_vgg_student"]))
    finally:
        METHODS.unregister("forgets_kd")


def test_every_registered_method_builds_from_its_hashed_sections_alone():
    """Each method's golden case builds with the guard on (a read outside its run id fails)."""
    ds = golden.synthetic_dataset()
    for case in golden.all_cases():
        config = golden.case_config(case)
        resolved = resolve(config)
        teacher = assembly.new_teacher(resolved, ds.num_classes) \
            if uses_teacher(get_method(resolved["method"]), resolved) else None
        run = assembly.assemble(resolved, ds, torch.device("cpu"), teacher)
        assert run.stages and run.slots, case


# ----------------------------------------------------------------------------- loss terms
def test_kd_terms_are_hand_computed_and_add_up():
    # s = [1, 0], t = [0, 1], y = 0, T = 2: CE = log(1 + e^-1) = 0.313262; KL at T = 0.122459, x T^2 = 0.489836
    s, t, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    total, terms = kd_loss_terms(s, t, y, 2.0, 0.5, "sum")
    assert terms["ce"].item() == pytest.approx(0.313262, abs=1e-6)
    assert terms["kl"].item() == pytest.approx(0.5 * 0.489836, abs=1e-6)
    assert total.item() == pytest.approx(terms["ce"].item() + terms["kl"].item(), abs=1e-7)


def test_mutual_terms_are_hand_computed_and_the_total_is_unchanged():
    # two members, one image, two classes: p1 = softmax([0, 0]) = [.5, .5], p2 = softmax([ln 3, 0]) = [.75, .25]
    logits = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), 0.0]]])
    y = torch.tensor([0])
    total, terms = mutual_loss_terms(logits, y, "mean", "sum")
    kl_21 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(p2 || p1)
    kl_12 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(p1 || p2)
    assert terms["ce"].tolist() == pytest.approx([math.log(2), -math.log(0.75)], abs=1e-6)
    assert terms["kl"].tolist() == pytest.approx([kl_21, kl_12], abs=1e-6)
    assert total.tolist() == pytest.approx((terms["ce"] + terms["kl"]).tolist(), abs=1e-6)
    assert not terms["kl"].requires_grad


def test_loss_terms_and_split_terms_round_trip():
    out = loss_terms("m", torch.tensor(3.0, requires_grad=True), {"ce": torch.tensor(1.0), "kl": torch.tensor(2.0)})
    assert set(out) == {"m", "m/ce", "m/kl"} and not out["m"].requires_grad
    totals, terms = split_terms(out)
    assert list(totals) == ["m"] and {k: v.item() for k, v in terms["m"].items()} == {"ce": 1.0, "kl": 2.0}


@pytest.mark.parametrize("method,extra,expected", [
    ("individual", {}, {"model": {"ce"}}),
    ("mutual", {"cohort": 2}, {"student1": {"ce", "kl"}, "student2": {"ce", "kl"}}),
])
def test_the_record_keeps_every_term_per_model_and_epoch(tiny_cifar, tmp_path, method, extra, expected):
    data, root = tiny_cifar
    config = run_config(method, data, arch=["seed_vgg_student"], **{"train.epochs": 2})
    config["cohort"] = extra.get("cohort", 1)
    record = Runner(tmp_path / "out", data_root=root, device="cpu").run(config)
    assert len(record["curves"]) == 2
    for entry in record["curves"]:
        terms = entry["train_loss_terms"]
        assert {n: set(t) for n, t in terms.items()} == expected
        for name, parts in terms.items():  # the terms add up to the model's mean loss
            assert sum(parts.values()) == pytest.approx(entry["train_loss"][name], rel=1e-5)
    json.dumps(record)


def test_records_without_terms_still_load_in_tables(tmp_path):
    from mutualbench.analysis.results import last_epochs_mean

    curves = [{"epoch": e, "test_acc": {"m": float(e)}, "train_loss": {"m": 1.0}} for e in range(1, 7)]
    assert last_epochs_mean(curves, "m") == pytest.approx(4.0)


# ----------------------------------------------------------------------------- the stage base
class _Two(OptimizingStage):
    epochs = 3

    def __init__(self, a, b):
        self.a, self.b = a, b

    def begin(self):
        cfg = {"optimizer": {"name": "adam", "lr": 0.1, "betas": [0.9, 0.999], "weight_decay": 0.0},
               "schedule": {"name": "constant"}}
        self.optimizers = {"a": self.new_optimizer([self.a], cfg, torch.device("cpu")),
                           "b": self.new_optimizer([self.b], cfg, torch.device("cpu"))}


def _stepped():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    stage = _Two(a, b)
    stage.begin()
    stage.optimizers["a"].step(a.sum())
    stage.optimizers["b"].step(b.sum())
    stage.optimizers["b"].step(b.sum())
    return stage


def _steps(stage) -> list[int]:
    return [int(o.optimizer.state_dict()["state"][0]["step"]) for o in stage.optimizers.values()]


@pytest.mark.parametrize("shape", ["optimizers", "trainers_list", "trainers_dict"])
def test_stage_state_round_trips_and_old_checkpoints_resume(shape):
    stage = _stepped()
    state = stage.state_dict()
    opts = list(state["optimizers"].values())
    state = {"optimizers": {"optimizers": state["optimizers"]}, "trainers_list": {"trainers": opts},
             "trainers_dict": {"trainers": dict(zip("xy", opts, strict=True))}}[shape]
    other = _Two(torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3)))
    other.begin()
    other.load_state_dict(state)
    assert _steps(other) == [1, 2]


def test_an_old_single_trainer_checkpoint_resumes():
    p = torch.nn.Parameter(torch.ones(2))
    opt = ScheduledOptimizer([p], {"name": "adam", "lr": 0.1, "betas": [0.9, 0.999], "weight_decay": 0.0},
                             {"name": "constant"}, 3, torch.device("cpu"))
    opt.step(p.sum())

    class One(OptimizingStage):
        epochs = 3

        def begin(self):
            self.optimizers = {"m": self.new_optimizer([p], {"optimizer": {"name": "adam", "lr": 0.1, "betas": [0.9, 0.999],
                                                                           "weight_decay": 0.0},
                                                             "schedule": {"name": "constant"}}, torch.device("cpu"))}

    stage = One()
    stage.begin()
    stage.load_state_dict({"trainer": opt.state_dict()})
    assert _steps(stage) == [1]


def test_end_epoch_steps_every_schedule():
    stage = _stepped()
    seen = []
    for name, opt in stage.optimizers.items():
        opt.end_epoch = lambda name=name: seen.append(name)
    stage.end_epoch()
    assert seen == ["a", "b"]


def test_parameter_counts_and_ensemble_are_the_methods():
    slots = {"a": ModelSlot("a", "cohort member", "x", torch.nn.Linear(2, 2)),
             "b": ModelSlot("b", "cohort member", "x", torch.nn.Linear(2, 3))}
    assert get_method("mutual").parameter_counts(slots) == {"a": 6, "b": 9}
    assert get_method("individual").evaluate(slots, None) is None
