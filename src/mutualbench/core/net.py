"""How long network calls may wait for an answer.

Every network call of mutualbench (the CIFAR download, starting a W&B run) waits at most
``$MUTUALBENCH_NET_TIMEOUT`` seconds (default 60) for the other side to answer, then fails
with a one-line error instead of hanging. The limit is per answer, not per transfer: a slow
download that keeps receiving data goes on."""

from __future__ import annotations

import os

from .errors import UserError

NET_TIMEOUT_ENV = "MUTUALBENCH_NET_TIMEOUT"
DEFAULT_NET_TIMEOUT_S = 60.0


def net_timeout() -> float:
    """Seconds to wait for a network answer: ``$MUTUALBENCH_NET_TIMEOUT`` or 60."""
    raw = os.environ.get(NET_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_NET_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UserError(f"{NET_TIMEOUT_ENV}={raw!r} is not a positive number of seconds; set it to e.g. 60, "
                        "or unset it for the default of 60 s")
    return value


def is_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it, e.g. a ``URLError``'s reason) is a timeout."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError):
            return True
        e = e.__cause__ or e.__context__
    return False
