"""Analysis of a learned optimizer's run: its embedding trajectory and its learned schedule.

    traj = record_run(task, "opt2vec", steps=512)
    plot_embedding(traj, "embedding.png")      # PCA to 2-D, coloured by training phase
    plot_schedule(traj, "schedule.png")        # loss, learned lr and momentum over the run
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from metalearner.train import RunConfig, train_run

PHASES = ("early", "middle", "late")


def record_run(task: Any, method: str = "opt2vec", *, lr: float | None = None, steps: int, seed: int = 0,
               options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Train ``task``'s model with ``method`` for ``steps`` steps (batches drawn with
    replacement) through ``train_run``; per step: loss, lr, momentum (the probe's columns);
    per observation: the step and the optimizer's embedding."""
    emb_step: list[int] = []
    embeddings: list[Any] = []

    def attach(model: Any, opt: Any) -> None:
        step = iter(range(steps))

        def record(*_: Any) -> None:  # after each step: keep each new embedding once
            t, emb = next(step), getattr(opt, "embedding", None)
            if emb is not None and (not embeddings or emb is not embeddings[-1]):
                emb_step.append(t)
                embeddings.append(emb)

        opt.register_step_post_hook(record)

    cfg = RunConfig(task=task.config, optimizer=method, lr=lr, steps=steps, epochs=None, seed=seed, sampler="random",
                    options=dict(options or {}))  # fmt: skip
    result = train_run(cfg, task=task, test=False, attach=attach)
    df = result.trajectory.to_pandas()
    out = {"loss": df["loss"].to_numpy(), "lr": df["lr"].to_numpy(), "momentum": df["momentum"].to_numpy(), "emb_step": np.asarray(emb_step)}
    out["embedding"] = np.stack([e.numpy() for e in embeddings]) if embeddings else np.zeros((0, 0))
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
