"""Glue: train a predictor on a dataset split and score it beside the baselines.

::

    ds = build_dataset("zoo/")
    split = split_runs(ds.runs, "arch", seed=0)
    model, history = fit_on_dataset(ds, ["smooth_loss"], split, kind="gru")
    report = score(ds, model, "smooth_loss", split, "test")   # model vs baselines, ratio, CI
    ensemble, histories = fit_ensemble(ds, ["smooth_loss"], split, members=5, kind="mlp")  # median of 5 seeds
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from metalearner.errors import DataError
from metalearner.mirror.baselines import LOSS_TARGETS, baselines, tune_loss_baselines
from metalearner.mirror.dataset import Dataset, examples, windows
from metalearner.mirror.evaluate import NO_ROWS, compare
from metalearner.mirror.models import Ensemble, Predictor, PredictorConfig, TrainConfig, train_predictor
from metalearner.mirror.trends import LOSS_LEVELS

# what a target is learned as a residual over (its persistence forecast)
ANCHORS = {"next_loss": "log_loss_ema", "smooth_loss": "log_loss_ema", "ahead_loss": "log_loss_ema", "val_loss_next": "log_val_loss_last",
           "val_acc_next": "val_acc_last", "final_acc": "val_acc_last"}  # fmt: skip
# targets whose anchor is chosen on the training side: the candidate with the least MAE (loss
# targets: a baseline's smoother, so that the network learns the correction to the best one)
_LOSS_ANCHORS = ("log_loss_ema", *LOSS_LEVELS)
ANCHOR_CHOICES = {"final_acc": ("val_acc_last", "acc_fit_linear", "acc_fit_power", "acc_fit_exp"),
                  **{t: _LOSS_ANCHORS for t in LOSS_TARGETS}}  # fmt: skip


def choose_anchor(ds: Dataset, target: str, idx: np.ndarray, features: list[str] | None = None) -> str:
    """The anchor of ``target``: fixed (:data:`ANCHORS`), or the best on the rows ``idx``
    among the candidates of :data:`ANCHOR_CHOICES` that are in ``features`` (and the rows)."""
    cands = [c for c in ANCHOR_CHOICES.get(target, ()) if c in ds.rows.columns and (features is None or c in features)]
    if not cands or not len(idx):
        return ANCHORS[target]
    rows = ds.rows.iloc[idx]
    y = rows[target].to_numpy(float)
    mae = {c: float(np.nanmean(np.abs(rows[c].to_numpy(float) - y))) for c in cands}
    return min(mae, key=lambda c: mae[c] if np.isfinite(mae[c]) else np.inf)


def select(ds: Dataset, targets: list[str], split: dict[str, str], side: str, *, stride: int = 1,
           fraction: tuple[float, float] = (0.0, 1.0), at_fraction: float | None = None) -> np.ndarray:  # fmt: skip
    return examples(ds, targets, split, side, stride=stride, fraction=fraction, at_fraction=at_fraction)


def fit_on_dataset(
    ds: Dataset, targets: list[str], split: dict[str, str], *, kind: str = "gru", window: int = 32, hidden: int = 64,
    layers: int = 2, quantiles: list[float] | None = None, stride: int = 1, fraction: tuple[float, float] = (0.0, 1.0),
    train: TrainConfig = TrainConfig(), features: list[str] | None = None,
) -> tuple[Predictor, list[dict[str, float]]]:
    """Train a ``kind`` predictor of ``targets`` on the ``train`` side of ``split``, early
    stopping on its ``val`` side (every ``stride``-th step with ``fraction`` in range).
    ``features``: a subset of the columns (default: ``ds.features``, or, when only loss
    targets are predicted, ``ds.loss_features``, which adds every loss baseline's smoother).

    A loss target is learned as the residual over the baseline smoother with the least
    training MAE (its anchor), and the loss-level features are seen relative to that
    anchor's current value: the window's shape and the baselines' disagreement, never the
    run's absolute loss scale; a zero output is the baseline."""
    only_loss = all(t in LOSS_TARGETS for t in targets)
    feats = list(features or (ds.loss_features if only_loss and all(c in ds.rows for c in LOSS_LEVELS) else ds.features))
    tr = select(ds, list(targets), split, "train", stride=stride, fraction=fraction)
    anchors = {t: choose_anchor(ds, t, tr, feats) for t in targets if t in ANCHORS}
    cfg = PredictorConfig(kind=kind, features=feats, targets=list(targets), window=window, hidden=hidden, layers=layers,
                          quantiles=list(quantiles or []), anchors=anchors)  # fmt: skip
    loss_anchors = [anchors[t] for t in targets if t in LOSS_TARGETS]
    if loss_anchors:
        ref = loss_anchors[0] if only_loss else "log_loss_ema"  # one reference level for every loss target
        cfg.relative = [f for f in ("log_loss", "log_loss_ema", *LOSS_LEVELS) if f in feats]
        cfg.relative_to = ref if ref in feats else "log_loss_ema"
    data = {}
    for side in ("train", "val"):
        idx = select(ds, list(targets), split, side, stride=stride, fraction=fraction)
        data[side] = (windows(ds.rows, feats, idx, window), ds.rows[list(targets)].to_numpy(np.float32)[idx])
    return train_predictor(cfg, data["train"], data["val"], train)


def fit_ensemble(
    ds: Dataset, targets: list[str], split: dict[str, str], *, members: int = 5, train: TrainConfig = TrainConfig(), **kw: Any,
) -> tuple[Ensemble, list[list[dict[str, float]]]]:
    """``members`` predictors as :func:`fit_on_dataset` trains them (``kw``: its keywords),
    differing only in their seed (``train.seed``, ``train.seed + 1``, ...), as one
    :class:`~metalearner.mirror.models.Ensemble` (their median): the part of a model's error
    that is the luck of its initialisation and minibatch order averages out. Returns the
    ensemble and each member's training curve."""
    fits = [fit_on_dataset(ds, targets, split, train=replace(train, seed=train.seed + i), **kw) for i in range(members)]
    return Ensemble([m for m, _ in fits]), [h for _, h in fits]


def score(
    ds: Dataset, model: Predictor | Ensemble, target: str, split: dict[str, str], side: str = "test", *, stride: int = 1,
    fraction: tuple[float, float] = (0.0, 1.0), at_fraction: float | None = None, seed: int = 0, n_boot: int = 1000,
) -> dict[str, Any]:
    """The model beside every baseline of ``target`` on the same rows of ``side``; the EMA
    and linear baselines' settings are tuned on the ``train`` side first."""
    idx = select(ds, [target], split, side, stride=stride, fraction=fraction, at_fraction=at_fraction)
    if not len(idx):  # before the baselines' tuning, which would warn about empty means first
        raise DataError(NO_ROWS)
    y = ds.rows[target].to_numpy(float)[idx]
    j = model.cfg.targets.index(target)
    pred = model.predict(windows(ds.rows, model.cfg.features, idx, model.cfg.window))[:, j]
    tuned: dict[str, float] = {}
    tr = select(ds, [target], split, "train", stride=max(stride, 7), fraction=fraction)
    if target in LOSS_TARGETS:
        tuned = tune_loss_baselines(ds, tr, target)
    elif len(tr):
        tuned = {"train_mean": float(np.mean(ds.rows[target].to_numpy(float)[tr]))}
    base = baselines(ds, idx, target, **tuned)
    out = compare(y, pred, base, ds.rows["run_id"].to_numpy()[idx], seed=seed, n_boot=n_boot)
    out["baseline_settings"] = tuned
    out.update(target=target, side=side)
    return out


__all__ = ["ANCHORS", "choose_anchor", "fit_ensemble", "fit_on_dataset", "score", "select"]


def plot_heldout(ds: Dataset, model: Predictor | Ensemble, target: str, split: dict[str, str], path: Any, *, side: str = "test",
                 n_runs: int = 3, seed: int = 0) -> Any:  # fmt: skip
    """Figure: ``n_runs`` held-out runs, the true target along each with the model's
    prediction and the best baseline over it (and the per-batch log loss for loss targets)."""
    from metalearner.mirror.evaluate import plot_trajectories

    idx = select(ds, [target], split, side)
    rows = ds.rows
    runs = sorted(set(rows["run_id"].to_numpy()[idx]))
    pick = [runs[i] for i in np.random.default_rng(seed).permutation(len(runs))[:n_runs]]
    report = score(ds, model, target, split, side, n_boot=10)
    tuned = report["baseline_settings"]
    j = model.cfg.targets.index(target)
    curves = []
    for rid in pick:
        ri = idx[rows["run_id"].to_numpy()[idx] == rid]
        c = {"run_id": rid, "step": rows["step"].to_numpy()[ri], "true": rows[target].to_numpy(float)[ri],
             "pred": model.predict(windows(rows, model.cfg.features, ri, model.cfg.window))[:, j],
             "baseline": baselines(ds, ri, target, **tuned)[report["best_baseline"]], "baseline_name": report["best_baseline"]}  # fmt: skip
        if target in LOSS_TARGETS:
            c["raw_step"], c["raw"] = c["step"], rows["log_loss"].to_numpy(float)[ri]
        curves.append(c)
    ylabel = "log loss" if target in LOSS_TARGETS else target
    return plot_trajectories(curves, path, ylabel=ylabel, title=f"{target}: held-out runs ({side})")
