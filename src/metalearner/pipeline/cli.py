"""``metalearner run`` and ``metalearner report`` (thin: parse, call the pipeline, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metalearner import options


def run_command(
    preset: str = typer.Option("quick", help="tiny (a minute, for tests), quick (under 15 min on 2 cores) or full (hours)."),
    out: Path = typer.Option(Path("runs/pipeline"), help="Output folder (rerun the same command to resume)."),
    executor: str = options.EXECUTOR,
    address: Optional[str] = options.ADDRESS,
    workers: Optional[int] = options.WORKERS,
    data_dir: Optional[Path] = options.DATA_DIR,
    device: str = options.DEVICE,
    progress: bool = options.PROGRESS,
) -> None:
    """The whole mission in one command: zoo -> dataset -> mirror -> meta-train -> bench -> report."""
    from metalearner.parallel import make_executor
    from metalearner.pipeline import get_preset, run_pipeline, with_device

    cfg = with_device(get_preset(preset), device)
    with make_executor(executor, workers, address=address) as ex:  # a missing Ray fails here, before any work
        result = run_pipeline(cfg, out, ex, data_dir=str(data_dir) if data_dir else None, progress=progress)
    for name, rec in result.stages.items():
        typer.echo(f"{name:<11} {'cached' if rec['cached'] else 'ran':<7} {rec['wall_s']:7.1f}s")
    typer.echo(f"total {result.wall_s:.1f}s; report: {out / 'report.html'} (and report.md)")


def report_command(out: Path = typer.Argument(..., help="A folder written by `metalearner run`.")) -> None:
    """Rebuild OUT/report.html and OUT/report.md from the saved artifacts (trains nothing)."""
    from metalearner.report.pipeline import write_pipeline_report

    paths = write_pipeline_report(out)
    typer.echo(f"report: {paths['html']} (and {paths['md'].name})")
