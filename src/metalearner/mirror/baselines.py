"""Honest baselines, computed on exactly the rows a meta-model is scored on.

For the log losses ``x_{..t}`` of a run and a target centred ``h`` steps ahead:

``persistence``  ``x_t``
``ema``          ``m_t`` with ``m_i = α x_i + (1−α) m_{i−1}`` over the last 256 steps
``linear``       least-squares line through the last ``W`` steps, evaluated at ``t + h``

α and ``W`` are tuned on training rows (:func:`tune_loss_baselines`), so no baseline is
handicapped by an arbitrary setting.

For run-level accuracy (``final_acc``): the learning-curve extrapolations of
:mod:`metalearner.mirror.curves` (persistence, linear, power law, exponential).
``lr_log_ratio`` has ``zero`` (keep the learning rate) and ``train_mean``.
"""

from __future__ import annotations

import numpy as np

from metalearner.mirror.curves import CURVE_COLUMNS
from metalearner.mirror.dataset import Dataset, windows
from metalearner.mirror.trends import EMA_GRID, EMA_WINDOW, LINEAR_WINDOWS, ema, linear

LOSS_TARGETS = ("next_loss", "smooth_loss", "ahead_loss")
ACC_TARGETS = ("final_acc",)
__all__ = ["EMA_GRID", "EMA_WINDOW", "LINEAR_WINDOWS", "ema", "linear", "persistence", "baselines", "tune_loss_baselines"]


def horizon_of(target: str, ds: Dataset) -> float:
    """How many steps ahead of ``t`` a loss target is centred."""
    k, a = ds.config.k, ds.config.ahead
    return {"next_loss": 1.0, "smooth_loss": (k + 1) / 2, "ahead_loss": max(a, k) - (k - 1) / 2}[target]


def persistence(x: np.ndarray) -> np.ndarray:
    return x[:, -1]


def _loss_windows(ds: Dataset, index: np.ndarray, window: int) -> np.ndarray:
    return windows(ds.rows, ["log_loss"], index, window)[..., 0].astype(np.float64)


def tune_loss_baselines(ds: Dataset, index: np.ndarray, target: str) -> dict[str, float]:
    """The EMA's α and the linear trend's window with the least MAE on (training) rows
    ``index``, so that no baseline is handicapped by an arbitrary setting."""
    y = ds.rows[target].to_numpy(float)[index]
    x = _loss_windows(ds, index, EMA_WINDOW)
    alpha = min(EMA_GRID, key=lambda a: float(np.mean(np.abs(ema(x, a) - y))))
    h = horizon_of(target, ds)
    win = min(LINEAR_WINDOWS, key=lambda w: float(np.mean(np.abs(linear(x[:, -w:], h) - y))))
    return {"alpha": alpha, "window": win}


def loss_baselines(ds: Dataset, index: np.ndarray, target: str, alpha: float = 0.1, window: int = 32) -> dict[str, np.ndarray]:
    x = _loss_windows(ds, index, EMA_WINDOW)
    return {"persistence": persistence(x), "ema": ema(x, alpha), "linear": linear(x[:, -window:], horizon_of(target, ds))}


def accuracy_baselines(ds: Dataset, index: np.ndarray) -> dict[str, np.ndarray]:
    """The curve extrapolations of :mod:`metalearner.mirror.curves`, as the dataset stored
    them for each row (from the run's evaluations up to that row)."""
    rows = ds.rows.iloc[index]
    return {name: rows[col].to_numpy(float) for name, col in CURVE_COLUMNS.items()}


def baselines(ds: Dataset, index: np.ndarray, target: str, *, window: int = 32, alpha: float = 0.1,
              train_mean: float = 0.0) -> dict[str, np.ndarray]:  # fmt: skip
    """Every baseline that applies to ``target``, on the rows ``index`` (loss targets: EMA
    with ``alpha``, linear trend over the last ``window`` steps)."""
    if target in LOSS_TARGETS:
        return loss_baselines(ds, index, target, alpha, window)
    if target in ACC_TARGETS:
        return accuracy_baselines(ds, index)
    rows = ds.rows.iloc[index]
    if target == "val_acc_next":
        return {"persistence": rows["val_acc_last"].to_numpy(float)}
    if target == "val_loss_next":
        return {"persistence": rows["log_val_loss_last"].to_numpy(float)}
    if target == "lr_log_ratio":
        return {"zero": np.zeros(len(index)), "train_mean": np.full(len(index), train_mean)}
    return {"train_mean": np.full(len(index), train_mean)}
