"""Where a figure goes, checked before the work that makes it: a bad path costs a one-line
error, not the run."""

from __future__ import annotations

import functools
from pathlib import Path

from metalearner.atomic import writable_folder
from metalearner.errors import ConfigError


@functools.cache
def figure_formats() -> tuple[str, ...]:
    """The file suffixes matplotlib writes (png, pdf, svg, ...)."""
    from matplotlib.figure import Figure

    return tuple(sorted(Figure().canvas.get_supported_filetypes()))


def figure_path(path: str | Path | None) -> Path | None:
    """The file a figure asked for at ``path`` will be: ``.png`` added where it has no suffix
    (as matplotlib does), a suffix matplotlib cannot write refused, its folder made and checked
    writable (``writable_folder``), a folder in its place refused; ``None`` (no figure asked for)
    stays ``None``."""
    if path is None:
        return None
    path = Path(path)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    if path.suffix[1:].lower() not in figure_formats():
        raise ConfigError(f"cannot write a figure to {path}: use one of .{', .'.join(figure_formats())}")
    if path.is_dir():
        raise ConfigError(f"cannot write a figure to {path}: it is a folder")
    writable_folder(path.parent)
    return path
