"""The GPU check script, run on the CPU as a dry run (``--device cpu --quick``): the code a
GPU machine will run gets exercised here first. No timing is asserted."""

from __future__ import annotations

import gpu_check


def test_gpu_check_dry_run_on_cpu(tmp_path, capsys):
    out = tmp_path / "gpu-check.md"
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "dry run on the CPU" in text
    equivalence = [line for line in text.splitlines() if line.startswith("| K=")]
    assert len(equivalence) == 3 and all(line.endswith("| ok |") for line in equivalence), equivalence
    steps = [line for line in text.splitlines() if line.startswith(("| 2 |", "| 4 |"))]
    assert len(steps) == 16 and not any("failed" in line for line in steps), steps
    assert sum("skipped on the CPU" in line for line in steps) == 4
    assert "One 256-image epoch" in text and "failed" not in text
