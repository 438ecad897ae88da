"""The exact tier catches deliberate changes of what training computes: tiny float64 runs on
the shared CIFAR-10 copy (a teacher, KD from it at T = 4, hint+DML of two students, each a
few steps) reproduce the per-run reference numbers in tests/exact/reference.json by
``mutualbench.analysis.exact.run_difference``, and each change below, monkeypatched in, makes that
comparison fail: the KD temperature, the KL direction, peer detaching, the hint loss's 1/2,
the flip probability, the crop padding, the normalisation, and the ensemble's evaluation
(logits averaged instead of softmaxes). Skipped when the shared copy is absent.

After an intended change of what training computes: ``python tests/test_exact_mutations.py --write``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mutualbench.analysis.exact import run_difference
from mutualbench.core.config import default_config
from mutualbench.data import loader as loader_module
from mutualbench.methods import kd, losses, mutual, stages
from mutualbench.training.run import Runner

pytestmark = pytest.mark.cifar

REFERENCE = Path(__file__).resolve().parent / "exact" / "reference.json"
FIELDS = ("run_id", "precision", "models", "curves", "ensemble")


def configs(data: str) -> dict[str, dict]:
    """The runs: KD at T = 4 from a seed_vgg_teacher (trained first, as a run), and hint+DML."""
    base = default_config()
    base.update(seed=0, device="cpu", arch=["seed_vgg_student"])
    base["data"].update(source=data, train_subset=32, test_subset=100, batch_size=16)
    base["loss"]["reduction"] = "sum"
    base["speed"]["dtype"] = "float64"
    base["train"]["epochs"] = 1
    base["hint"]["epochs"] = 1
    base["teacher"].update(arch="seed_vgg_teacher", train=dict(base["teacher"]["train"], epochs=1))
    kd_cfg = json.loads(json.dumps(base))
    kd_cfg.update(method="kd")
    kd_cfg["kd"].update(temperature=4.0, alpha=1.0)
    hint_dml = json.loads(json.dumps(base))
    hint_dml.update(method="hint_mutual", cohort=2)
    return {"kd": kd_cfg, "hint_dml": hint_dml}


def reduced(record: dict) -> dict:
    return {k: record.get(k) for k in FIELDS}


class Runs:
    """Runs the reference runs into folders of their own, reusing the unchanged teacher."""

    def __init__(self, data: str, root: Path, base: Path) -> None:
        self.data, self.root, self.base = data, root, base
        self.configs = configs(data)
        self.count = 0

    def run(self, name: str, reuse_teacher: bool = True) -> dict[str, dict]:
        """The records of ``name`` ("kd", "hint_dml" or "teacher") run now, by name."""
        self.count += 1
        out = self.base / f"try{self.count}"
        out.mkdir()
        home = self.base / "reference"
        if reuse_teacher and home.exists():
            for path in home.glob("individual-*"):
                (shutil.copytree if path.is_dir() else shutil.copy)(path, out / path.name)
        runner = Runner(out, data_root=self.root, device="cpu")
        if name == "teacher":
            from mutualbench.training.run import teacher_config

            return {"teacher": runner.run(teacher_config(self.configs["kd"]))}
        record = runner.run(self.configs[name])
        records = {name: record}
        if record.get("teacher", {}).get("run_id"):
            teacher_rid = record["teacher"]["run_id"]
            records["teacher"] = json.loads((out / f"{teacher_rid}.json").read_text())
        return records

    def reference_runs(self) -> dict[str, dict]:
        home = self.base / "reference"
        home.mkdir()
        runner = Runner(home, data_root=self.root, device="cpu")
        out = {name: runner.run(cfg) for name, cfg in self.configs.items()}
        out["teacher"] = json.loads((home / f"{out['kd']['teacher']['run_id']}.json").read_text())
        return out


@pytest.fixture(scope="module")
def runs(shared_cifar, tmp_path_factory):
    from conftest import SHARED_CIFAR

    return Runs(str(SHARED_CIFAR), shared_cifar.cache_path.parent.parent, tmp_path_factory.mktemp("exact-mutations"))


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def unchanged(runs):
    return runs.reference_runs()


def test_unchanged_code_reproduces_the_reference_exactly(unchanged, reference):
    assert set(unchanged) == set(reference) == {"teacher", "kd", "hint_dml"}
    for name, record in unchanged.items():
        assert record["run_id"] == reference[name]["run_id"], name
        assert run_difference(reference[name], record) is None, name
    assert reference["hint_dml"]["ensemble"]["final_test_acc"] is not None


def _kd_at_t1(s, t, y, temperature, alpha, red):
    return losses.kd_loss_terms(s, t, y, 1.0, alpha, red)


_KL = losses.kl_divergence


def _kl_reversed(p_logits, q_logits, temperature=1.0):
    return _KL(q_logits, p_logits, temperature)


def _mutual_peers_attached(logits, target, peer_weight="mean", reduction="sum", kl_weight=1.0):
    k = logits.shape[0]
    logp = F.log_softmax(logits, dim=-1)
    p = logp.exp()  # peers not detached: their gradient flows too
    kl = sum((p[j] * (logp[j] - logp)).sum(-1) * (torch.arange(k) != j).view(k, 1) for j in range(k))
    ce = -logp.gather(-1, target.expand(k, -1).unsqueeze(-1)).squeeze(-1)
    weighted = kl_weight * losses.peer_weight_value(peer_weight, k) * kl
    terms = {"ce": losses._reduce(ce, reduction).detach(), "kl": losses._reduce(weighted, reduction).detach()}
    return losses._reduce(ce + weighted, reduction), terms


def _hint_without_half(guided, regressed, reduction="sum"):
    return 2 * losses.hint_loss(guided, regressed, reduction)


@torch.no_grad()
def _ensemble_of_logits(models, loader):
    for m in models:
        m.eval()
    correct, nll = 0, 0.0
    for x, y in loader.epoch_batches(0):
        probs = torch.stack([m(x) for m in models]).mean(0).softmax(-1)  # logits averaged, then one softmax
        correct += int((probs.argmax(-1) == y).sum())
        nll -= float(probs.gather(-1, y[:, None]).log().sum())
    return 100.0 * correct / loader.num_samples, nll / loader.num_samples


def _draws(flip_p=0.5, padding_delta=0):
    def draws(self, epoch):
        n = self.num_samples
        g = loader_module.seeded_generator(self.seed, loader_module._EPOCH_STREAM, epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        flips = torch.rand(n, generator=g) < flip_p if self.flip else None
        p = self.crop_padding
        offsets = torch.randint(0, 2 * p + 1 + padding_delta, (n, 2), generator=g) if p else None
        return order, flips, offsets
    return draws


def _unnormalised(init):
    def patched(self, *args, **kwargs):
        kwargs.update(mean=None, std=None)
        init(self, *args, **kwargs)
    return patched


# name -> (the run it shows in, the patch: (object, attribute, replacement) for each)
MUTATIONS = {
    "kd temperature": ("kd", lambda: [(kd, "kd_loss_terms", _kd_at_t1)]),
    "kl direction": ("kd", lambda: [(losses, "kl_divergence", _kl_reversed)]),
    "peers not detached": ("hint_dml", lambda: [(mutual, "mutual_loss_terms", _mutual_peers_attached)]),
    "hint loss without 1/2": ("hint_dml", lambda: [(stages, "hint_loss", _hint_without_half)]),
    "ensemble of logits": ("hint_dml", lambda: [(sys.modules["mutualbench.methods.base"], "evaluate_ensemble",
                                                 _ensemble_of_logits)]),
    "flip probability 0.4": ("teacher", lambda: [(loader_module.DeviceLoader, "_epoch_draws", _draws(flip_p=0.4))]),
    "crop offsets one pixel short": ("teacher", lambda: [(loader_module.DeviceLoader, "_epoch_draws",
                                                          _draws(padding_delta=-1))]),
    "no normalisation": ("teacher", lambda: [(loader_module.DeviceLoader, "__init__",
                                              _unnormalised(loader_module.DeviceLoader.__init__))]),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_change_of_what_training_computes_fails_the_exact_comparison(mutation, runs, unchanged, reference,
                                                                        monkeypatch):
    name, patches = MUTATIONS[mutation]
    for obj, attr, value in patches():
        monkeypatch.setattr(obj, attr, value)
    records = runs.run(name, reuse_teacher=name != "teacher")
    diff = run_difference(reference[name], records[name])
    assert diff is not None, f"{mutation}: the exact comparison did not see it"


def main() -> int:
    if sys.argv[1:] != ["--write"]:
        print(f"usage: python {Path(__file__).name} --write", file=sys.stderr)
        return 2
    import tempfile

    from conftest import SHARED_CIFAR
    from mutualbench.data import load_dataset

    ds = load_dataset(SHARED_CIFAR)
    with tempfile.TemporaryDirectory() as tmp:
        out = Runs(str(SHARED_CIFAR), ds.cache_path.parent.parent, Path(tmp)).reference_runs()
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps({n: reduced(r) for n, r in out.items()}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
