"""Window smoothers of the log loss, shared by the loss baselines and the predictors' inputs.

For the log losses ``x_{..t}`` of a run (the last ``EMA_WINDOW`` steps, edge-padded at the
start of the run, exactly as :func:`metalearner.mirror.dataset.windows` pads them):

``ema(x, α)``        ``m_t`` with ``m_i = α x_i + (1−α) m_{i−1}``, started at the window's first value
``linear(x, h)``     the least-squares line through the window, evaluated ``h`` steps after its end

:func:`loss_trend_features` gives every step of a run these smoothers for the whole tuning
grid of the baselines (``loss_ema_<α>`` for α in :data:`EMA_GRID`; the line through the last
``W`` steps for ``W`` in :data:`LINEAR_WINDOWS` as its value at ``t``, ``loss_lin_<W>``, and
its slope per step, ``loss_slope_<W>``, so that ``loss_lin_W + h · loss_slope_W`` *is* the
linear-trend baseline ``h`` steps ahead). A predictor that sees them sees every baseline's
forecast, and one anchored on a baseline predicts the correction to it (zero output: the
baseline itself).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

EMA_GRID = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
LINEAR_WINDOWS = (8, 16, 32, 64, 128)
EMA_WINDOW = 256  # long enough that the EMA's start no longer matters for α >= 0.02


def ema(x: np.ndarray, alpha: float) -> np.ndarray:
    """EMA over the window's last axis, started at its first value."""
    m = x[:, 0].copy()
    for i in range(1, x.shape[1]):
        m = alpha * x[:, i] + (1 - alpha) * m
    return m


def slope(x: np.ndarray) -> np.ndarray:
    """Least-squares slope (per step) through each window."""
    H = x.shape[1]
    s = np.arange(H, dtype=np.float64) - (H - 1) / 2
    return (x - x.mean(1, keepdims=True)) @ s / (s @ s)


def linear(x: np.ndarray, ahead: float) -> np.ndarray:
    """Least-squares line through each window (positions ``0..H−1``), at ``H−1+ahead``."""
    return x.mean(1) + slope(x) * ((x.shape[1] - 1) / 2 + ahead)


def ema_name(alpha: float) -> str:
    return f"loss_ema_{alpha:g}"


def lin_name(window: int) -> str:
    return f"loss_lin_{window}"


def slope_name(window: int) -> str:
    return f"loss_slope_{window}"


LOSS_LEVELS = tuple([ema_name(a) for a in EMA_GRID] + [lin_name(w) for w in LINEAR_WINDOWS])  # in log-loss units
TREND_FEATURES = (*LOSS_LEVELS, *(slope_name(w) for w in LINEAR_WINDOWS))


def clean(log_loss: np.ndarray) -> np.ndarray:
    """The log losses as :func:`~metalearner.mirror.dataset.windows` hands them to the
    baselines (float32, non-finite values replaced, clipped), back in float64."""
    x = np.nan_to_num(np.asarray(log_loss, dtype=np.float32), nan=0.0, posinf=30.0, neginf=-30.0)
    return np.clip(x, -1e4, 1e4).astype(np.float64)


def loss_trend_features(log_loss: np.ndarray) -> dict[str, np.ndarray]:
    """Every step's smoothers (:data:`TREND_FEATURES`) of *one* run's log losses, causal:
    step ``t`` sees ``x_{..t}`` only."""
    x = clean(log_loss)
    out: dict[str, np.ndarray] = {}
    if not len(x):
        return {name: np.zeros(0) for name in TREND_FEATURES}
    win = sliding_window_view(np.r_[np.full(EMA_WINDOW - 1, x[0]), x], EMA_WINDOW)
    for a in EMA_GRID:
        out[ema_name(a)] = ema(win, a)
    for w in LINEAR_WINDOWS:
        out[lin_name(w)] = linear(win[:, -w:], 0.0)
        out[slope_name(w)] = slope(win[:, -w:])
    return {name: out[name] for name in TREND_FEATURES}
