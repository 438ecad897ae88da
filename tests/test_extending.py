"""Extending the suite touches one file: a method (with its own config section, defaults,
checks and an epoch-aware stage) and an architecture are declared here, in a test module,
and run through the command line with no other file changed."""

import json

import pytest
from torch import nn

from mutualbench.archs import FeatureModel
from mutualbench.archs.registry import ARCHS, register_arch
from mutualbench.cli import main
from mutualbench.core.config import KeyType, register_section, unregister_section
from mutualbench.core.errors import UserError
from mutualbench.methods import METHODS, Method, ModelSlot, register_method
from mutualbench.methods.losses import cross_entropy
from mutualbench.methods.stages import SupervisedStage

SEEN_EPOCHS: list[tuple[int, int]] = []


class TinyLinear(FeatureModel):
    """A throwaway architecture: mean colour -> logits, no taps."""

    arch_name = "tiny_linear_test"

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3, num_classes)

    @property
    def tap_names(self):
        return ()

    def forward(self, x, taps=()):
        return self.fc(x.mean((2, 3)))


class WarmupStage(SupervisedStage):
    """Cross-entropy scaled by ``scale``, ramped in over ``warmup_epochs``: needs the epoch."""

    def begin_epoch(self, epoch, global_epoch):
        super().begin_epoch(epoch, global_epoch)
        SEEN_EPOCHS.append((epoch, global_epoch))


@pytest.fixture
def throwaway():
    register_section("warm_ce", {"scale": 1.0, "warmup_epochs": 1},
                     {"scale": KeyType("number", lo=0, lo_open=True), "warmup_epochs": KeyType("int", lo=0)})
    register_arch("tiny_linear_test", "test")(TinyLinear)

    @register_method("warm_ce_test")
    class WarmCE(Method):
        """warm_ce_test: cross-entropy ramped in over the first epochs (a test method)."""

        sections = ("data", "loss", "train", "warm_ce")

        def check(self, config):
            if config["warm_ce"]["warmup_epochs"] > config["train"]["epochs"]:
                raise UserError("warm_ce.warmup_epochs is longer than train.epochs; lower it")

        def build(self, ctx):
            arch = ctx.config["arch"][0]
            model = ctx.new_model(arch, index=0)
            cfg = ctx.config["warm_ce"]

            def loss(x, y):
                ramp = min(1.0, (stage.epoch + 1) / max(cfg["warmup_epochs"], 1))
                return cfg["scale"] * ramp * cross_entropy(model(x), y, ctx.reduction)

            stage = WarmupStage("train", "model", model, loss, ctx.config["train"], ctx.device)
            return {"model": ModelSlot("model", "individual", arch, model)}, [stage]

    SEEN_EPOCHS.clear()
    yield
    METHODS.unregister("warm_ce_test")
    ARCHS.unregister("tiny_linear_test")
    unregister_section("warm_ce")


def _run(tiny_cifar, out, *extra):
    data, root = tiny_cifar
    return main(["run", "--method", "warm_ce_test", "--arch", "tiny_linear_test", "--data", str(data),
                 "--data-root", str(root), "--device", "cpu", "--out", str(out), "--quiet", *extra])


def test_a_method_and_an_architecture_from_one_file_run_through_the_cli(throwaway, tiny_cifar, tmp_path, capsys):
    assert _run(tiny_cifar, tmp_path / "out", "--epochs", "2", "--set", "warm_ce.scale=2",
                "--set", "warm_ce.warmup_epochs=2") == 0
    (record_path,) = (tmp_path / "out").glob("warm_ce_test-*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "complete"
    assert record["config"]["warm_ce"] == {"scale": 2, "warmup_epochs": 2}  # its section, in the run id
    assert record["models"]["model"]["arch"] == "tiny_linear_test" and record["models"]["model"]["params"] == 3 * 3 + 3
    assert SEEN_EPOCHS == [(0, 0), (1, 1)]  # the stage was told each epoch
    assert main(["methods"]) == 0 and "warm_ce_test" in capsys.readouterr().out
    assert main(["archs"]) == 0 and "tiny_linear_test" in capsys.readouterr().out


def test_the_new_section_is_type_checked_and_the_method_check_runs_first(throwaway, tiny_cifar, tmp_path, capsys):
    assert _run(tiny_cifar, tmp_path / "a", "--set", "warm_ce.scale=-1") == 2
    err = capsys.readouterr().err
    assert "warm_ce.scale = -1 is not allowed; it must be a number > 0" in err and err.count("\n") == 1
    assert _run(tiny_cifar, tmp_path / "b", "--epochs", "1", "--set", "warm_ce.warmup_epochs=3") == 2
    assert "warm_ce.warmup_epochs is longer than train.epochs" in capsys.readouterr().err
    assert not list((tmp_path / "b").glob("*.json"))


def test_sections_must_match_their_types_and_cannot_be_declared_twice(throwaway):
    with pytest.raises(ValueError, match="defaults and schema differ"):
        register_section("broken", {"a": 1}, {"b": KeyType("int")})
    with pytest.raises(ValueError, match="declared twice"):
        register_section("warm_ce", {"scale": 3.0, "warmup_epochs": 1},
                         {"scale": KeyType("number"), "warmup_epochs": KeyType("int")})
    with pytest.raises(ValueError, match="built-in"):
        register_section("data", {"a": 1}, {"a": KeyType("int")})


def test_the_throwaway_method_and_architecture_are_gone_after_the_fixture():
    assert "warm_ce_test" not in METHODS and "tiny_linear_test" not in ARCHS
