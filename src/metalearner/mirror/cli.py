"""``metalearner dataset build`` and ``metalearner mirror train|eval`` (thin: parse, call, print)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from metalearner.errors import ConfigError, DataError

dataset_app = typer.Typer(no_args_is_help=True, help="Learning data from a zoo's trajectories.")
mirror_app = typer.Typer(no_args_is_help=True, help="Meta-models that predict training dynamics.")


def _split(ds, by: str, seed: int, holdout: Optional[str]) -> dict[str, str]:
    from metalearner.mirror.dataset import split_runs

    return split_runs(ds.runs, by, seed=seed, holdout=holdout.split(",") if holdout else None)


@dataset_app.command("build")
def build(
    zoo_dir: Path = typer.Argument(..., help="A zoo directory (written by `metalearner zoo --spec ...`)."),
    out: Path = typer.Option(..., help="Output folder: rows.parquet + dataset.json."),
    k: int = typer.Option(20, help="Width of the smoothed-loss target (mean of the next k log losses)."),
    ahead: int = typer.Option(50, help="Horizon of the ahead_loss target, in steps."),
    acc_threshold: float = typer.Option(0.9, help="Accuracy of the steps_to_acc target."),
    seed: int = typer.Option(0, help="Seed recorded with the dataset (splits take their own)."),
) -> None:
    """Rows of features and targets for every finished run of ZOO_DIR."""
    from metalearner.mirror.dataset import DatasetConfig, build_dataset

    ds = build_dataset(zoo_dir, out, DatasetConfig(k=k, ahead=ahead, acc_threshold=acc_threshold, seed=seed))
    typer.echo(f"{len(ds.rows)} rows of {len(ds.runs)} runs, {len(ds.features)} features -> {out}")


@mirror_app.command("train")
def train(
    dataset: Path = typer.Argument(..., help="A dataset folder (from `metalearner dataset build`)."),
    out: Path = typer.Option(..., help="Output folder: model.safetensors + config.json + history.json."),
    target: str = typer.Option("smooth_loss", help="Comma-separated targets."),
    kind: str = typer.Option("gru", help="mlp, gru or transformer."),
    split: str = typer.Option("arch", help="Grouped split: run, arch, task or optimizer."),
    holdout: Optional[str] = typer.Option(None, help="Comma-separated test groups (else a seeded quarter)."),
    window: int = typer.Option(32, help="Window length H."),
    hidden: int = typer.Option(32, help="Hidden width."),
    layers: int = typer.Option(2, help="Layers (MLP hidden layers, GRU layers, transformer blocks)."),
    members: int = typer.Option(1, help="Train this many seeds (seed, seed+1, ...) and save their median as an ensemble."),
    epochs: int = typer.Option(20, help="Maximum epochs (early stopping on the validation runs)."),
    lr: float = typer.Option(2e-3, help="Learning rate of the predictor's AdamW."),
    stride: int = typer.Option(3, help="Use every stride-th step as an example."),
    quantiles: Optional[str] = typer.Option(None, help="Comma-separated quantiles, e.g. 0.1,0.5,0.9."),
    seed: int = typer.Option(0, help="Seed of the split and the training."),
) -> None:
    """Train a predictor on the train runs of a grouped split."""
    from metalearner.mirror.dataset import TARGETS, Dataset
    from metalearner.mirror.models import TrainConfig, save_predictor
    from metalearner.mirror.pipeline import fit_ensemble

    ds = Dataset.load(dataset)
    sp = _split(ds, split, seed, holdout)
    targets = target.split(",")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ConfigError(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    try:
        qs = [float(q) for q in quantiles.split(",")] if quantiles else None
    except ValueError:
        raise ConfigError(f"--quantiles must be numbers in (0, 1) separated by commas, got {quantiles!r}") from None
    if qs and not all(0 < q < 1 for q in qs):
        raise ConfigError(f"--quantiles must be numbers in (0, 1), got {quantiles!r}")
    if members < 1:
        raise ConfigError(f"--members must be >= 1, got {members}")
    if not lr > 0:
        raise ConfigError(f"--lr must be > 0, got {lr}")
    model, histories = fit_ensemble(ds, targets, sp, members=members, kind=kind, window=window, hidden=hidden, layers=layers,
                                    quantiles=qs, stride=stride, train=TrainConfig(epochs=epochs, lr=lr, seed=seed))  # fmt: skip
    if members == 1:
        save_predictor(model.models[0], out, histories[0])
    else:
        save_predictor(model, out, histories)
    (out / "split.json").write_text(json.dumps({"by": split, "seed": seed, "split": sp}, indent=1))
    epochs_run = ", ".join(str(len(h)) for h in histories)
    typer.echo(f"{kind} x{members} trained ({epochs_run} epochs) -> {out}")


@mirror_app.command("eval")
def evaluate(
    model_dir: Path = typer.Argument(..., help="A predictor folder (from `metalearner mirror train`)."),
    dataset: Path = typer.Argument(..., help="The dataset it was trained on."),
    side: str = typer.Option("test", help="Split side to score: test or val."),
    at_fraction: Optional[float] = typer.Option(None, help="Score each run once, at this fraction of its budget."),
    plots: Optional[Path] = typer.Option(None, help="Folder for the training-curve and held-out-run figures."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
) -> None:
    """MAE, RMSE, R^2 of the model and every baseline on the same rows; ratio to the best
    baseline with a run-bootstrap 95% CI."""
    from metalearner.mirror.dataset import Dataset
    from metalearner.mirror.evaluate import plot_history
    from metalearner.mirror.models import load_predictor, read_history
    from metalearner.mirror.pipeline import score

    if side not in ("test", "val"):
        raise ConfigError(f"--side must be test or val, got {side!r}")
    model = load_predictor(model_dir)
    ds = Dataset.load(dataset)
    missing = [f for f in model.cfg.features if f not in ds.rows.columns]
    if missing:
        raise DataError(f"{dataset} lacks the model's features ({', '.join(missing[:5])}...): evaluate it on the dataset it was trained on")
    if not (model_dir / "split.json").exists():
        raise DataError(f"{model_dir} has no split.json (train it with `metalearner mirror train`)")
    sp = json.loads((model_dir / "split.json").read_text())["split"]
    reports = [score(ds, model, t, sp, side, at_fraction=at_fraction) for t in model.cfg.targets]
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        plot_history(read_history(model_dir), plots / "training.png")
        from metalearner.mirror.pipeline import plot_heldout

        plot_heldout(ds, model, model.cfg.targets[0], sp, plots / "heldout.png", side=side)
    if as_json:
        typer.echo(json.dumps(reports, indent=2))
        return
    for r in reports:
        ci = r["ratio_ci95"]
        verdict = "beats" if r["beats_best_baseline"] else "does not beat"
        typer.echo(f"{r['target']} ({r['side']}, {r['n_runs']} runs, {r['model']['n']} rows): model MAE {r['model']['mae']:.4g}, "
                   f"best baseline {r['best_baseline']} {r['baselines'][r['best_baseline']]['mae']:.4g}, ratio {r['ratio']:.3f} "
                   f"[{ci[0]:.3f}, {ci[1]:.3f}]: the model {verdict} the best baseline")  # fmt: skip
