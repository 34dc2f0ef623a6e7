"""User-facing errors.

Anything raised as a :class:`MetalearnerError` is a user mistake or an environment problem
(missing data, bad flag, corrupt file). The CLI prints its message on one line and exits
with status 2 instead of showing a traceback.
"""


class MetalearnerError(Exception):
    """Base class for errors whose message is meant for the user."""


class DataError(MetalearnerError):
    """A data set is missing, corrupt, truncated, or fails its checksum."""


class ConfigError(MetalearnerError, ValueError):
    """A configuration value is invalid (unknown name, out-of-range number)."""


def first_line(e: BaseException) -> str:
    """An exception's message cut to one line (for a one-line error that quotes it)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
