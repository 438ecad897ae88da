"""Error types. Every user-facing failure is a ``UserError``: the CLI prints its message on one
line and exits with status 2, so messages must name the problem and the fix."""


class UserError(Exception):
    """Bad input from the user (unknown name, malformed file, missing data...)."""


class DataError(UserError):
    """A data source that cannot be read, or is laid out wrongly."""
