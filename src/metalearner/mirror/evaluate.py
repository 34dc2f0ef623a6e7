"""Scoring meta-models against baselines: metrics, run-level bootstrap CIs, figures.

``MAE = mean|ŷ − y|``, ``RMSE = sqrt(mean (ŷ − y)²)``, ``R² = 1 − Σ(ŷ − y)² / Σ(y − ȳ)²``.
The headline number is ``ratio = MAE(model) / MAE(best baseline)`` on the same rows, the best
baseline being the one with the least MAE there. Rows of one run are correlated, so the
confidence interval resamples *runs* with replacement (a cluster bootstrap) and recomputes
the ratio against that same baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from metalearner.errors import DataError


def metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    e = pred - y
    ss = float(np.sum((y - y.mean()) ** 2))
    return {"mae": float(np.mean(np.abs(e))), "rmse": float(np.sqrt(np.mean(e**2))),
            "r2": float(1 - np.sum(e**2) / ss) if ss > 0 else float("nan"), "n": int(len(y))}  # fmt: skip


def bootstrap_ratio(
    y: np.ndarray, model: np.ndarray, base: np.ndarray, groups: np.ndarray, *, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of ``MAE(model) / MAE(base)`` resampling the groups (runs)."""
    rng = np.random.default_rng(seed)
    codes, uniq = np.unique(groups, return_inverse=True)[1], np.unique(groups)
    k = len(uniq)
    em = np.bincount(codes, np.abs(model - y), minlength=k)
    eb = np.bincount(codes, np.abs(base - y), minlength=k)
    draws = rng.integers(0, k, size=(n, k))
    counts = np.stack([np.bincount(d, minlength=k) for d in draws])
    ratios = (counts @ em) / np.maximum(counts @ eb, 1e-300)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


NO_ROWS = "no rows to score: the split side, the runs or the fraction selected nothing with a finite target"


def compare(y: np.ndarray, model: np.ndarray, baselines: dict[str, np.ndarray], groups: np.ndarray, *, seed: int = 0,
            n_boot: int = 1000) -> dict[str, Any]:  # fmt: skip
    """Model and baseline metrics on the same rows, the best baseline, the MAE ratio with CI."""
    ok = np.isfinite(y) & np.isfinite(model) & np.all([np.isfinite(b) for b in baselines.values()], axis=0)
    if not ok.any():
        raise DataError(NO_ROWS)
    y, model, groups = y[ok], model[ok], groups[ok]
    base = {k: v[ok] for k, v in baselines.items()}
    out: dict[str, Any] = {"model": metrics(y, model), "baselines": {k: metrics(y, v) for k, v in base.items()}}
    best = min(base, key=lambda k: out["baselines"][k]["mae"])
    out["best_baseline"] = best
    out["ratio"] = out["model"]["mae"] / max(out["baselines"][best]["mae"], 1e-300)
    out["ratio_ci95"] = list(bootstrap_ratio(y, model, base[best], groups, n=n_boot, seed=seed))
    out["n_runs"] = int(len(np.unique(groups)))
    out["beats_best_baseline"] = bool(out["ratio_ci95"][1] < 1.0)
    return out


def plot_history(history: list[dict[str, float]], path: str | Path, title: str = "meta-model training") -> Path:
    """The meta-model's training curve (train and validation loss per epoch) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], label="train")
    if history and "val_loss" in history[0]:
        ax.plot(ep, [h["val_loss"] for h in history], label="validation")
    ax.set(xlabel="epoch", ylabel="loss (standardised targets)", title=title, yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_trajectories(
    curves: list[dict[str, Any]], path: str | Path, ylabel: str = "log loss", title: str = "held-out runs"
) -> Path:
    """Predicted vs true along held-out runs. Each curve: ``run_id``, ``step``, ``true``,
    ``pred``, optional ``raw`` (the per-batch values, drawn faintly) and ``baseline``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for ax, c in zip(axes[0], curves):
        if "raw" in c:
            ax.plot(c["raw_step"], c["raw"], color="0.8", lw=0.6, label="per-batch")
        ax.plot(c["step"], c["true"], color="k", lw=1.2, label="true")
        if "baseline" in c:
            ax.plot(c["step"], c["baseline"], color="tab:orange", lw=1, ls="--", label=c.get("baseline_name", "baseline"))
        ax.plot(c["step"], c["pred"], color="tab:blue", lw=1.2, label="meta-model")
        ax.set(title=str(c["run_id"]), xlabel="step", ylabel=ylabel)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
