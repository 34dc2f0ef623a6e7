"""User-facing errors.

Anything raised as a :class:`MetalearnerError` is a user mistake or an environment problem
(missing data, bad flag, corrupt file). The CLI prints its message on one line and exits
with status 2 instead of showing a traceback. A :class:`MetalearnerWarning` is one that the
work goes on past (one corrupt run among many).
"""

import warnings


class MetalearnerError(Exception):
    """Base class for errors whose message is meant for the user."""


class DataError(MetalearnerError):
    """A data set is missing, corrupt, truncated, or fails its checksum."""


class ConfigError(MetalearnerError, ValueError):
    """A configuration value is invalid (unknown name, out-of-range number)."""


class MetalearnerWarning(UserWarning):
    """Something the user should know that does not stop the work (a corrupt run skipped).
    The CLI prints its message on one line, as ``warning: ...``."""


def first_line(e: BaseException) -> str:
    """An exception's message cut to one line (for a one-line error that quotes it)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def warn_skipped(what: str, reasons: list[str]) -> None:
    """One :class:`MetalearnerWarning` for the runs that ``what`` (e.g. "the zoo summary")
    skipped because they could not be read; ``reasons``: one line per run."""
    if reasons:
        more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
        warnings.warn(f"{what} skipped {len(reasons)} unreadable run(s): {'; '.join(reasons[:3])}{more}", MetalearnerWarning, stacklevel=3)


_python_format_warning = warnings.formatwarning


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    if issubclass(category, MetalearnerWarning):
        return f"warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


def one_line_warnings() -> None:
    """Show our warnings as one line, ``warning: ...``, and others as Python does: for the
    command line and the worker processes it starts."""
    warnings.formatwarning = _format_warning
