"""Progress bars (tqdm), quiet when not attached to a terminal unless forced."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(*args, **kwargs) -> tqdm:
    """A tqdm bar; disabled off a TTY (CI logs) unless MUTUALBENCH_PROGRESS=1."""
    forced = os.environ.get("MUTUALBENCH_PROGRESS")
    if forced is not None:
        kwargs.setdefault("disable", forced in ("0", ""))
    else:
        kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(*args, **kwargs)


def count_runs(n: int) -> str:
    """``"1 run"``, ``"3 runs"``: a number of runs as a message names it."""
    return "1 run" if n == 1 else f"{n} runs"
