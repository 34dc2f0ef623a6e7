"""Plots of one run's curves (used by ``metalearner inspect --plot``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def smooth(values: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Bias-corrected exponential moving average, NaN-tolerant (what loss curves show)."""
    out = np.empty(len(values))
    m, w = 0.0, 0.0
    for i, v in enumerate(values):
        if np.isfinite(v):
            m = (1 - alpha) * m + alpha * v
            w = (1 - alpha) * w + alpha
        out[i] = m / w if w > 0 else np.nan
    return out


def accuracy_limits(values: np.ndarray, percentile: float = 2.0) -> tuple[float, float]:
    """y limits that zoom on where accuracies are: a low percentile of the finite values up
    to 1, each with a small margin, so a run that stays near 0.97 is not drawn flat at the top."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low = float(np.percentile(values, percentile))
    span = max(1.0 - low, 0.02)
    return max(0.0, low - 0.08 * span), 1.0 + 0.03 * span


def _constant(values: np.ndarray) -> float | None:
    """The value of a series that never changes (NaNs ignored), else None."""
    finite = values[np.isfinite(values)]
    if finite.size and np.allclose(finite, finite[0], rtol=1e-9, atol=0.0):
        return float(finite[0])
    return None


def run_figure(df: pd.DataFrame, meta: dict[str, Any]) -> Any:
    """A matplotlib figure of one run: loss, accuracy, gradient/update norms and (when it
    varies) the learning rate, every panel against the step. A constant learning rate gets a
    line in the title instead of a panel of its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = df["step"].to_numpy()
    evals = df[df["val_acc"].notna()]
    lr = df["lr"].to_numpy(dtype=float) if "lr" in df else np.full(len(df), np.nan)
    constant_lr = _constant(lr)
    panels = 3 if constant_lr is not None or not np.isfinite(lr).any() else 4
    if panels == 4:
        fig, grid = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
        axes = list(grid.flat)
    else:
        fig, grid = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
        axes = list(grid)

    ax = axes[0]
    ax.plot(steps, df["loss"], color="C0", alpha=0.25, lw=0.6, label="train (batch)")
    ax.plot(steps, smooth(df["loss"].to_numpy()), color="C0", label="train (EMA)")
    ax.plot(evals["step"], evals["val_loss"], "o-", color="C1", ms=3, label="validation")
    ax.set_yscale("log")
    ax.set_title("loss")
    ax.set_ylabel("cross-entropy")

    ax = axes[1]
    train_acc = smooth(df["train_acc"].to_numpy())
    ax.plot(steps, train_acc, color="C0", label="train (EMA)")
    ax.plot(evals["step"], evals["val_acc"], "o-", color="C1", ms=3, label="validation")
    ax.set_ylim(*accuracy_limits(np.concatenate([train_acc, evals["val_acc"].to_numpy(dtype=float)])))
    ax.set_title("accuracy")

    ax = axes[2]
    ax.plot(steps, df["grad_norm"], color="C2", lw=0.6, label="gradient norm")
    ax.plot(steps, df["update_ratio"], color="C3", lw=0.6, label="update / weight")
    ax.set_yscale("log")
    ax.set_title("gradient norm and update ratio")

    if panels == 4:
        ax = axes[3]
        ax.plot(steps, lr, color="C4", label="learning rate")
        ax.set_title("learning rate")
    for a in axes:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
        a.legend(fontsize="small")
    arch = meta.get("architecture") or {}
    title = (
        f"{meta.get('run_id', '')}  {meta.get('task', '')}  {arch.get('family', '')} depth {arch.get('depth', '?')} "
        f"width {arch.get('width', '?')} {arch.get('activation', '')}  {meta.get('optimizer', '')}  [{meta.get('status')}]"
    )
    if constant_lr is not None:
        title += f"\nlearning rate constant at {constant_lr:.3g}"
    fig.suptitle(title)
    return fig


def plot_run(df: pd.DataFrame, meta: dict[str, Any], path: str | Path) -> Path:
    """:func:`run_figure` saved as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = run_figure(df, meta)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
