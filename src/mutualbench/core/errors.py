"""Error types. Every user-facing failure is a ``UserError``: the CLI prints its message on one
line and exits with status 2, so messages must name the problem and the fix."""


class UserError(Exception):
    """Bad input from the user (unknown name, malformed file, missing data...)."""


class DataError(UserError):
    """A data source that cannot be read, or is laid out wrongly."""


def one_line(message: object) -> str:
    """``message`` on one line: line breaks and other control characters (from a name in a spec,
    a path, an option's value) written as escapes, so an error or warning is always one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


def warn(message: str) -> None:
    """A one-line ``warning: ...`` on stderr (also under ``--quiet``): something was wrong and
    has been dealt with, e.g. an unreadable checkpoint moved aside."""
    import sys

    print(f"warning: {one_line(message)}", file=sys.stderr, flush=True)
