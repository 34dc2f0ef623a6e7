"""Command-line options that several commands share, declared once so they mean the same
everywhere (``--executor/--workers/--address`` become an executor in
:func:`metalearner.parallel.make_executor`; ``--device`` is resolved by
:func:`metalearner.train.run.resolve_device`)."""

from __future__ import annotations

import typer

EXECUTOR = typer.Option("local", help="local (a process pool on this machine) or ray.")
ADDRESS = typer.Option(None, help="Ray cluster address (with --executor ray), e.g. auto.")
WORKERS = typer.Option(None, help="Local worker processes (default: the cores; 0 = in this process).")
DATA_DIR = typer.Option(None, help="Data directory (default: $METALEARNER_DATA, else the user cache).")
DEVICE = typer.Option("cpu", help="cpu, cuda (cuda:N) or auto (a GPU when torch sees one).")
PROGRESS = typer.Option(True, help="Show progress on stderr (results go to stdout).")
