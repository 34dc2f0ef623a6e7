"""The ``metalearner`` command: parses flags, calls the library, prints results."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from metalearner import options
from metalearner.bench.cli import bench_app
from metalearner.errors import MetalearnerError, one_line_warnings
from metalearner.meta.cli import fewshot_app, tower_app
from metalearner.methods import METHODS
from metalearner.lopt.cli import app as lopt_app
from metalearner.lopt.cli import meta_train_command
from metalearner.mirror.cli import dataset_app, mirror_app
from metalearner.pipeline.cli import report_command, run_command
from metalearner.progress import STDERR, Progress
from metalearner.zoo.cli import zoo_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Learning to optimize: observe, learn, train faster.")
app.add_typer(zoo_app, name="zoo")
app.add_typer(dataset_app, name="dataset")
app.add_typer(mirror_app, name="mirror")
app.command("meta-train", help="Meta-train a learned optimizer (Opt2Vec, the LR controller, or learned_sf with --kind learned).")(meta_train_command)
app.add_typer(lopt_app, name="lopt")
app.add_typer(bench_app, name="bench")
app.add_typer(tower_app, name="tower")
app.add_typer(fewshot_app, name="fewshot")
app.command("run", help="The whole pipeline, raw data to report: zoo, dataset, mirror, meta-train, bench, report.")(run_command)
app.command("report", help="Rebuild a pipeline folder's report.html/report.md from its artifacts.")(report_command)


@app.command()
def train(
    task: str = typer.Option("mnist", help="Data set: mnist, fashion_mnist, mnist1d, moons, digits, synthetic."),
    model: str = typer.Option("mlp", help="Model family: mlp, cnn, rnn (a GRU over image rows or sequence steps) or transformer (pre-norm, over image rows or 8 slices of a flat input)."),
    depth: int = typer.Option(2, help="Hidden layers (MLP) or conv blocks (CNN)."),
    width: int = typer.Option(256, help="Hidden units (MLP) or first-block channels (CNN)."),
    activation: str = typer.Option("relu", help="relu, tanh, gelu, silu, sigmoid, leaky_relu, elu."),
    init: str = typer.Option("default", help="default, kaiming, xavier, orthogonal."),
    optimizer: str = typer.Option("adam", help=f"A method: {', '.join(METHODS)}, or BASE+controller."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (peak LR with a schedule); the method's default if unset."),
    momentum: Optional[float] = typer.Option(None, help="Momentum (beta1 for Adam-likes); the method's default if unset."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay; the method's default if unset (0, AdamW 0.01)."),
    schedule: str = typer.Option("constant", help="constant, cosine, warmup_cosine, onecycle."),
    epochs: Optional[float] = typer.Option(10, help="Epoch budget."),
    steps: Optional[int] = typer.Option(None, help="Step budget (the smaller of the two budgets wins)."),
    batch_size: int = typer.Option(128, help="Batch size."),
    eval_every: Optional[int] = typer.Option(None, help="Also evaluate every N steps (always at each epoch end)."),
    target_acc: Optional[float] = typer.Option(None, help="Stop when validation accuracy reaches this fraction (e.g. 0.97)."),
    seed: int = typer.Option(0, help="Seed for the data split, weights and batch order."),
    n_train: Optional[int] = typer.Option(None, help="Subsample the training split (quick runs)."),
    extended: bool = typer.Option(False, help="Also log gradient cosine, curvature and noise scale."),
    out: Path = typer.Option(Path("runs/latest"), help="Run directory for trajectory.parquet and run.json."),
    overwrite: bool = typer.Option(False, help="Replace a run already in --out."),
    resume: bool = typer.Option(True, help="Keep the run at each epoch's end and continue an interrupted run of the same settings in --out from it (--no-resume: neither)."),
    device: str = options.DEVICE,
    data_dir: Optional[Path] = options.DATA_DIR,
    progress: bool = options.PROGRESS,
) -> None:
    """Train one model with the probe attached; writes OUT/trajectory.parquet and OUT/run.json."""
    from metalearner.tasks.models import ModelConfig
    from metalearner.tasks.task import TaskConfig
    from metalearner.train.run import CHECKPOINT, RunConfig, continuable, interrupted, resolve_device, train_run

    resolve_device(device)  # a missing GPU fails here, in one line

    cfg = RunConfig(
        task=TaskConfig(
            dataset=task,
            model=ModelConfig(family=model, depth=depth, width=width, activation=activation, init=init),
            batch_size=batch_size,
            seed=seed,
            n_train=n_train,
        ),
        optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, schedule=schedule,
        epochs=epochs, steps=steps, eval_every=eval_every, target_acc=target_acc, seed=seed, extended=extended,
        device=device,
    )  # fmt: skip
    t0 = time.perf_counter()
    if resume and not overwrite and continuable(out, cfg):
        typer.echo(f"continuing the interrupted run in {out} from its last epoch's end", err=True)
    elif resume and not overwrite and interrupted(out, cfg) and not (out / CHECKPOINT).exists():
        typer.echo(f"starting the interrupted run in {out} over (it kept no checkpoint to continue from)", err=True)
    with Progress(progress) as display:
        bar = display.bar(f"{task} {model}", info="loss {loss:.4f}  val acc {acc:.4f}", loss=float("nan"), acc=float("nan"))
        result = train_run(cfg, out, data_dir=str(data_dir) if data_dir else None, progress=bar, overwrite=overwrite, resume=resume)
    f = result.final
    status = "complete (target reached)" if result.status == "target_reached" else result.status  # run.json says "complete"
    parts = [status, f"{result.steps} steps ({result.epochs:.2f} epochs)"]
    if "diverged_at_step" in f:
        parts.append(f"non-finite loss at step {f['diverged_at_step']}")
    if "val_acc" in f:
        parts.append(f"val acc {f['val_acc']:.4f}")
    if "test_acc" in f:
        parts.append(f"test acc {f['test_acc']:.4f}")
    parts.append(f"{time.perf_counter() - t0:.0f}s -> {out}")
    typer.echo(", ".join(parts))


@app.command()
def inspect(
    run_dir: Path = typer.Argument(..., help="A run directory written by `metalearner train`."),
    plot: Optional[Path] = typer.Option(None, help="Also plot the curves to this PNG file."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarise a run: status, steps, final metrics, divergence; optionally plot its curves."""
    from metalearner.observe.store import read_run, read_trajectory, summarize
    from metalearner.report.paths import figure_path

    plot = figure_path(plot)  # before the work
    summary = summarize(run_dir)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        width = max(len(k) for k in summary)
        for k, v in summary.items():
            typer.echo(f"{k:<{width}}  {_fmt(v)}")
    if plot is not None:
        from metalearner.report.curves import plot_run

        plot_run(read_trajectory(run_dir, format="pandas"), read_run(run_dir), plot)
        typer.echo(f"plot written to {plot}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    dest: Path = typer.Argument(..., help="Output file: .csv or .npz."),
) -> None:
    """Export a run's trajectory to CSV or NPZ."""
    from metalearner.observe.store import export_trajectory

    typer.echo(f"wrote {export_trajectory(run_dir, dest)}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "-" if v is None else str(v)


def main() -> None:
    """Entry point: user errors print one line (no traceback) and exit with status 2.

    With ``standalone_mode=False`` click returns a command's ``typer.Exit`` code instead of
    exiting, so a non-zero return value is passed on as the process's exit status.
    """
    one_line_warnings()
    try:
        rc = app(standalone_mode=False)
    except MetalearnerError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        STDERR.print("interrupted")
        sys.exit(130)
    except Exception as e:
        if isinstance(e, OSError) and e.filename:  # a path given where it cannot be used (missing, read-only, a folder, ...)
            typer.echo(f"error: cannot use {e.filename}: {e.strerror.lower() if e.strerror else e}", err=True)
            sys.exit(2)
        if any(c.__name__ == "ClickException" for c in type(e).__mro__):  # usage errors (click's, or typer's vendored copy)
            e.show()
            sys.exit(e.exit_code)
        raise
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
        if rc == 130:  # typer returns Ctrl-C as this code
            STDERR.print("interrupted")
        sys.exit(rc)


if __name__ == "__main__":
    main()
