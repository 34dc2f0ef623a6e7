"""An exclusive directory lock, so two processes never write into one output folder.

Zoo sweeps, benchmark suites and meta-training runs each hold the lock of their output
directory while they work; a second command on the same folder fails at once, in one line.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Any

from metalearner.errors import MetalearnerError


class DirectoryLocked(MetalearnerError):
    """Another process holds the directory's lock."""


class DirectoryLock:
    """An exclusive ``flock`` on ``DIR/.lock``; released by the kernel if the holder dies."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> "DirectoryLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise DirectoryLocked(f"{self.path.parent} is in use by another process ({holder}); wait for it or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *_: Any) -> None:
        self.release()
