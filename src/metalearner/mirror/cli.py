"""``metalearner dataset build`` and ``metalearner mirror train|eval`` (thin: check, parse, call,
print; results on stdout, progress on stderr)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import typer

from metalearner import options
from metalearner.errors import ConfigError, DataError

dataset_app = typer.Typer(no_args_is_help=True, help="Learning data from a zoo's trajectories.")
mirror_app = typer.Typer(no_args_is_help=True, help="Meta-models that predict training dynamics.")


def _check(option: str, value: Any, ok: bool, rule: str) -> None:
    """A one-line :class:`ConfigError` ``OPTION must be RULE, got VALUE`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{option} must be {rule}, got {value}")


class _MemberEpochs:
    """fit's progress protocol (``update(epoch, epochs, **fields)``) over the ``members``
    consecutive fits of an ensemble: one bar of members x epochs."""

    def __init__(self, bar: Any, members: int) -> None:
        self.bar, self.members, self.done = bar, members, 0

    def update(self, epoch: int, epochs: int, **fields: Any) -> None:
        self.bar.update(self.done * epochs + epoch, self.members * epochs, member=min(self.done + 1, self.members), **fields)
        if epoch >= epochs:
            self.done += 1


def _split(ds, by: str, seed: int, holdout: Optional[str]) -> dict[str, str]:
    from metalearner.mirror.dataset import split_runs

    return split_runs(ds.runs, by, seed=seed, holdout=holdout.split(",") if holdout else None)


@dataset_app.command("build")
def build(
    zoo_dir: Path = typer.Argument(..., help="A zoo directory (written by `metalearner zoo --spec ...`)."),
    out: Path = typer.Option(..., help="Output folder: rows.parquet + dataset.json."),
    k: int = typer.Option(20, help="Width of the smoothed-loss target (mean of the next k log losses, >= 1)."),
    ahead: int = typer.Option(50, help="Horizon of the ahead_loss target, in steps (>= k)."),
    acc_threshold: float = typer.Option(0.9, help="Accuracy of the steps_to_acc target, in (0, 1]."),
    seed: int = typer.Option(0, help="Seed recorded with the dataset (splits take their own)."),
    progress: bool = options.PROGRESS,
) -> None:
    """Rows of features and targets for every finished run of ZOO_DIR."""
    from metalearner.mirror.dataset import DatasetConfig, build_dataset
    from metalearner.progress import Progress

    _check("--k", k, k >= 1, ">= 1")
    _check("--ahead", ahead, ahead >= k, f">= --k ({k})")
    _check("--acc-threshold", acc_threshold, 0 < acc_threshold <= 1, "an accuracy in (0, 1]")
    with Progress(progress) as display:
        bar = display.bar("dataset runs")
        ds = build_dataset(zoo_dir, out, DatasetConfig(k=k, ahead=ahead, acc_threshold=acc_threshold, seed=seed), progress=bar)
    typer.echo(f"{len(ds.rows)} rows of {len(ds.runs)} runs, {len(ds.features)} features -> {out}")
    empty = [t for t in ("smooth_loss", "ahead_loss") if not ds.rows[t].notna().any()]
    if empty:  # the other targets still serve, so not an error
        typer.echo(f"warning: no row has a {' or '.join(empty)} target: no run goes on for more than --ahead ({ahead}) steps "
                   f"(the longest has {int(ds.rows['step'].max()) + 1}); lower --ahead and --k for those targets", err=True)


@mirror_app.command("train")
def train(
    dataset: Path = typer.Argument(..., help="A dataset folder (from `metalearner dataset build`)."),
    out: Path = typer.Option(..., help="Output folder: model.safetensors + config.json + history.json + split.json "
                             "(a predictor already there is replaced)."),
    target: str = typer.Option("smooth_loss", help="Comma-separated targets."),
    kind: str = typer.Option("gru", help="mlp, gru or transformer."),
    split: str = typer.Option("arch", help="Grouped split: run, arch, task or optimizer."),
    holdout: Optional[str] = typer.Option(None, help="Comma-separated test groups (else a seeded quarter)."),
    window: int = typer.Option(32, help="Window length H (>= 1)."),
    hidden: int = typer.Option(32, help="Hidden width (>= 1; a multiple of 4 for a transformer)."),
    layers: int = typer.Option(2, help="Layers (MLP hidden layers, GRU layers, transformer blocks; >= 1)."),
    members: int = typer.Option(1, help="Train this many seeds (seed, seed+1, ...) and save their median as an ensemble."),
    epochs: int = typer.Option(20, help="Maximum epochs (>= 1; early stopping on the validation runs)."),
    lr: float = typer.Option(2e-3, help="Learning rate of the predictor's AdamW."),
    stride: int = typer.Option(3, help="Use every stride-th step as an example (>= 1)."),
    quantiles: Optional[str] = typer.Option(None, help="Comma-separated quantiles, e.g. 0.1,0.5,0.9."),
    seed: int = typer.Option(0, help="Seed of the split and the training."),
    progress: bool = options.PROGRESS,
) -> None:
    """Train a predictor on the train runs of a grouped split (replacing any predictor in --out)."""
    from metalearner.mirror.dataset import SPLITS, TARGETS, Dataset
    from metalearner.mirror.models import KINDS, PredictorConfig, TrainConfig, save_predictor
    from metalearner.mirror.pipeline import fit_ensemble
    from metalearner.progress import Progress

    targets = target.split(",")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ConfigError(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    _check("--kind", repr(kind), kind in KINDS, f"one of {', '.join(KINDS)}")
    _check("--split", repr(split), split in SPLITS, f"one of {', '.join(SPLITS)}")
    try:
        qs = [float(q) for q in quantiles.split(",")] if quantiles else None
    except ValueError:
        raise ConfigError(f"--quantiles must be numbers in (0, 1) separated by commas, got {quantiles!r}") from None
    _check("--quantiles", repr(quantiles), not qs or all(0 < q < 1 for q in qs), "numbers in (0, 1)")
    for option, value in (("--window", window), ("--hidden", hidden), ("--layers", layers), ("--members", members),
                          ("--epochs", epochs), ("--stride", stride)):  # fmt: skip
        _check(option, value, value >= 1, ">= 1")
    heads = PredictorConfig.heads
    _check("--hidden", hidden, kind != "transformer" or hidden % heads == 0,
           f"a multiple of {heads} for a transformer (its attention heads)")  # fmt: skip
    _check("--lr", lr, lr > 0, "> 0")
    ds = Dataset.load(dataset)
    sp = _split(ds, split, seed, holdout)
    with Progress(progress) as display:
        info = ("member {member}  " if members > 1 else "") + "loss {loss:.4f}  val {val:.4f}"
        bar = display.bar(f"{kind} x{members}", info=info, member=1, loss=math.nan, val=math.nan)
        tc = TrainConfig(epochs=epochs, lr=lr, seed=seed, progress=_MemberEpochs(bar, members))
        model, histories = fit_ensemble(ds, targets, sp, members=members, kind=kind, window=window, hidden=hidden, layers=layers,
                                        quantiles=qs, stride=stride, train=tc)  # fmt: skip
    split_info = {"by": split, "seed": seed, "split": sp}
    if members == 1:
        save_predictor(model.models[0], out, histories[0], split=split_info)
    else:
        save_predictor(model, out, histories, split=split_info)
    epochs_run = ", ".join(str(len(h)) for h in histories)
    typer.echo(f"{kind} x{members} trained ({epochs_run} epochs) -> {out}")


@mirror_app.command("eval")
def evaluate(
    model_dir: Path = typer.Argument(..., help="A predictor folder (from `metalearner mirror train`)."),
    dataset: Path = typer.Argument(..., help="The dataset it was trained on."),
    side: str = typer.Option("test", help="Split side to score: test or val."),
    at_fraction: Optional[float] = typer.Option(None, help="Score each run once, at this fraction of its budget, in (0, 1]."),
    plots: Optional[Path] = typer.Option(None, help="Folder for the training-curve and held-out-run figures."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    progress: bool = options.PROGRESS,
) -> None:
    """MAE, RMSE, R^2 of the model and every baseline on the same rows; ratio to the best
    baseline with a run-bootstrap 95% CI."""
    from metalearner.atomic import read_json, writable_folder
    from metalearner.mirror.dataset import Dataset
    from metalearner.mirror.evaluate import plot_history
    from metalearner.mirror.models import SPLIT_JSON, load_predictor, read_history
    from metalearner.mirror.pipeline import plot_heldout, score
    from metalearner.progress import Progress

    _check("--side", repr(side), side in ("test", "val"), "test or val")
    _check("--at-fraction", at_fraction, at_fraction is None or 0 < at_fraction <= 1, "a fraction of the budget in (0, 1]")
    if plots is not None:
        writable_folder(plots)
    model = load_predictor(model_dir)
    ds = Dataset.load(dataset)
    missing = [f for f in model.cfg.features if f not in ds.rows.columns]
    if missing:
        raise DataError(f"{dataset} lacks the model's features ({', '.join(missing[:5])}...): evaluate it on the dataset it was trained on")
    if not (model_dir / SPLIT_JSON).exists():
        raise DataError(f"{model_dir} has no {SPLIT_JSON} (train it with `metalearner mirror train`)")
    meta = read_json(model_dir / SPLIT_JSON)
    sp = meta.get("split") if isinstance(meta, dict) else None
    if not isinstance(sp, dict):
        raise DataError(f"{model_dir / SPLIT_JSON} has no split (train it again with `metalearner mirror train`)")
    targets = model.cfg.targets
    with Progress(progress) as display:
        bar = display.bar("eval", total=len(targets) + (2 if plots is not None else 0), info="{what}", what="")
        reports = []
        for t in targets:
            bar.update(what=f"scoring {t}")
            reports.append(score(ds, model, t, sp, side, at_fraction=at_fraction))
            bar.advance()
        if plots is not None:
            bar.update(what="training curve")
            plot_history(read_history(model_dir), plots / "training.png")
            bar.advance(what="held-out runs")
            plot_heldout(ds, model, targets[0], sp, plots / "heldout.png", side=side)
            bar.advance(what="")
    if as_json:
        typer.echo(json.dumps(reports, indent=2))
        return
    for r in reports:
        ci = r["ratio_ci95"]
        verdict = "beats" if r["beats_best_baseline"] else "does not beat"
        typer.echo(f"{r['target']} ({r['side']}, {r['n_runs']} runs, {r['model']['n']} rows): model MAE {r['model']['mae']:.4g}, "
                   f"best baseline {r['best_baseline']} {r['baselines'][r['best_baseline']]['mae']:.4g}, ratio {r['ratio']:.3f} "
                   f"[{ci[0]:.3f}, {ci[1]:.3f}]: the model {verdict} the best baseline")  # fmt: skip
