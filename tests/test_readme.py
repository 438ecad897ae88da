"""The README is a landing page: it opens with the two commands, fits a screen or two, and
every figure in its prose is either inside a generated block (checked by
tests/test_replication_prose.py) or checked here against the code, the spec or the records."""

import json
import re
from pathlib import Path

from mutualbench.analysis.claims import DEFAULT_RULE

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def prose(text: str) -> str:
    """The text without generated blocks, fenced code and inline code."""
    text = re.sub(r"<!-- (\S+):start -->.*?<!-- \1:end -->", "", text, flags=re.S)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def figures(text: str) -> set[str]:
    """The numbers written in prose, not those inside words (float32, x86, CIFAR-10, last-5)."""
    return set(re.findall(r"(?<![\w.,-])\d+(?:[.,]\d+)*(?![\w-])", prose(text)))


def full_student_record() -> dict:
    manifest = json.loads((ROOT / "results/seed_blog/full/study.json").read_text(encoding="utf-8"))
    run_id = next(e["run_id"] for e in manifest["runs"] if e["arm"] == "student" and e["ablation"] is None)
    return json.loads((ROOT / "results/seed_blog/full/runs" / f"{run_id}.json").read_text(encoding="utf-8"))


def arxiv_cited_in_code(number: str) -> bool:
    sources = [*(ROOT / "src/mutualbench/methods").glob("*.py"), *(ROOT / "replication").glob("*.toml")]
    return any(f"arXiv {number}" in p.read_text(encoding="utf-8") for p in sources)


CHECKS = {  # each figure the README's prose states, and where it comes from
    "0.05": lambda: DEFAULT_RULE.alpha == 0.05,
    "30": lambda: full_student_record()["config"]["train"]["epochs"] == 30,
    "50,000": lambda: full_student_record()["data"]["train_size"] == 50_000,
    "1706.00384": lambda: arxiv_cited_in_code("1706.00384"),
    "1412.6550": lambda: arxiv_cited_in_code("1412.6550"),
}


def test_the_readme_opens_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# mutualbench" and lines[2] == "```bash"
    assert lines[3].startswith("make replicate ") and lines[4].startswith("make test ")


def test_the_readme_fits_a_screen_or_two():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 170
    long = [line for line in prose(text).splitlines() if len(line) > 120 and not line.startswith("|")]
    assert long == []


def test_every_figure_in_the_readme_prose_is_checked():
    found = figures(README.read_text(encoding="utf-8"))
    assert found - set(CHECKS) == set(), "a figure in README prose that no test checks"
    assert [f for f in found if not CHECKS[f]()] == []


def test_the_figure_check_sees_a_new_figure():
    assert figures("the student reaches 67.3% in 1,000 s on CIFAR-10 in float32, last-5 mean") == {"67.3", "1,000"}
    assert figures("<!-- a:start -->\n42.00\n<!-- a:end -->\n`mutualbench run --seed 3`") == set()
