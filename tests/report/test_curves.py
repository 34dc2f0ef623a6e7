"""The figure of one run (``metalearner inspect --plot``)."""

import numpy as np
import pandas as pd
import pytest

from metalearner.report.curves import plot_run, run_figure

META = {"run_id": "r", "task": "digits", "architecture": {"family": "mlp", "depth": 1, "width": 8}, "status": "complete"}


def trajectory(lr: np.ndarray) -> pd.DataFrame:
    """A run that sits at 96-99% accuracy from the start, evaluated every 10 steps."""
    n = len(lr)
    rng = np.random.default_rng(0)
    step = np.arange(n)
    val = np.where(step % 10 == 9, 0.97 + 0.01 * step / n, np.nan)
    return pd.DataFrame({
        "step": step, "loss": 0.1 + 0.05 * rng.random(n), "train_acc": 0.96 + 0.03 * rng.random(n),
        "val_loss": np.where(np.isnan(val), np.nan, 0.1), "val_acc": val,
        "grad_norm": 1 + rng.random(n), "update_ratio": 1e-3 * (1 + rng.random(n)), "lr": lr,
    })  # fmt: skip


@pytest.mark.parametrize("varies", [False, True], ids=["constant-lr", "cosine-lr"])
def test_every_panel_has_an_x_label_and_accuracy_is_zoomed(varies, tmp_path):
    import matplotlib.pyplot as plt

    n = 200
    lr = 1e-3 * (0.5 + 0.5 * np.cos(np.pi * np.arange(n) / n)) if varies else np.full(n, 1e-3)
    fig = run_figure(trajectory(lr), META)
    try:
        axes = fig.get_axes()
        titles = [a.get_title() for a in axes]
        # a constant learning rate is a title line, not a quarter of the figure
        assert ("learning rate" in titles) == varies and len(axes) == (4 if varies else 3)
        assert ("learning rate constant at 0.001" in fig._suptitle.get_text()) != varies
        assert all(a.get_xlabel() == "step" for a in axes)
        low, high = axes[titles.index("accuracy")].get_ylim()
        assert 0.9 < low < 0.97 and 1.0 <= high < 1.01  # not 0..1: the curve fills the panel
    finally:
        plt.close(fig)
    assert plot_run(trajectory(lr), META, tmp_path / "c.png").stat().st_size > 10_000
