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


def plot_run(df: pd.DataFrame, meta: dict[str, Any], path: str | Path) -> Path:
    """Four panels: loss, accuracy, gradient/update norms, learning rate; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = df["step"].to_numpy()
    evals = df[df["val_acc"].notna()]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    ax = axes[0, 0]
    ax.plot(steps, df["loss"], color="C0", alpha=0.25, lw=0.6, label="train (batch)")
    ax.plot(steps, smooth(df["loss"].to_numpy()), color="C0", label="train (EMA)")
    ax.plot(evals["step"], evals["val_loss"], "o-", color="C1", ms=3, label="validation")
    ax.set_yscale("log")
    ax.set_title("loss")
    ax.legend()
    ax = axes[0, 1]
    ax.plot(steps, smooth(df["train_acc"].to_numpy()), color="C0", label="train (EMA)")
    ax.plot(evals["step"], evals["val_acc"], "o-", color="C1", ms=3, label="validation")
    ax.set_title("accuracy")
    ax.legend()
    ax = axes[1, 0]
    ax.plot(steps, df["grad_norm"], color="C2", lw=0.6, label="gradient norm")
    ax.plot(steps, df["update_ratio"], color="C3", lw=0.6, label="update / weight")
    ax.set_yscale("log")
    ax.set_title("gradient norm and update ratio")
    ax.legend()
    ax = axes[1, 1]
    ax.plot(steps, df["lr"], color="C4", label="learning rate")
    ax.set_title("learning rate")
    ax.set_xlabel("step")
    for a in axes.flat:
        a.grid(alpha=0.3)
    arch = meta.get("architecture") or {}
    fig.suptitle(
        f"{meta.get('run_id', '')}  {meta.get('task', '')}  {arch.get('family', '')} depth {arch.get('depth', '?')} "
        f"width {arch.get('width', '?')} {arch.get('activation', '')}  {meta.get('optimizer', '')}  [{meta.get('status')}]"
    )
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
