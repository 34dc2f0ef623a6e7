"""A tiny real zoo through the whole mirror: dataset, training, scoring, figures, the pruner
inside a sweep, pruner replay, the LR advisor and the CLI."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from metalearner.mirror import (
    CurvePruner, Dataset, LRAdvisor, build_dataset, fit_ensemble, fit_on_dataset, load_predictor, replay, save_predictor, score, split_runs,
)  # fmt: skip
from metalearner.cli import app
from metalearner.mirror.models import TrainConfig
from metalearner.mirror.pipeline import plot_heldout
from metalearner.observe.store import read_run, read_trajectory
from metalearner.tasks.models import ModelConfig
from metalearner.tasks.task import TaskConfig
from metalearner.train.run import RunConfig
from metalearner.parallel import InlineExecutor
from metalearner.zoo import SuccessiveHalving, run_sweep

runner = CliRunner()
QUICK = TrainConfig(epochs=3, batch_size=128)


def _runs(widths=(8, 16), lrs=(0.003, 0.03), epochs=2):
    return [
        RunConfig(task=TaskConfig(dataset="digits", batch_size=64, model=ModelConfig(depth=1, width=w, activation=a)),
                  optimizer="adam", lr=lr, epochs=epochs, eval_every=4, seed=0)
        for w, a in zip(widths, ("relu", "tanh")) for lr in lrs
    ]  # fmt: skip


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("mirror") / "zoo"
    run_sweep(_runs(), out, InlineExecutor(), progress=False)
    return out


@pytest.fixture(scope="module")
def ds(zoo):
    return build_dataset(zoo, zoo.parent / "data")


def test_dataset_from_a_real_zoo(ds):
    assert len(ds.runs) == 4 and set(ds.runs["status"]) == {"complete"}
    assert ds.runs["lr_log_ratio"].notna().all()  # two LR siblings per architecture
    assert np.isfinite(ds.rows[ds.features].to_numpy(float)).sum() > 0.9 * ds.rows[ds.features].size
    assert ds.rows.groupby("run_id")["step"].apply(lambda s: (s.diff().dropna() == 1).all()).all()


def test_train_score_plot_on_held_out_architecture(ds, tmp_path):
    split = split_runs(ds.runs, "arch", holdout=["1x16:tanh"], val=0.0)
    assert {s for s in split.values()} == {"train", "test"}
    model, hist = fit_on_dataset(ds, ["smooth_loss", "final_acc"], split, kind="gru", window=8, hidden=8, layers=1, train=QUICK)
    assert len(hist) == 3
    rep = score(ds, model, "smooth_loss", split, n_boot=50)
    assert set(rep["baselines"]) == {"persistence", "ema", "linear"} and rep["n_runs"] == 2
    assert rep["ratio"] > 0 and rep["ratio_ci95"][0] <= rep["ratio_ci95"][1]
    acc = score(ds, model, "final_acc", split, at_fraction=0.5, n_boot=50)
    assert acc["model"]["n"] == 2  # one row per held-out run
    assert {"persistence", "power_law", "exponential", "linear"} == set(acc["baselines"])
    assert plot_heldout(ds, model, "smooth_loss", split, tmp_path / "h.png", n_runs=2).stat().st_size > 1000


def test_fit_ensemble_members_are_the_seeded_fits(ds):
    """Member i is exactly the fit with seed ``train.seed + i``; the ensemble is their median
    and the same seed gives the same ensemble."""
    from dataclasses import replace

    from metalearner.mirror.dataset import examples, windows

    split = split_runs(ds.runs, "arch", holdout=["1x16:tanh"], val=0.0)
    kw = dict(kind="mlp", window=4, hidden=8, layers=1, quantiles=[0.5])
    ens, hists = fit_ensemble(ds, ["smooth_loss"], split, members=3, train=QUICK, **kw)
    assert len(ens.models) == len(hists) == 3 and all(len(h) == 3 for h in hists)
    x = windows(ds.rows, ens.cfg.features, examples(ds, "smooth_loss", split, "test"), ens.cfg.window)
    preds = [m.predict(x) for m in ens.models]
    single, _ = fit_on_dataset(ds, ["smooth_loss"], split, train=replace(QUICK, seed=QUICK.seed + 1), **kw)
    assert np.array_equal(single.predict(x), preds[1]) and not np.array_equal(preds[0], preds[1])
    assert np.array_equal(ens.predict(x), np.median(preds, 0))
    again, _ = fit_ensemble(ds, ["smooth_loss"], split, members=3, train=QUICK, **kw)
    assert np.array_equal(again.predict(x), ens.predict(x))
    assert score(ds, ens, "smooth_loss", split, n_boot=20)["model"]["n"] == len(x)


def _recorded(zoo):
    out = []
    for d in sorted((zoo / "runs").iterdir()):
        out.append((d.name, read_trajectory(d, format="pandas"), read_run(d)["config"]))
    return out


def test_curve_pruner_in_a_sweep_and_in_replay(ds, zoo, tmp_path):
    split = {rid: "train" for rid in ds.runs["run_id"]}
    model, hist = fit_on_dataset(ds, ["final_acc"], split, kind="mlp", window=8, hidden=8, layers=1, train=QUICK)
    save_predictor(model, tmp_path / "m", hist)
    # a pruner with a huge margin never stops; one that demands +1.0 accuracy stops at min_fraction
    keep = replay(_recorded(zoo), CurvePruner(tmp_path / "m", margin=1.0))
    assert keep["stopped"] == 0
    everything = replay(_recorded(zoo), None)
    assert keep["steps"] == everything["steps"] and keep["best_acc"] == everything["best_acc"]
    harsh = CurvePruner(tmp_path / "m", margin=-1.0, min_fraction=0.3)
    cut = replay(_recorded(zoo), harsh)
    assert cut["stopped"] == 3 and cut["steps"] < everything["steps"]  # the first run has no rival yet
    assert not cut["runs"][sorted(cut["runs"])[0]]["stopped"]
    assert sum(d["stop"] for d in harsh.decisions) == 3 and all(d["step"] + 1 >= 0.3 * 38 for d in harsh.decisions)
    sh = replay(_recorded(zoo), SuccessiveHalving(), tmp_path / "sh")
    assert sh["steps"] <= everything["steps"]
    # the real hook: the sweep pickles the pruner into its worker and calls it after evaluations
    res = run_sweep(_runs(widths=(32,), lrs=(0.01, 0.02)), tmp_path / "zoo2", InlineExecutor(),
                    pruner=CurvePruner(tmp_path / "m", margin=-1.0, min_fraction=0.3), progress=False)  # fmt: skip
    assert res.counts == {"complete": 1, "pruned": 1}
    assert (tmp_path / "zoo2" / "curve_pruner").is_dir()


def test_lr_advisor(ds, zoo, tmp_path):
    split = {rid: "train" for rid in ds.runs["run_id"]}
    model, hist = fit_on_dataset(ds, ["lr_log_ratio"], split, kind="mlp", window=8, hidden=8, layers=1, train=QUICK)
    save_predictor(model, tmp_path / "lr", hist)
    rid, traj, cfg = _recorded(zoo)[0]
    advisor = LRAdvisor(tmp_path / "lr", max_factor=4)
    f = advisor.suggest(traj.iloc[:30], cfg, 80)
    assert 0.25 <= f <= 4
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert advisor.apply(opt, traj.iloc[:30], cfg, 80) == pytest.approx(f)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * f)


def test_cli(zoo, tmp_path):
    r = runner.invoke(app, ["dataset", "build", str(zoo), "--out", str(tmp_path / "d"), "--k", "5"])
    assert r.exit_code == 0, r.output
    assert Dataset.load(tmp_path / "d").config.k == 5
    r = runner.invoke(app, ["mirror", "train", str(tmp_path / "d"), "--out", str(tmp_path / "m"), "--kind", "transformer",
                                   "--split", "arch", "--holdout", "1x8:relu", "--window", "8", "--hidden", "8", "--epochs", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert load_predictor(tmp_path / "m").cfg.kind == "transformer"
    r = runner.invoke(app, ["mirror", "eval", str(tmp_path / "m"), str(tmp_path / "d"), "--plots", str(tmp_path / "p"), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep[0]["target"] == "smooth_loss" and "ratio_ci95" in rep[0]
    assert (tmp_path / "p" / "training.png").exists() and (tmp_path / "p" / "heldout.png").exists()
    r = runner.invoke(app, ["mirror", "eval", str(tmp_path / "m"), str(tmp_path / "d")])
    assert "best baseline" in r.output


def test_cli_ensemble(zoo, tmp_path):
    """--members N saves N seeded members (member i is the single fit with seed + i) that load
    back as their median, and eval scores and plots the ensemble."""
    from metalearner.mirror.dataset import examples, windows
    from metalearner.mirror.models import Ensemble

    assert runner.invoke(app, ["dataset", "build", str(zoo), "--out", str(tmp_path / "d"), "--k", "5"]).exit_code == 0
    common = ["--kind", "mlp", "--holdout", "1x8:relu", "--window", "4", "--hidden", "8", "--layers", "3", "--epochs", "2", "--lr", "1e-3"]
    r = runner.invoke(app, ["mirror", "train", str(tmp_path / "d"), "--out", str(tmp_path / "e"), "--members", "3", "--seed", "1", *common])
    assert r.exit_code == 0, r.output
    assert "x3" in r.output
    r = runner.invoke(app, ["mirror", "train", str(tmp_path / "d"), "--out", str(tmp_path / "s"), "--seed", "2", *common])
    assert r.exit_code == 0, r.output
    ens, single = load_predictor(tmp_path / "e"), load_predictor(tmp_path / "s")
    assert isinstance(ens, Ensemble) and len(ens.models) == 3 and ens.cfg.layers == 3
    ds = Dataset.load(tmp_path / "d")
    split = json.loads((tmp_path / "e" / "split.json").read_text())["split"]
    x = windows(ds.rows, ens.cfg.features, examples(ds, "smooth_loss", split, "test"), ens.cfg.window)
    assert np.array_equal(ens.models[1].predict(x), single.predict(x))  # member 1 is the seed-2 fit
    assert np.array_equal(ens.predict(x), np.median([m.predict(x) for m in ens.models], axis=0))
    r = runner.invoke(app, ["mirror", "eval", str(tmp_path / "e"), str(tmp_path / "d"), "--plots", str(tmp_path / "p"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["target"] == "smooth_loss" and (tmp_path / "p" / "training.png").exists()
    r = runner.invoke(app, ["mirror", "train", str(tmp_path / "d"), "--out", str(tmp_path / "x"), "--members", "0"])
    assert r.exit_code != 0 and "--members must be >= 1" in str(r.exception)  # a ConfigError: one line, no traceback


def test_cli_retrain_into_the_same_out_replaces_the_ensemble(ds, zoo, tmp_path):
    """A GRU trained into the folder of a 2-member MLP ensemble is what loads (and is scored)
    afterwards, with the GRU's own split."""
    from metalearner.mirror.models import Ensemble

    common = [str(zoo.parent / "data"), "--out", str(tmp_path / "m"), "--window", "4", "--hidden", "8", "--epochs", "1", "--no-progress"]
    r = runner.invoke(app, ["mirror", "train", *common, "--kind", "mlp", "--members", "2", "--holdout", "1x8:relu"])
    assert r.exit_code == 0, r.output
    assert isinstance(load_predictor(tmp_path / "m"), Ensemble)
    r = runner.invoke(app, ["mirror", "train", *common, "--kind", "gru", "--holdout", "1x16:tanh"])
    assert r.exit_code == 0, r.output
    back = load_predictor(tmp_path / "m")
    assert not isinstance(back, Ensemble) and back.cfg.kind == "gru"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "history.json", "model.safetensors", "split.json"]
    split = json.loads((tmp_path / "m" / "split.json").read_text())["split"]
    assert {rid for rid, side in split.items() if side == "test"} == set(ds.runs.loc[ds.runs["width"] == 16, "run_id"])


def test_live_features_match_the_dataset(ds, zoo):
    """What the pruner and advisor compute from a live trajectory equals the dataset's rows."""
    from metalearner.mirror.dataset import live_rows, total_steps

    rid, traj, cfg = _recorded(zoo)[1]
    prefix = traj.iloc[:25]
    live = live_rows(prefix, cfg, total_steps(traj, cfg), window=8)
    mine = ds.rows[ds.rows["run_id"] == rid].iloc[:25]
    cols = ds.loss_features  # the features plus the loss smoothers
    np.testing.assert_allclose(live[cols].to_numpy(float)[-8:], mine[cols].to_numpy(float)[-8:], rtol=1e-6, atol=1e-9, equal_nan=True)


def test_loss_predictor_is_a_correction_to_the_best_training_smoother(ds):
    """A smooth_loss predictor sees the smoothers, is anchored on the one with the least
    training MAE, sees loss levels relative to it, and untrained predicts that baseline
    (plus the mean training residual)."""
    from metalearner.mirror.dataset import examples, windows
    from metalearner.mirror.pipeline import ANCHOR_CHOICES
    from metalearner.mirror.trends import LOSS_LEVELS, TREND_FEATURES

    split = split_runs(ds.runs, "arch", holdout=["1x16:tanh"], val=0.0)
    model, _ = fit_on_dataset(ds, ["smooth_loss"], split, kind="mlp", window=8, hidden=8, train=TrainConfig(epochs=0))
    cfg = model.cfg
    assert set(TREND_FEATURES) <= set(cfg.features)
    anchor = cfg.anchors["smooth_loss"]
    tr = examples(ds, "smooth_loss", split, "train")
    y = ds.rows["smooth_loss"].to_numpy(float)[tr]
    mae = {c: np.mean(np.abs(ds.rows[c].to_numpy(float)[tr] - y)) for c in ANCHOR_CHOICES["smooth_loss"]}
    assert anchor == min(mae, key=mae.get)
    assert cfg.relative_to == anchor and set(LOSS_LEVELS) <= set(cfg.relative)
    te = examples(ds, "smooth_loss", split, "test")
    pred = model.predict(windows(ds.rows, cfg.features, te, cfg.window))[:, 0]
    np.testing.assert_allclose(pred, ds.rows[anchor].to_numpy(float)[te] + cfg.y_mean[0], rtol=1e-5, atol=1e-5)
    # with another target beside it the inputs stay the plain features (the final_acc models of the pruner)
    both, _ = fit_on_dataset(ds, ["smooth_loss", "final_acc"], split, kind="mlp", window=8, hidden=8, train=TrainConfig(epochs=0))
    assert both.cfg.features == ds.features and both.cfg.anchors["smooth_loss"] == "log_loss_ema"


def constant(cls, value: float, **kw):
    """A pruner or advisor whose predictor always answers ``value`` (tests the rule itself)."""

    class Constant(cls):
        def predict(self, trajectory, run, total):
            return value

    return Constant("unused", **kw)


def test_curve_pruner_decision_follows_the_prediction(zoo):
    """margin 0: a prediction above every accuracy never stops; one below the best rival stops
    every later run, each at its first decision point past min_fraction."""
    optimistic = replay(_recorded(zoo), constant(CurvePruner, 2.0, margin=0.0, min_fraction=0.3))
    assert optimistic["stopped"] == 0
    pessimistic = constant(CurvePruner, -1.0, margin=0.0, min_fraction=0.3)
    cut = replay(_recorded(zoo), pessimistic)
    assert cut["stopped"] == len(_recorded(zoo)) - 1  # only the first run has no rival to lose to
    assert all(d["stop"] == (d["pred"] < d["best"]) for d in pessimistic.decisions)


@pytest.mark.parametrize("log_ratio, factor", [(math.log(2.0), 2.0), (math.log(0.5), 0.5), (10.0, 4.0), (-10.0, 0.25)])
def test_lr_advisor_factor_is_exp_of_the_prediction_clipped(zoo, log_ratio, factor):
    rid, traj, cfg = _recorded(zoo)[0]
    assert constant(LRAdvisor, log_ratio, max_factor=4).suggest(traj.iloc[:30], cfg, 80) == pytest.approx(factor)
