"""`mutualbench compare` names the rows that only the new study has, as notes, not failures."""

import shutil

from mutualbench.cli import main

SPEC_A = """
[study]
name = "notes"
data = "tiny3"
classes = ["ant", "bee", "cow"]
seeds = 1

[defaults]
"data.batch_size" = 16
"train.epochs" = 1

[[arms]]
name = "a"
method = "individual"
arch = "seed_vgg_student"

[profiles.smoke]
tolerance = 0.5
"""

SPEC_AB = SPEC_A + """
[[arms]]
name = "b"
method = "individual"
arch = "seed_vgg_student"
set = { "train.optimizer.lr" = 3e-4 }

[[ablations]]
name = "lr"
arms = ["a"]
values = { base = {}, low = { "train.optimizer.lr" = 1e-4 } }
"""


def _state(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_compare_names_the_rows_only_one_side_has_in_one_line(tmp_path, tiny_cifar, capsys):
    data, root = tiny_cifar
    specs = {}
    for name, text in (("notes_ab", SPEC_AB), ("notes_a", SPEC_A)):
        specs[name] = tmp_path / f"{name}.toml"
        specs[name].write_text(text)
    common = ["--profile", "smoke", "--data", str(data), "--data-root", str(root), "--device", "cpu", "--quiet"]
    new, stored = tmp_path / "new", tmp_path / "stored"
    assert main(["replicate", str(specs["notes_ab"]), "--out", str(new), *common]) == 0
    shutil.copytree(new, stored, ignore=shutil.ignore_patterns("*.pt"))
    # the stored study has arm a only: its run is reused, nothing is trained again
    assert main(["replicate", str(specs["notes_a"]), "--out", str(stored), *common]) == 0
    capsys.readouterr()
    before = {**_state(new), **_state(stored)}

    assert main(["compare", str(new), "--against", str(stored)]) == 0
    out = capsys.readouterr().out
    assert "  not in the stored study (nothing to compare with): a/model [lr=base], a/model [lr=low], b/model" in out
    assert "consistent: 1 of 1 arm/member rows consistent with the stored seeds" in out

    # the other way round, the rows the new side lacks are named in one line, not compared
    # (a study of selected arms is compared on those arms)
    assert main(["compare", str(stored), "--against", str(new)]) == 0
    out = capsys.readouterr().out
    assert "not in the stored study" not in out
    assert "  not in this study (not compared): b/model, a/model [lr=base], a/model [lr=low]" in out
    assert {**_state(new), **_state(stored)} == before  # compare writes nothing
