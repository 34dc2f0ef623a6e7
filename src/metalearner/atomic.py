"""Crash-safe file writes: a reader sees the old file or the complete new one, never a torn one."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from metalearner.errors import DataError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On an exception (or a kill) the temporary file is removed or left with a ``.tmp`` suffix,
    and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():  # named as the user gave it (os.replace would name the temporary file)
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    with _named(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600, and a writer that replaces the file (safetensors does) makes its own:
        # ordinary permissions, set after the write
        os.chmod(tmp_path, 0o666 & ~umask)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # persist the rename itself


def writable_folder(folder: str | os.PathLike) -> Path:
    """``folder``, made if missing and checked writable by writing a file into it: called
    before long work, so a place that cannot take the results costs a one-line error (the
    ``OSError`` names it) and not the work."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _named(folder), tempfile.TemporaryFile(dir=folder):
        pass
    return folder


@contextmanager
def _named(path: Path) -> Iterator[None]:
    """An ``OSError`` inside names ``path`` (as the user gave it), not a temporary file in it."""
    try:
        yield
    except OSError as e:
        raise type(e)(e.errno, e.strerror, str(path)) from None


def fsync_dir(folder: str | os.PathLike) -> None:
    """Persist the renames in ``folder`` (where the platform can; elsewhere nothing)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; invalid JSON raises :class:`DataError` naming the file (one that
    cannot be read raises its ``OSError``)."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as e:  # JSONDecodeError, or bytes that are not text
        raise DataError(f"{path} is not valid JSON: {e}") from None


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`read_json` for the files metalearner writes as one JSON object (``run.json``,
    manifests, metadata): anything else raises :class:`DataError` naming the file."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path} is not what metalearner writes there (a JSON object, got a {type(data).__name__})")
    return data


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN/inf become null)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(obj), indent=2, sort_keys=False) + "\n")


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None (JSON has neither)."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
