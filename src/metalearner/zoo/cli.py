"""``metalearner zoo``: run a sweep (``zoo --spec S --out DIR``) or summarise one
(``zoo summary DIR``). Registered in the main CLI with ``app.add_typer(zoo_app, name="zoo")``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from metalearner import options

zoo_app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    help="Train a zoo of observed base models (parallel, resumable), or summarise one.",
)


@zoo_app.callback(invoke_without_command=True)
def zoo(
    ctx: typer.Context,
    spec: Optional[str] = typer.Option(None, help="Sweep spec: a .toml/.yaml file or a preset (mnist100, tiny)."),
    out: Optional[Path] = typer.Option(None, help="Zoo directory (created; rerun to resume)."),
    workers: Optional[int] = options.WORKERS,
    executor: str = options.EXECUTOR,
    address: Optional[str] = options.ADDRESS,
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a space key everywhere (per-optimizer values too): KEY=VALUE (a TOML value; a,b,c is a list)."),
    sampling: Optional[str] = typer.Option(None, help="Override the spec's sampling: grid or random."),
    n_runs: Optional[int] = typer.Option(None, help="Override the number of random runs."),
    seed: Optional[int] = typer.Option(None, help="Override the sampling seed."),
    prune: str = typer.Option("none", help="Early stopping: none or halving (successive halving)."),
    eta: float = typer.Option(3.0, help="Successive halving: keep the top 1/eta at each rung."),
    data_dir: Optional[Path] = options.DATA_DIR,
    device: Optional[str] = typer.Option(None, help="cpu, cuda or auto for every run (overrides the spec's device key)."),
    dry_run: bool = typer.Option(False, help="List the runs the spec gives and exit."),
    progress: bool = options.PROGRESS,
) -> None:
    """Run the sweep SPEC into OUT; rerun the same command to finish what is missing."""
    if ctx.invoked_subcommand is not None:
        return
    from metalearner.errors import ConfigError
    from metalearner.parallel import make_executor
    from metalearner.zoo.pruning import make_pruner
    from metalearner.zoo.spec import SweepSpec, load_spec, parse_assignment, run_id, sample_runs
    from metalearner.zoo.sweep import print_report, read_manifest, run_sweep

    if spec is None and not set_:
        if out is not None:
            raise ConfigError("give the sweep with --spec SPEC (a .toml/.yaml file or a preset: mnist100, tiny) or --set KEY=VALUE")
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    base = load_spec(spec) if spec is not None else None
    d = base.to_dict() if base is not None else SweepSpec().to_dict()
    overrides = dict(parse_assignment(s) for s in set_ or [])
    d["space"] = {**d["space"], **overrides}
    for per_optimizer in d["space"].get("by_optimizer", {}).values():  # --set beats the spec's per-optimizer values too
        for key in overrides:
            per_optimizer.pop(key, None)
    if device is not None:
        from metalearner.train.run import resolve_device

        resolve_device(device)  # a missing GPU fails here, in one line, before any run
        d["space"]["device"] = device
    if sampling is not None:
        d["sampling"] = sampling
        if sampling == "grid":  # a random spec's draw count means nothing to a grid
            d["n_runs"] = None
    if n_runs is not None:
        d["n_runs"] = n_runs
    if seed is not None:
        d["seed"] = seed
    if not d["space"]:
        raise ConfigError(f"the sweep spec {spec} has an empty or missing [space] table: say what its runs vary (or use --set KEY=VALUE)")
    sweep_spec = SweepSpec.from_dict(d)
    pruner = make_pruner(prune, eta=eta)
    runs = sample_runs(sweep_spec)
    if dry_run:
        for r in runs:
            m = r.task.model
            typer.echo(f"{run_id(r)}  {r.task.dataset} {m.family} {m.depth}x{m.width} {m.activation} {r.optimizer} lr={r.lr:g} bs={r.task.batch_size} seed={r.seed}")
        typer.echo(f"{len(runs)} runs")
        return
    if out is None:
        raise ConfigError("give --out DIR for the zoo")
    ids = [run_id(r) for r in runs]
    other = set(read_manifest(out)["runs"]) - set(ids)
    if other:  # a zoo grown with more runs is fine; one mixed with another sweep's runs is not
        raise ConfigError(f"{out} holds {len(other)} run(s) this sweep would not make (a zoo of another spec or options); "
                          "resume it with the spec and options that made it, or use another --out")
    with make_executor(executor, workers, address=address) as ex:
        result = run_sweep(
            sweep_spec, out, ex, pruner=pruner,
            data_dir=str(data_dir) if data_dir else None, progress=progress,
        )  # fmt: skip
    print_report(out, result, ids=ids)
    failed = result.counts.get("failed", 0)
    if failed:  # the sweep went on; a script still learns that runs failed
        typer.echo(f"error: {failed} run(s) failed (the table above); rerun the same command to retry them", err=True)
        raise typer.Exit(1)


@zoo_app.command()
def summary(
    zoo_dir: Path = typer.Argument(..., help="A zoo directory written by `metalearner zoo`."),
    csv: Optional[Path] = typer.Option(None, help="Also write one row per run to this CSV."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per run instead of tables."),
    top: int = typer.Option(10, help="Rows of the best-runs table."),
) -> None:
    """One row per run (config, status, final metrics); best runs and diverged runs."""
    from metalearner.atomic import atomic_path
    from metalearner.errors import ConfigError
    from metalearner.zoo.summary import summarize_zoo, summary_json
    from metalearner.zoo.sweep import print_report

    if top < 0:
        raise ConfigError(f"--top must be >= 0, got {top}")
    df = summarize_zoo(zoo_dir)
    if csv is not None:
        with atomic_path(csv) as tmp:
            df.to_csv(tmp, index=False)
    if as_json:
        for row in summary_json(df):
            typer.echo(json.dumps(row))
        return
    counts = df["status"].value_counts().to_dict()
    typer.echo(f"{len(df)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    print_report(zoo_dir, top=top, summary=df)
