"""The stored studies keep their run ids: the current code, given the committed spec and the
stored data checksum, derives the same id for every stored (arm, seed, ablation value)."""

import json
from pathlib import Path

import pytest

from mutualbench.core.config import run_id
from mutualbench.studies.spec import expand, load_spec
from mutualbench.training.run import resolve

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p.parent for p in (ROOT / "results").glob("*/*/study.json"))


@pytest.mark.parametrize("folder", STUDIES, ids=[f"{p.parent.name}/{p.name}" for p in STUDIES])
def test_stored_run_ids_are_derived_unchanged(folder):
    manifest = json.loads((folder / "study.json").read_text())
    spec = load_spec(ROOT / manifest["spec_path"])
    ran = sorted({e["ablation"] for e in manifest["runs"] if e["ablation"]})  # opt-in ones included
    # where the data was read from is not in a run id (nor, since, in a manifest): the spec's data set stands for it
    plan = expand(spec, manifest["profile"], manifest["seeds"], spec.data, ran or False)
    derived = {(p.arm, p.seed, p.ablation, p.value): run_id(resolve(p.config), manifest["data"]["sha256"])
               for p in plan}
    stored = {(e["arm"], e["seed"], e["ablation"], e["value"]): e["run_id"] for e in manifest["runs"]}
    assert stored and all(derived.get(k) == v for k, v in stored.items()), \
        [(k, v, derived.get(k)) for k, v in stored.items() if derived.get(k) != v][:5]
