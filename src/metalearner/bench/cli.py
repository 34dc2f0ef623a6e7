"""``metalearner bench --suite NAME --out DIR [--methods ..] [--cells ..]`` (run or resume) and ``bench report DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metalearner import options

bench_app = typer.Typer(add_completion=False, invoke_without_command=True,
                        help="Time-to-target benchmark against tuned and tuning-free optimizers.")  # fmt: skip


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    suite: str = typer.Option("quick", help="smoke (~1 min), quick (small tasks, ~10 min on 2 cores), headline (MNIST/Fashion + CNN/GRU cells, "
                              "tuning-free methods, ~70 min), full (8 cells x 8 methods, ~2 h) or dev (non-benchmark cells for "
                              "choosing learned_sf weights, ~10 min)."),
    methods: Optional[str] = typer.Option(None, help="Only these methods, comma-separated (the reference method, adam, must be among them)."),
    cells: Optional[str] = typer.Option(None, help="Only these cells, comma-separated (names as the suite lists them)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (created; rerun the same command to resume)."),
    workers: Optional[int] = options.WORKERS,
    executor: str = options.EXECUTOR,
    address: Optional[str] = options.ADDRESS,
    seeds: Optional[int] = typer.Option(None, help="Override the suite's number of scoring seeds."),
    data_dir: Optional[Path] = options.DATA_DIR,
    device: str = options.DEVICE,
    progress: bool = options.PROGRESS,
) -> None:
    """Run SUITE into OUT: results.json, report.md, report.html and figures/."""
    if ctx.invoked_subcommand is not None:
        return
    import dataclasses

    from metalearner.bench import get_suite, results_dir, run_suite, select
    from metalearner.report.bench import print_summary
    from metalearner.errors import ConfigError
    from metalearner.parallel import make_executor

    if out is None:
        raise ConfigError("give --out DIR for the benchmark")
    from metalearner.train.run import resolve_device

    resolve_device(device)  # a missing GPU fails here, in one line, before any job
    s = select(get_suite(suite), methods=methods, cells=cells)
    if seeds is not None:
        s = dataclasses.replace(s, seeds=seeds)
    with make_executor(executor, workers, address=address) as ex:
        results = run_suite(s, out, ex, data_dir=str(data_dir) if data_dir else None, progress=progress, device=device)
    print_summary(results, results_dir(s, out))


@bench_app.command("report")
def report(
    results_path: Path = typer.Argument(..., help="A benchmark directory, its results.json, or benchmarks/results/time_to_target.json."),
    out: Optional[Path] = typer.Option(None, help="Where to write the report (default: beside the results)."),
) -> None:
    """Re-render report.md/report.html from the results and print the headline table."""
    from metalearner.bench import load_results
    from metalearner.report.bench import print_summary, write_report

    results = load_results(results_path)
    d = out or (results_path if results_path.is_dir() else results_path.parent)
    write_report(results, d)
    print_summary(results, d)
