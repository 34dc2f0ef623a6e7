"""Mirror datasets: targets on a hand-made trajectory, LR siblings, grouped splits, windows."""

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metalearner.errors import ConfigError, DataError, MetalearnerWarning
from metalearner.mirror.dataset import (
    SPLITS, Dataset, DatasetConfig, build_dataset, forward_mean, group_of, split_runs, windows,
)  # fmt: skip
from metalearner.observe.store import write_run_json, write_table

LOSSES = np.array([4.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625])
VAL_ACC = [None, None, 0.5, None, None, 0.8, None, 0.95]  # evaluations after steps 2, 5, 7


def fake_run(root, rid, *, lr=0.1, acc=VAL_ACC, losses=LOSSES, depth=1, width=16, activation="relu", optimizer="sgd",
             seed=0, status="complete"):  # fmt: skip
    """A run directory written with the store's own functions, 2 epochs of 4 steps."""
    n = len(losses)
    traj = pd.DataFrame({
        "run_id": rid, "step": np.arange(n), "epoch": np.arange(n) // 4, "batch": np.arange(n) % 4,
        "loss": np.asarray(losses, np.float32), "loss_delta": np.nan, "train_acc": 0.5,
        "val_loss": [None if a is None else 1 - a for a in acc], "val_acc": acc,
        "grad_norm": 1.0, "weight_norm": 10.0, "update_norm": 0.1, "update_ratio": 0.01, "lr": lr, "momentum": 0.0,
        "optimizer": "SGD", "task": "digits", "depth": depth, "width": width, "activation": activation, "n_params": 100,
        "wall_time": 0.0,
    })  # fmt: skip
    d = root / "runs" / rid
    d.mkdir(parents=True)
    write_table(pa.Table.from_pandas(traj, preserve_index=False), d / "trajectory.parquet")
    model = {"family": "mlp", "depth": depth, "width": width, "activation": activation, "init": "default"}
    config = {"task": {"dataset": "digits", "model": model, "batch_size": 32, "seed": 0, "n_train": None, "data_options": {}},
              "optimizer": optimizer, "lr": lr, "momentum": None, "weight_decay": 0.0, "schedule": "constant", "epochs": 2,
              "steps": None, "eval_every": None, "target_acc": None, "seed": seed, "extended": False}  # fmt: skip
    arch = {**model, "n_params": 100, "vector": [1.0, 0.0, float(depth), math.log2(width)], "vector_fields": ["family=mlp", "family=cnn", "depth", "log2_width"]}
    final = {"val_acc": [a for a in acc if a is not None][-1]} if status != "stopped" else {}
    write_run_json(d, {"run_id": rid, "status": status, "task": "digits", "architecture": arch, "config": config, "final": final})
    return d


def test_targets_on_a_hand_made_trajectory(tmp_path):
    fake_run(tmp_path, "a")
    ds = build_dataset(tmp_path, cfg=DatasetConfig(k=2, ahead=3, acc_threshold=0.8))
    r = ds.rows
    log = np.log(LOSSES)
    assert r["next_loss"].iloc[:-1].tolist() == pytest.approx(log[1:].tolist())
    assert math.isnan(r["next_loss"].iloc[-1])
    # smoothed: mean of the next k=2 log losses; ahead: mean of log losses t+2..t+3
    assert r["smooth_loss"].iloc[0] == pytest.approx((log[1] + log[2]) / 2)
    assert r["smooth_loss"].iloc[5] == pytest.approx((log[6] + log[7]) / 2)
    assert r["smooth_loss"].iloc[6:].isna().all()
    assert r["ahead_loss"].iloc[0] == pytest.approx((log[2] + log[3]) / 2)
    assert r["ahead_loss"].iloc[4] == pytest.approx((log[6] + log[7]) / 2)
    assert r["ahead_loss"].iloc[5:].isna().all()
    # next evaluation strictly after t
    assert r["val_acc_next"].tolist()[:7] == pytest.approx([0.5, 0.5, 0.8, 0.8, 0.8, 0.95, 0.95])
    assert r["val_loss_next"].iloc[0] == pytest.approx(math.log(0.5))
    assert r["final_acc"].tolist() == pytest.approx([0.95] * 8)
    # 0.8 first reached at step 5
    assert r["steps_to_acc"].tolist() == [5, 4, 3, 2, 1, 0, 0, 0]
    assert not r["censored_acc"].any()
    # features are the probe's columns, transformed
    assert r["log_loss"].tolist() == pytest.approx(log.tolist())
    assert r["log_lr"].iloc[0] == pytest.approx(math.log(0.1))
    assert r["val_acc_last"].tolist() == pytest.approx([0, 0, 0.5, 0.5, 0.5, 0.8, 0.8, 0.95])
    assert r["fraction"].tolist() == pytest.approx(np.arange(8) / 8)
    assert r["arch:depth"].iloc[0] == 1 and r["opt=sgd"].iloc[0] == 1 and r["data=digits"].iloc[0] == 1


def test_censored_convergence_and_pruned_final(tmp_path):
    fake_run(tmp_path, "slow", acc=[None, None, 0.3, None, None, 0.4, None, 0.5])
    fake_run(tmp_path, "cut", status="stopped")
    ds = build_dataset(tmp_path, cfg=DatasetConfig(acc_threshold=0.9))
    slow = ds.rows[ds.rows["run_id"] == "slow"]
    assert slow["censored_acc"].all() and slow["steps_to_acc"].isna().all()
    assert ds.rows[ds.rows["run_id"] == "cut"]["final_acc"].isna().all()


def test_lr_log_ratio_between_siblings(tmp_path):
    for rid, lr, final in [("lo", 0.01, 0.6), ("mid", 0.1, 0.9), ("hi", 1.0, 0.7)]:
        fake_run(tmp_path, rid, lr=lr, acc=[None] * 7 + [final])
    fake_run(tmp_path, "other", lr=0.5, width=32)  # no sibling: differs in width
    ds = build_dataset(tmp_path)
    ratio = ds.runs.set_index("run_id")["lr_log_ratio"]
    assert ratio["lo"] == pytest.approx(math.log(10)) and ratio["mid"] == 0 and ratio["hi"] == pytest.approx(-math.log(10))
    assert math.isnan(ratio["other"])
    assert ds.rows[ds.rows["run_id"] == "lo"]["lr_log_ratio"].tolist() == pytest.approx([math.log(10)] * 8)


def test_save_load_round_trip(tmp_path):
    fake_run(tmp_path, "a")
    ds = build_dataset(tmp_path, tmp_path / "data")
    back = Dataset.load(tmp_path / "data")
    pd.testing.assert_frame_equal(back.rows, ds.rows)
    assert back.features == ds.features and back.config == ds.config
    with pytest.raises(DataError):
        Dataset.load(tmp_path / "nope")
    with pytest.raises(DataError):
        build_dataset(tmp_path / "nope")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "data" / "rows.parquet")  # written by something else
    with pytest.raises(DataError, match="lacks the column"):
        Dataset.load(tmp_path / "data")


def _many_runs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "run_id": [f"r{i}" for i in range(n)], "depth": rng.integers(1, 4, n), "width": rng.choice([16, 32, 64], n),
        "activation": rng.choice(["relu", "tanh"], n), "task": rng.choice(["digits", "moons", "mnist1d"], n),
        "optimizer": rng.choice(["sgd", "adam", "rmsprop"], n),
    })  # fmt: skip


@pytest.mark.parametrize("by", SPLITS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_splits_never_leak(by, seed):
    runs = _many_runs(seed=seed)
    split = split_runs(runs, by, seed=seed)
    assert set(split) == set(runs["run_id"]) and set(split.values()) <= {"train", "val", "test"}
    sides = pd.DataFrame({"group": group_of(runs, by).to_numpy(), "side": runs["run_id"].map(split)})
    assert (sides.groupby("group")["side"].nunique() == 1).all()  # a group (hence a run) is on one side only
    assert {"train", "test"} <= set(split.values())
    assert split == split_runs(runs, by, seed=seed)  # reproducible from the seed


def test_explicit_holdout_and_errors():
    runs = _many_runs()
    split = split_runs(runs, "optimizer", holdout=["adam"])
    assert {s for rid, s in split.items() if runs.set_index("run_id").loc[rid, "optimizer"] == "adam"} == {"test"}
    assert "test" not in {s for rid, s in split.items() if runs.set_index("run_id").loc[rid, "optimizer"] != "adam"}
    with pytest.raises(ConfigError, match="not in the data"):
        split_runs(runs, "optimizer", holdout=["lion"])
    with pytest.raises(ConfigError, match="unknown split"):
        split_runs(runs, "colour")


def test_windows_are_edge_padded_per_run():
    rows = pd.DataFrame({"run_id": ["a"] * 3 + ["b"] * 3, "f": [1.0, 2, 3, 10, 20, 30]})
    w = windows(rows, ["f"], np.array([0, 2, 3, 5]), 3)[..., 0]
    assert w.tolist() == [[1, 1, 1], [1, 2, 3], [10, 10, 10], [10, 20, 30]]


def test_forward_mean():
    x = np.arange(6, dtype=float)
    assert forward_mean(x, 2).tolist()[:4] == [1.5, 2.5, 3.5, 4.5]
    assert forward_mean(x, 2, offset=3).tolist()[:3] == [2.5, 3.5, 4.5]


def test_run_split_keeps_lr_siblings_together(tmp_path):
    """A run's lr_log_ratio label depends on its LR siblings: they must share a side."""
    for i in range(6):
        for lr in (0.01, 0.1, 1.0):
            fake_run(tmp_path, f"w{i}-{lr}", lr=lr, width=16 * (i + 1))
    ds = build_dataset(tmp_path)
    for seed in range(5):
        split = split_runs(ds.runs, "run", seed=seed, test=0.3, val=0.2)
        sides = ds.runs.assign(side=ds.runs["run_id"].map(split)).groupby("sibling_key")["side"].nunique()
        assert (sides == 1).all()


def test_forward_mean_blanks_only_windows_with_a_nan():
    x = np.arange(10, dtype=float)
    x[3] = np.nan
    out = forward_mean(x, 2)  # mean of x[t+1], x[t+2]
    assert np.isnan(out[1]) and np.isnan(out[2])  # windows containing index 3
    assert out[0] == pytest.approx(1.5) and out[3] == pytest.approx(4.5) and out[6] == pytest.approx(7.5)


def test_split_without_validation():
    split = split_runs(_many_runs(), "arch", val=0.0)
    assert "val" not in set(split.values())


def test_trend_features_are_the_baselines_and_causal(tmp_path):
    """The smoothers a loss predictor sees equal the EMA and linear baselines on the same
    windows (so anchoring on one makes a zero output that baseline), use no future step,
    and an older dataset without them gets the same columns on load."""
    from metalearner.mirror.baselines import EMA_WINDOW, ema, linear
    from metalearner.mirror.trends import EMA_GRID, LINEAR_WINDOWS, TREND_FEATURES, ema_name, lin_name, loss_trend_features, slope_name

    rng = np.random.default_rng(0)
    losses = np.exp(-np.linspace(0, 3, 300) + 0.5 * rng.standard_normal(300))
    fake_run(tmp_path, "a", losses=losses, acc=[None] * 299 + [0.9])
    fake_run(tmp_path, "b", losses=losses[::-1].copy(), acc=[None] * 299 + [0.5], width=32)
    ds = build_dataset(tmp_path, tmp_path / "data")
    idx = np.arange(len(ds.rows))
    x = windows(ds.rows, ["log_loss"], idx, EMA_WINDOW)[..., 0].astype(np.float64)
    for a in EMA_GRID:
        np.testing.assert_allclose(ds.rows[ema_name(a)], ema(x, a), rtol=1e-9, atol=1e-9)
    for w in LINEAR_WINDOWS:
        for h in (0.0, 10.5):
            got = ds.rows[lin_name(w)] + h * ds.rows[slope_name(w)]
            np.testing.assert_allclose(got, linear(x[:, -w:], h), rtol=1e-9, atol=1e-9)
    ll = ds.rows.loc[ds.rows.run_id == "a", "log_loss"].to_numpy()
    full, prefix = loss_trend_features(ll), loss_trend_features(ll[:150])
    for name in TREND_FEATURES:
        np.testing.assert_allclose(prefix[name], full[name][:150])
    assert set(TREND_FEATURES) <= set(ds.loss_features) and not set(TREND_FEATURES) & set(ds.features)
    old = ds.rows.drop(columns=list(TREND_FEATURES))
    Dataset(rows=old, runs=ds.runs, config=ds.config).save(tmp_path / "old")
    pd.testing.assert_frame_equal(Dataset.load(tmp_path / "old").rows[list(TREND_FEATURES)], ds.rows[list(TREND_FEATURES)])


@pytest.mark.parametrize("name, content, message", [
    ("dataset.json", "{", "dataset.json is not valid JSON"),
    ("dataset.json", '{"config": {}}', "dataset.json is not a mirror dataset description"),
    ("dataset.json", "[]", "dataset.json is not a mirror dataset description"),
    ("rows.parquet", "PAR1 truncated", "rows.parquet is not a readable Parquet file"),
])  # fmt: skip
def test_corrupt_dataset_is_a_data_error_naming_the_file(tmp_path, name, content, message):
    fake_run(tmp_path, "a")
    build_dataset(tmp_path, tmp_path / "data")
    (tmp_path / "data" / name).write_text(content)
    with pytest.raises(DataError, match=message) as e:
        Dataset.load(tmp_path / "data")
    assert str(tmp_path / "data" / name) in str(e.value) and "\n" not in str(e.value)


def test_build_reports_progress_per_run(tmp_path):
    class Bar:
        def __init__(self):
            self.calls = []

        def update(self, done, total):
            self.calls.append((done, total))

    for rid in ("a", "b", "c"):
        fake_run(tmp_path, rid)
    (tmp_path / "runs" / "b" / "run.json").write_text("{")  # unreadable: skipped with a warning, still counted
    bar = Bar()
    with pytest.warns(MetalearnerWarning, match=r"skipped 1 unreadable run\(s\): .*runs/b/run.json is not valid JSON"):
        ds = build_dataset(tmp_path, progress=bar)
    assert len(ds.runs) == 2 and bar.calls == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_build_warns_when_the_runs_are_too_short_for_the_loss_targets(tmp_path):
    from typer.testing import CliRunner

    from metalearner.cli import app

    fake_run(tmp_path, "a")  # 8 steps, ahead 50 by default
    r = CliRunner().invoke(app, ["dataset", "build", str(tmp_path), "--out", str(tmp_path / "data"), "--no-progress"])
    assert r.exit_code == 0 and (tmp_path / "data" / "rows.parquet").exists()  # the other targets still serve
    assert "warning: no row has a smooth_loss or ahead_loss target" in r.stderr and "the longest has 8" in r.stderr
