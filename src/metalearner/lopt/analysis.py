"""Analysis of a learned optimizer's run: its embedding trajectory and its learned schedule.

    traj = record_run(task, Opt2Vec, epochs=1)
    plot_embedding(traj, "embedding.png")      # PCA to 2-D, coloured by training phase
    plot_schedule(traj, "schedule.png")        # loss, learned lr and momentum over the run
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch

from metalearner.train import train_step

PHASES = ("early", "middle", "late")


def record_run(task: Any, make_optimizer: Callable[..., Any], *, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Train ``task``'s model for ``steps`` steps; per step: loss, lr, momentum; per
    observation: the step and the embedding."""
    model = task.build_model(seed=seed)
    opt = make_optimizer(model.parameters())
    data, bs = task.data, task.config.batch_size
    gen = torch.Generator().manual_seed(seed)
    rows: dict[str, list] = {"loss": [], "lr": [], "momentum": [], "emb_step": [], "embedding": []}
    last = None
    for t in range(steps):
        idx = torch.randint(0, data.n_train, (bs,), generator=gen)
        loss, _ = train_step(model, opt, task.loss_fn, data.x_train[idx], data.y_train[idx])
        group = opt.param_groups[0]
        rows["loss"].append(float(loss.detach()))
        rows["lr"].append(group["lr"])
        rows["momentum"].append(group["betas"][0] if "betas" in group else group.get("momentum", np.nan))
        emb = getattr(opt, "embedding", None)
        if emb is not None and emb is not last:
            rows["emb_step"].append(t)
            rows["embedding"].append(emb.numpy().copy())
            last = emb
    out = {k: np.asarray(v) for k, v in rows.items() if k != "embedding"}
    out["embedding"] = np.stack(rows["embedding"]) if rows["embedding"] else np.zeros((0, 0))
    return out


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Project rows of ``x`` on their first two principal components."""
    centred = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:2]
    if len(comps) < 2:
        comps = np.vstack([comps, np.zeros((2 - len(comps), x.shape[1]))])
    return centred @ comps.T


def plot_embedding(traj: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """The embedding trajectory in 2-D (PCA), points coloured by training phase (thirds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = pca_2d(traj["embedding"])
    steps = traj["emb_step"]
    total = max(len(traj["loss"]), 1)
    phase = np.minimum((3 * steps) // total, 2)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot(xy[:, 0], xy[:, 1], color="0.8", lw=0.8, zorder=1)
    for k, name in enumerate(PHASES):
        sel = phase == k
        ax.scatter(xy[sel, 0], xy[sel, 1], s=14, label=name, zorder=2)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("Opt2Vec embedding trajectory")
    ax.legend(title="phase")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_schedule(traj: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Loss, learned learning rate and momentum over the run, stacked on one step axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(len(traj["loss"]))
    fig, axes = plt.subplots(3, 1, figsize=(6, 6.5), sharex=True)
    for ax, key, label, log in zip(axes, ("loss", "lr", "momentum"), ("train loss", "learning rate", "momentum (β₁)"), (True, True, False)):
        ax.plot(steps, traj[key], lw=0.9)
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
