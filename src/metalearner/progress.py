"""Progress bars on stderr, one helper for every long command (train, zoo, bench, meta-train).

Progress goes to stderr and results to stdout, so ``metalearner zoo ... > out.txt`` keeps the
results. The display starts on its first update, so an error raised before any work prints
alone::

    with Progress(enabled) as progress:
        bar = progress.bar("zoo", total=len(runs), info="failed {failed}  diverged {diverged}", failed=0, diverged=0)
        for ...:
            bar.advance(failed=n_failed, diverged=n_diverged)

A :class:`Bar` also speaks ``fit``'s progress protocol, ``update(step, total, **fields)``.

Displays nest: a :class:`Progress` opened while another is open adds its bars to that one
(rich allows one live display at a time), so ``metalearner run`` shows one display with a
bar per stage and the bars of the zoo, meta-training and benchmark it calls.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as _RichProgress

STDERR = Console(stderr=True)
_OPEN: list["Progress"] = []  # the displays open now, outermost first


class Bar:
    """One line of a :class:`Progress` display: a count of ``total`` and an info text made
    from ``info`` (a ``str.format`` template) and the latest field values."""

    def __init__(self, owner: "Progress", label: str, total: float | None, completed: float, info: str, fields: dict[str, Any]) -> None:
        self._owner, self._info, self._fields = owner, info, dict(fields)
        self._id = owner.rich.add_task(label, total=total, completed=completed, info=self._text())

    def _text(self) -> str:
        try:
            return self._info.format(**self._fields)
        except (KeyError, ValueError):
            return ""

    def update(self, completed: float | None = None, total: float | None = None, **fields: Any) -> None:
        """Set the count (and total) and any info fields."""
        self._owner.start()
        self._fields.update(fields)
        kw: dict[str, Any] = {"info": self._text()}
        if completed is not None:
            kw["completed"] = completed
        if total is not None:
            kw["total"] = total
        self._owner.rich.update(self._id, **kw)

    def advance(self, n: float = 1, **fields: Any) -> None:
        """Add ``n`` to the count and set any info fields."""
        self._owner.start()
        self._fields.update(fields)
        self._owner.rich.update(self._id, advance=n, info=self._text())


class Progress:
    """A set of :class:`Bar` lines on stderr with elapsed time and ETA; a no-op when disabled."""

    def __init__(self, enabled: bool = True) -> None:
        self.rich = _RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=STDERR, disable=not enabled,
        )  # fmt: skip
        self._started = False
        self._outer: Progress | None = None

    def bar(self, label: str, total: float | None = None, *, completed: float = 0, info: str = "", **fields: Any) -> Bar:
        return Bar(self, label, total, completed, info, fields)

    def start(self) -> None:
        if self._outer is not None:
            self._outer.start()
        elif not self._started:
            self.rich.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self.rich.stop()
            self._started = False

    def __enter__(self) -> "Progress":
        outer = next((p for p in reversed(_OPEN) if not p.rich.disable), None)
        if outer is not None and not self.rich.disable:
            self._outer, self.rich = outer, outer.rich  # one display: add our bars to the open one
        _OPEN.append(self)
        return self

    def __exit__(self, *_: Any) -> None:
        _OPEN.remove(self)
        self.stop()
