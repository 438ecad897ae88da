"""The documentation cannot drift from the command line: every ``mutualbench ...`` and
``make ...`` command written in README.md, REPLICATION.md and docs/**/*.md must still work.

A ``mutualbench`` command must name an existing subcommand and be accepted by
``build_parser().parse_args`` (no unknown option, no missing or extra argument); nothing is run.
A ``make`` command may name only the Makefile's targets and set only variables it reads.

Commands are taken from fenced ``bash``/``sh``/``shell``/``console``/plain code blocks (a line
that starts with ``mutualbench`` or ``make``, possibly after ``VAR=value`` assignments) and from
inline code spans that start so. Optional syntax is unwrapped (``[--epochs E]`` -> ``--epochs
E``; ``...`` dropped), and a placeholder (``E``, ``SECONDS``, ``<folder>``) after an option that
takes a number or a choice stands for a valid one. An inline span of just ``mutualbench
SUBCOMMAND`` names the subcommand in prose, so only the subcommand's existence is checked.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from functools import cache
from pathlib import Path
from typing import NamedTuple

import pytest

from mutualbench.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
COMMAND_RE = re.compile(r"^(?:[A-Za-z_]\w*=\S*\s+)*(?P<program>mutualbench|make)(?:\s|$)")
PLACEHOLDER_RE = re.compile(r"^(?:[A-Z][A-Z0-9_]*(?:[=/][A-Z][A-Z0-9_]*)?|<[^<>]+>)$")
SHELL_STOP_RE = re.compile(r"^(?:\|\|?|&&?|;|\d?>.*|&>.*)$")


def unspace(text: str) -> str:
    """Placeholders in angle brackets as one word: ``FROM=<a folder>`` -> ``FROM=<a_folder>``."""
    return re.sub(r"<[^<>\n]+>", lambda m: m.group().replace(" ", "_"), text)


class Command(NamedTuple):
    doc: str
    line: int
    text: str
    inline: bool = False


def documents() -> list[Path]:
    """README.md, REPLICATION.md and docs/**/*.md, those that exist."""
    paths = [ROOT / "README.md", ROOT / "REPLICATION.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    return [p for p in paths if p.is_file()]


def strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def extract(text: str, doc: str) -> list[Command]:
    """Every ``mutualbench``/``make`` command in markdown ``text``, with its 1-based line."""
    commands, outside = [], []  # outside: the text with every fenced block blanked out
    fence = pending = None
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith(("```", "~~~")):
            fence = None if fence is not None else stripped[3:].strip().split(" ")[0].lower()
            outside.append("")
            pending = None
            continue
        outside.append("" if fence is not None else raw)
        if fence not in SHELL_BLOCKS:
            continue
        if pending:  # a continuation of the previous line
            start, line = pending[0], pending[1] + " " + stripped
        elif fence == "console" and not stripped.startswith("$ "):
            continue  # console output
        else:
            start, line = number, stripped.removeprefix("$ ")
        if line.endswith("\\"):
            pending = (start, line[:-1].rstrip())
            continue
        pending = None
        line = strip_comment(line)
        if COMMAND_RE.match(unspace(line)):
            commands.append(Command(doc, start, line))
    joined = "\n".join(outside)
    for paragraph in re.finditer(r"(?:[^\n]|\n(?![ \t]*(?:\n|$)))+", joined):
        for span in re.finditer(r"`([^`]+)`", paragraph.group()):
            code = " ".join(span.group(1).split())
            if COMMAND_RE.match(unspace(code)):
                line = joined.count("\n", 0, paragraph.start() + span.start()) + 1
                commands.append(Command(doc, line, code, inline=True))
    return sorted(commands, key=lambda c: c.line)


def tokens(command: str) -> list[str]:
    """The words of ``command`` from ``mutualbench``/``make`` on: environment assignments
    dropped, optional-syntax brackets unwrapped, ``...`` dropped, stopping at a pipe,
    redirection, ``&&`` or ``;``."""
    words = []
    for word in shlex.split(unspace(command)):
        if SHELL_STOP_RE.match(word):
            break
        if word.startswith("["):
            word = word[1:]
        if word.endswith("]") and word.count("]") > word.count("["):
            word = word[:-1]
        if word and word != "...":
            words.append(word)
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
        words.pop(0)
    return words


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """The CLI's subcommands, name -> parser."""
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def fill_placeholders(args: list[str], sub: argparse.ArgumentParser | None) -> list[str]:
    """A placeholder after an option that takes a number becomes ``1``, after one with choices
    its first choice; anything else stays as written (a string is a valid path or name)."""
    filled = list(args)
    for i in range(1, len(args)):
        action = sub._option_string_actions.get(args[i - 1]) if sub else None
        if action is None or not PLACEHOLDER_RE.match(args[i]):
            continue
        if action.choices:
            filled[i] = str(next(iter(action.choices)))
        elif action.type in (int, float):
            filled[i] = "1"
    return filled


def check_mutualbench(args: list[str], inline: bool) -> str | None:
    """None if ``mutualbench ARGS`` parses, else why not (argparse's message)."""
    subs = subcommands()
    if args and not args[0].startswith("-") and args[0] not in subs:
        return f"no subcommand {args[0]!r} (there are: {', '.join(subs)})"
    if inline and len(args) == 1:
        return None  # prose naming a subcommand
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(fill_placeholders(args, subs.get(args[0]) if args else None))
    except SystemExit as e:
        if e.code not in (0, None):
            lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
            return lines[-1] if lines else f"argparse exited with {e.code}"
    return None


@cache
def makefile() -> tuple[frozenset[str], frozenset[str]]:
    """The Makefile's targets and the variables it reads."""
    text = (ROOT / "Makefile").read_text()
    targets = {t for t in re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", text, re.M) if not t.startswith(".")}
    for phony in re.findall(r"^\.PHONY:(.*)$", text, re.M):
        targets.update(phony.split())
    variables = set(re.findall(r"\$\((\w+)\)", text)) | set(re.findall(r"^(\w+)\s*[?:+]?=", text, re.M))
    return frozenset(targets), frozenset(variables)


def check_make(args: list[str]) -> str | None:
    """None if every target of ``make ARGS`` is in the Makefile and every ``VAR=`` it reads."""
    targets, variables = makefile()
    problems = []
    for arg in args:
        if "=" in arg:
            if arg.split("=", 1)[0] not in variables:
                problems.append(f"the Makefile reads no variable {arg.split('=', 1)[0]}")
        elif not arg.startswith("-") and arg not in targets:
            problems.append(f"no Makefile target {arg!r} (there are: {', '.join(sorted(targets))})")
    return "; ".join(problems) or None


def check(command: Command) -> str | None:
    """None if the documented command works as written, else what is wrong with it."""
    try:
        words = tokens(command.text)
    except ValueError as e:
        return f"cannot split it into words: {e}"
    if not words:
        return "no command left once environment assignments and optional syntax are removed"
    if words[0] == "make":
        return check_make(words[1:])
    return check_mutualbench(words[1:], command.inline)


def problems(text: str, doc: str) -> list[str]:
    """``doc:line: `command`: problem`` for every documented command in ``text`` that fails."""
    return [f"{c.doc}:{c.line}: `{c.text}`: {why}" for c in extract(text, doc) if (why := check(c))]


DOCUMENTED = [c for p in documents() for c in extract(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]


@pytest.mark.parametrize("command", DOCUMENTED, ids=[f"{c.doc}:{c.line}" for c in DOCUMENTED])
def test_documented_command_is_valid(command):
    """The command parses as the CLI or the Makefile defines it today."""
    why = check(command)
    assert why is None, f"{command.doc}:{command.line}: `{command.text}`: {why}"


def test_documents_show_commands():
    """The documents do show commands (else the check above would pass on nothing)."""
    assert sum(COMMAND_RE.match(unspace(c.text))["program"] == "mutualbench" for c in DOCUMENTED) >= 5


def test_check_reports_drift():
    """The check finds an unknown option, target and subcommand, and passes correct commands."""
    text = """Run `mutualbench table runs/x`, then `make test`:

```console
$ mutualbench replicate spec.toml --no-such-flag \\
    --profile smoke   # a comment
output line mutualbench not a command
$ make no-such-target TEST_WORKERS=0
$ make gpu-import FROM=<a folder, here>
```

```bash
OUT=/tmp/x bash run.sh
mutualbench run --method kd --out runs/y [--epochs E] [--quiet] [--set a=b --set c=d ...] [...] | tee log
```
"""
    found = problems(text, "t.md")
    assert len(found) == 2, found
    assert found[0].startswith("t.md:4: `mutualbench replicate spec.toml --no-such-flag --profile smoke`")
    assert "--no-such-flag" in found[0].split("`: ", 1)[1]
    assert found[1].startswith("t.md:7: `make no-such-target") and "'no-such-target'" in found[1]
    assert [c.line for c in extract(text, "t.md")] == [1, 1, 4, 7, 8, 13]
    assert problems("`mutualbench nosuch x`", "t.md") == [
        f"t.md:1: `mutualbench nosuch x`: no subcommand 'nosuch' (there are: {', '.join(subcommands())})"]
