import subprocess
import sys

from conftest import write_tar
from mutualbench.cli import main


def test_archs_table_shows_blog_counts(capsys):
    assert main(["archs"]) == 0
    out = capsys.readouterr().out
    assert "2,440,394" in out and "1,497,434" in out and "timm:<any timm model name>" in out


def test_data_summary_then_cache(tmp_path, data_root, tiny_files, capsys):
    src = write_tar(tmp_path / "tiny.tar.gz", tiny_files)
    assert main(["data", str(src), "--data-root", str(data_root)]) == 0
    first = capsys.readouterr().out
    assert "decoded from the source and cached" in first and "train 12 / test 6" in first
    assert main(["data", str(src), "--data-root", str(data_root)]) == 0
    assert "read from cache" in capsys.readouterr().out


def test_bad_data_is_one_line_error_exit_2(tmp_path, data_root):
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    proc = subprocess.run([sys.executable, "-m", "mutualbench.cli", "data", str(broken), "--data-root", str(data_root)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert not (data_root / "cache").exists() or not any((data_root / "cache").iterdir())


def test_methods_table_lists_all_five(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("individual", "kd", "mutual", "fitnets", "hint_mutual"):
        assert f"| {name}" in out


def test_time_budget_help_describes_the_measured_estimate(capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["replicate", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width
    line = text[text.index("--time-budget SECONDS start no run"):text.index("--against AGAINST stored")]
    for phrase in ("counted from the start of the first run", "an estimate for this machine made before the runs start",
                   "a few timed training steps", "the longest run of its kind so far"):
        assert phrase in line, phrase
