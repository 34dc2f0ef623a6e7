"""Figures for the meta-meta commands: each level's hyperparameters, adaptation curves (PNG)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_tower(rows: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """One panel per hyperparameter of every level (``lr``, the lr applied, betas or momentum, ``hyper_lr_k``)
    against the step; rates on a log scale. ``rows`` are :func:`tower_hparams` per step."""
    keys = list(dict.fromkeys(k for r in rows for k in r))  # effective_lr appears with the first step
    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 1.8 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        ax.plot(range(1, len(rows) + 1), [r.get(key, math.nan) for r in rows])
        ax.set_ylabel(key)
        if "lr" in key:
            ax.set_yscale("log")
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(title or "tower hyperparameters by level")
    return _save(fig, path)


def plot_fewshot(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Left: the score on test tasks after 0 … S inner steps (the adaptation curve). Right: the
    meta-loss and the outer (meta-) learning rate over meta-iterations."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(range(len(result["curve"])), result["curve"], marker="o")
    left.set_xlabel("inner steps")
    left.set_ylabel(f"test {result['metric']}")
    left.set_title("adaptation on unseen tasks")
    its = [h["iteration"] for h in result["history"]]
    right.plot(its, [h["meta_loss"] for h in result["history"]], color="C0")
    right.set_xlabel("meta-iteration")
    right.set_ylabel("meta-loss", color="C0")
    lr_axis = right.twinx()
    lr_axis.plot(its, [h["outer_lr"] for h in result["history"]], color="C1")
    lr_axis.set_yscale("log")
    lr_axis.set_ylabel("outer lr", color="C1")
    fig.suptitle(title)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
