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


def closing_line(models: dict, ensemble: dict | None, curves: list[dict], train_s: float) -> str:
    """A finished run's one-line summary, e.g. ``"final test accuracy student1=19.00%
    student2=20.00% ensemble=21.00% after 3 epochs (11.2 s of training)"``: the line a run's
    log ends with, whether or not its epochs had lines of their own (``engine.Engine``)."""
    accs = [f"{name}={m['final_test_acc']:.2f}%" for name, m in models.items() if m.get("final_test_acc") is not None]
    if ensemble and ensemble.get("final_test_acc") is not None:
        accs.append(f"ensemble={ensemble['final_test_acc']:.2f}%")
    epochs = len(curves)
    return (f"final test accuracy {' '.join(accs) or 'none'} after {epochs} epoch{'s' if epochs != 1 else ''} "
            f"({train_s:.1f} s of training)")
