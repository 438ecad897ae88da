"""Every committed results folder regenerates byte for byte from its records (tables, CSVs and
plots), and the loss-term plots appear only where records carry terms."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from mutualbench.analysis.report import plot_loss_terms, write_report

RESULTS = Path(__file__).resolve().parents[1] / "results"
STUDIES = sorted(p.parent for p in RESULTS.glob("*/*/study.json"))


def test_there_are_stored_studies():
    assert len(STUDIES) >= 5


@pytest.mark.parametrize("folder", STUDIES, ids=[f"{p.parent.name}/{p.name}" for p in STUDIES])
def test_a_stored_study_regenerates_byte_for_byte(folder, tmp_path):
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.pt"))
    written = write_report(copy)
    assert written, folder
    for name, path in written.items():
        stored = folder / name
        assert stored.exists(), f"{folder}: `mutualbench table` writes {name}, which is not committed"
        assert path.read_bytes() == stored.read_bytes(), f"{folder}/{name} differs when regenerated"


def test_loss_terms_are_plotted_per_arm(tmp_path):
    rows = [{"arm": "dml", "member": m, "seed": s, "epoch": e, "stage": "mutual", "term": t, "loss": 1.0 / e}
            for m in ("student1", "student2") for s in (0, 1) for e in (1, 2, 3) for t in ("ce", "kl")]
    written = plot_loss_terms(pd.DataFrame(rows), tmp_path, "study")
    assert [p.name for p in written] == ["loss_terms_dml.png"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = pd.DataFrame(columns=["arm", "member", "seed", "epoch", "stage", "term", "loss"])
    assert plot_loss_terms(empty, tmp_path, "study") == []
