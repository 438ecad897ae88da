"""`mutualbench compare` says when the stored study's runs came from another kind of machine."""

from __future__ import annotations

import json
from pathlib import Path

from mutualbench.analysis.results import load_study, machine_note
from mutualbench.cli import main
from mutualbench.core.envinfo import machine_kind, machine_slug

OLD_ENV = {"device": "CPU: AMD EPYC 7B13 (2 threads)"}  # a record written before env.cpu existed
EPYC = {"device": "CPU: AMD EPYC 7B13 (2 threads)",
        "cpu": {"model": "AMD EPYC 7B13", "isa": "AVX2", "bf16_native": False, "bf16_flags": [], "threads": 2}}
XEON = {"device": "CPU: Intel(R) Xeon(R) Platinum 8480+ (16 threads)",
        "cpu": {"model": "Intel(R) Xeon(R) Platinum 8480+", "isa": "AVX512", "bf16_native": True,
                "bf16_flags": ["avx512_bf16", "amx_bf16"], "threads": 16}}


def study(folder: Path, envs: list[dict], accs: list[float]) -> Path:
    """A study folder with one arm ("student") and one complete fake record per seed."""
    runs = []
    (folder / "runs").mkdir(parents=True)
    for seed, (env, acc) in enumerate(zip(envs, accs, strict=True)):
        rid = f"individual-fake{seed:07d}"
        runs.append({"run_id": rid, "arm": "student", "method": "individual", "seed": seed,
                     "ablation": None, "value": None})
        record = {
            "schema": 1, "run_id": rid, "status": "complete", "seed": seed, "data": {}, "curves": [],
            "config": {"method": "individual"}, "timings": {"train_s": 1.0}, "env": env,
            "models": {"model": {"role": "individual", "arch": "seed_vgg_student", "params": 1,
                                 "final_test_acc": acc, "best_test_acc_test_selected": acc}},
        }
        (folder / "runs" / f"{rid}.json").write_text(json.dumps(record))
    spec = {"study": {"name": "machines"}, "arms": [{"name": "student"}], "profiles": {"cpu": {"tolerance": 0.5}}}
    manifest = {"spec": spec, "profile": "cpu", "seeds": list(range(len(accs))), "runs": runs,
                "data": {"name": "d", "sha256": "0" * 64}}  # what every manifest holds (stored_schema.Manifest)
    (folder / "study.json").write_text(json.dumps(manifest))
    return folder


def test_machine_kind_of_old_and_new_records():
    assert machine_kind(EPYC) == "AMD EPYC 7B13 AVX2"
    assert machine_kind(OLD_ENV) == "CPU: AMD EPYC 7B13 (2 threads) (instruction set not recorded)"


def test_machine_slug_names_a_kind_of_machine_as_a_file_name():
    # results/bench/<slug>.md: one file per kind of machine, found again on the same kind
    assert machine_slug(machine_kind(EPYC)) == "amd-epyc-7b13-avx2"
    assert machine_slug(machine_kind(XEON)) == "intel-xeon-platinum-8480-avx512"
    assert machine_slug("AMD EPYC AVX2") == "amd-epyc-avx2"
    assert machine_slug("?/?") == "unknown"


def test_compare_notes_results_from_another_kind_of_machine(tmp_path, capsys):
    stored = study(tmp_path / "stored", [OLD_ENV, EPYC], [40.0, 41.0])
    new = study(tmp_path / "new", [XEON, XEON], [40.2, 41.1])
    assert load_study(stored).machine_kinds() == ["AMD EPYC 7B13 AVX2", "CPU: AMD EPYC 7B13 (2 threads) (instruction set not recorded)"]
    assert main(["compare", str(new), "--against", str(stored)]) == 0
    out = capsys.readouterr().out
    assert ("note: stored results came from AMD EPYC 7B13 AVX2 and CPU: AMD EPYC 7B13 (2 threads) (instruction set "
            "not recorded), these from Intel(R) Xeon(R) Platinum 8480+ AVX512; float32 results differ between kinds "
            "of machine, as between seeds") in out
    assert "consistent: 1 of 1" in out


def test_compare_says_nothing_about_machines_when_they_are_the_same_kind(tmp_path, capsys):
    stored = study(tmp_path / "stored", [EPYC, EPYC], [40.0, 41.0])
    new = study(tmp_path / "new", [EPYC, dict(EPYC, cpu=dict(EPYC["cpu"], threads=1))], [45.0, 46.0])
    assert machine_note(new, stored) is None
    assert main(["compare", str(new), "--against", str(stored)]) == 1  # a real difference stays a failure
    out = capsys.readouterr().out
    assert "note: stored results came from" not in out and "DIFFERENT: 0 of 1" in out
