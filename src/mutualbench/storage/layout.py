"""A study folder's layout, named once:

    <study folder>/study.json   the manifest (spec, profile, seeds, data, every run id)
    <study folder>/runs/        the run records (<run_id>.json) and weights (<run_id>/final.pt)

``replicate`` writes to ``runs/<spec name>/<profile>`` unless told otherwise and compares
with the stored set in ``results/<spec name>/<profile>``."""

from __future__ import annotations

from pathlib import Path

MANIFEST = "study.json"
RUNS = "runs"


def default_out(spec_path: str | Path, profile: str) -> Path:
    return Path("runs") / Path(spec_path).stem / profile


def stored_results(spec_path: str | Path, profile: str) -> Path:
    return Path("results") / Path(spec_path).stem / profile
