"""Baselines, metrics and the three predictors: correctness, overfitting, save/load."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from metalearner.errors import ConfigError, DataError
from metalearner.mirror.baselines import ema, linear, persistence
from metalearner.mirror.curves import curve_baselines, curve_features
from metalearner.mirror.evaluate import bootstrap_ratio, compare, metrics
from metalearner.mirror.models import (
    KINDS, Ensemble, PredictorConfig, TrainConfig, load_predictor, read_history, save_predictor, train_predictor,
)  # fmt: skip


def test_window_baselines():
    x = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    assert persistence(x).tolist() == [4.0, 5.0]
    # m = 1 -> 1.5 -> 2.25 -> 3.125 with α = 0.5
    assert ema(x, 0.5).tolist() == pytest.approx([3.125, 5.0])
    assert linear(x, 1.0).tolist() == pytest.approx([5.0, 5.0])  # an exact line continues
    assert linear(x, 2.5).tolist() == pytest.approx([6.5, 5.0])


def test_curve_fits_recover_exact_curves():
    s = np.arange(1, 21, dtype=float) * 10
    T = 1000.0
    power = 0.9 - 0.5 * s**-0.5
    fit = curve_baselines(s, power, T)
    assert fit["power_law"] == pytest.approx(0.9 - 0.5 * T**-0.5, abs=1e-3)
    assert fit["persistence"] == power[-1]
    expo = 0.95 - 0.6 * np.exp(-4 * s / T)
    assert curve_baselines(s, expo, T)["exponential"] == pytest.approx(0.95 - 0.6 * math.exp(-4), abs=1e-3)
    few = curve_baselines(s[:2], expo[:2], T)
    assert few["power_law"] == few["persistence"] == expo[1]  # too few points: last value
    assert math.isnan(curve_baselines(s[:0], expo[:0], T)["persistence"])


def test_curve_features_are_causal_and_forward_filled():
    acc = np.full(40, np.nan)
    acc[[4, 9, 14, 19, 24, 29, 34, 39]] = np.linspace(0.3, 0.9, 8)
    f = curve_features(np.arange(40), acc, 40.0)["acc_fit_linear"]
    assert np.isnan(f[:4]).all() and np.isfinite(f[4:]).all()
    assert len(set(f[14:19])) == 1  # constant between evaluations
    g = curve_features(np.arange(40), np.where(np.arange(40) <= 24, acc, np.nan), 40.0)["acc_fit_linear"]
    assert f[:25].tolist() == pytest.approx(g[:25].tolist(), nan_ok=True)  # no look-ahead


def test_metrics_and_bootstrap():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    m = metrics(y, y + 1)
    assert (m["mae"], m["rmse"]) == (1.0, 1.0) and m["r2"] == pytest.approx(1 - 4 / 5)
    groups = np.array(["a", "a", "b", "b"])
    lo, hi = bootstrap_ratio(y, y + 0.5, y + 1.0, groups, n=200)
    assert lo == hi == pytest.approx(0.5)
    rep = compare(y, y + 0.5, {"zero": np.zeros(4), "shift": y + 1.0}, groups, n_boot=100)
    assert rep["best_baseline"] == "shift" and rep["ratio"] == pytest.approx(0.5) and rep["beats_best_baseline"]


def _toy(n=96, H=8, F=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, H, F)).astype(np.float32)
    y = np.stack([x[:, -1, 0] + 0.5 * x[:, :, 1].mean(1), x[:, 0, 2] * 2], 1).astype(np.float32)
    return x, y


def _cfg(kind, **kw):
    return PredictorConfig(kind=kind, features=["a", "b", "c"], targets=["y1", "y2"], window=8, hidden=32, layers=1,
                           dropout=0.0, **kw)  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_each_predictor_overfits_a_tiny_dataset(kind):
    x, y = _toy(48)
    model, hist = train_predictor(_cfg(kind), (x, y), None, TrainConfig(epochs=100, batch_size=48, lr=1e-2, weight_decay=0, patience=100))
    err = np.abs(model.predict(x) - y).mean() / np.abs(y - y.mean(0)).mean()
    assert err < 0.2, (kind, err)
    assert hist[-1]["train_loss"] < 0.1 * hist[0]["train_loss"]


def test_anchor_quantiles_early_stopping_and_save_load(tmp_path):
    x, y = _toy()
    cfg = _cfg("gru", quantiles=[0.1, 0.5, 0.9], anchors={"y1": "a"}, relative=["b"], relative_to="a")
    val = _toy(32, seed=1)
    model, hist = train_predictor(cfg, (x, y), val, TrainConfig(epochs=20, patience=3, batch_size=48))
    assert "val_loss" in hist[0] and len(hist) <= 40
    out = model(torch.as_tensor(x))
    assert out.shape == (len(x), 2, 3)
    assert (out[..., 0] <= out[..., 2] + 1e-4).float().mean() > 0.9  # quantiles mostly ordered
    save_predictor(model, tmp_path / "m", hist)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "history.json", "model.safetensors"]
    back = load_predictor(tmp_path / "m")
    assert np.array_equal(back.predict(x), model.predict(x))
    assert back.cfg.anchors == {"y1": "a"} and back.cfg.quantiles == [0.1, 0.5, 0.9]


def test_untrained_predictor_starts_at_its_anchor():
    x, y = _toy()
    cfg = _cfg("mlp", anchors={"y1": "a"})
    model, _ = train_predictor(cfg, (x, y), None, TrainConfig(epochs=0))
    pred = model.predict(x)
    assert pred[:, 0] == pytest.approx(x[:, -1, 0] + model.cfg.y_mean[0], abs=1e-5)


def test_ensemble_is_the_members_median():
    """Element-wise median of the members: an outlying member does not move it, two members
    give their mean, and members must share features, targets and window."""
    x, y = _toy()
    members = [train_predictor(_cfg("mlp"), (x, y), None, TrainConfig(epochs=2, seed=s))[0] for s in range(3)]
    with torch.no_grad():
        members[2].head.bias += 100.0  # one member far off
    preds = np.stack([m.predict(x) for m in members])
    got = Ensemble(members).predict(x)
    assert got.shape == (len(x), 2) and np.array_equal(got, np.median(preds, 0))
    assert (got >= preds[:2].min(0) - 1e-6).all() and (got <= preds[:2].max(0) + 1e-6).all()  # between the sane two
    assert not np.allclose(preds[0], preds[1])  # seeds differ, so the median is not a copy of one member
    assert Ensemble(members[:2]).predict(x) == pytest.approx(preds[:2].mean(0))
    other = train_predictor(PredictorConfig(kind="mlp", features=["a", "b", "c"], targets=["y1", "y2"], window=4, hidden=8),
                            (x[:, -4:], y), None, TrainConfig(epochs=0))[0]  # fmt: skip
    with pytest.raises(ConfigError, match="same features"):
        Ensemble([members[0], other])


def test_predictor_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown predictor"):
        PredictorConfig(kind="lstm")
    with pytest.raises(ConfigError, match="quantiles"):
        PredictorConfig(quantiles=[1.5])
    with pytest.raises(ConfigError, match="anchor"):
        PredictorConfig(features=["a"], targets=["y"], anchors={"y": "z"})
    with pytest.raises(DataError):
        load_predictor(tmp_path)
    with pytest.raises(DataError, match="no training examples"):
        train_predictor(_cfg("mlp"), (np.zeros((0, 8, 3), np.float32), np.zeros((0, 2), np.float32)), None)


def test_bootstrap_matches_an_explicit_cluster_resample():
    """Groups with different error ratios: the CI must equal resampling whole runs by hand."""
    rng = np.random.default_rng(3)
    groups = np.repeat(np.array(["a", "b", "c", "d"]), [3, 5, 2, 4])
    y = rng.normal(size=len(groups))
    scale = {"a": 0.2, "b": 1.0, "c": 3.0, "d": 0.5}  # model error relative to the baseline's, per run
    base = y + rng.choice([-1.0, 1.0], size=len(y))
    model = y + np.array([scale[g] for g in groups]) * (base - y)
    lo, hi = bootstrap_ratio(y, model, base, groups, n=300, seed=7)
    names = np.unique(groups)
    draws = np.random.default_rng(7).integers(0, len(names), size=(300, len(names)))
    ratios = []
    for d in draws:
        rows = np.concatenate([np.flatnonzero(groups == names[i]) for i in d])
        ratios.append(np.abs(model - y)[rows].sum() / np.abs(base - y)[rows].sum())
    assert (lo, hi) == pytest.approx(tuple(np.quantile(ratios, [0.025, 0.975])))
    assert hi - lo > 0.1


def test_early_stopping_stops_when_validation_stalls():
    x, y = _toy()
    xv, _ = _toy(32, seed=1)
    yv = np.random.default_rng(5).normal(size=(32, 2)).astype(np.float32) * 10  # unlearnable
    _, hist = train_predictor(_cfg("mlp"), (x, y), (xv, yv), TrainConfig(epochs=60, patience=3, batch_size=48))
    assert len(hist) < 60
    best = int(np.argmin([h["val_loss"] for h in hist]))
    assert len(hist) - 1 - best <= 3 + 1  # stopped within `patience` epochs of the best one


def _saved(folder):
    return sorted(p.name for p in folder.iterdir())


def test_saving_replaces_the_predictor_of_the_other_kind(tmp_path):
    """A single model saved where an ensemble was (and back) leaves only its own files, so the
    folder loads as what was saved last; files that are not a predictor's stay."""
    x, y = _toy()
    members = [train_predictor(_cfg("mlp"), (x, y), None, TrainConfig(epochs=1, seed=s)) for s in range(3)]
    single, hist = train_predictor(_cfg("gru"), (x, y), None, TrainConfig(epochs=1))
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    save_predictor(Ensemble([m for m, _ in members]), out, [h for _, h in members], split={"split": {"r": "test"}})
    assert _saved(out) == ["ensemble.json", "member-0", "member-1", "member-2", "notes.txt", "split.json"]
    save_predictor(single, out, hist)
    assert _saved(out) == ["config.json", "history.json", "model.safetensors", "notes.txt"]  # no split given: the old one goes
    back = load_predictor(out)
    assert not isinstance(back, Ensemble) and back.cfg.kind == "gru"
    assert np.array_equal(back.predict(x), single.predict(x))
    save_predictor(Ensemble([m for m, _ in members[:2]]), out)
    assert _saved(out) == ["ensemble.json", "member-0", "member-1", "notes.txt"]
    assert len(load_predictor(out).models) == 2 and read_history(out) == []
    (out / ".saving-killed").mkdir()  # a save killed (SIGKILL) before its cleanup
    (out / ".saving-killed" / "model.safetensors").write_text("half")
    save_predictor(single, out)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [] and load_predictor(out).cfg.kind == "gru"


def test_a_crash_while_saving_never_loads_a_mix(tmp_path, monkeypatch):
    """Killed while writing the new files: the old predictor loads. Killed while moving them
    in: nothing loads (a DataError), never the old model with new files or the reverse."""
    import metalearner.mirror.models as models

    x, y = _toy()
    old = Ensemble([train_predictor(_cfg("mlp"), (x, y), None, TrainConfig(epochs=1, seed=s))[0] for s in range(2)])
    new, _ = train_predictor(_cfg("gru"), (x, y), None, TrainConfig(epochs=1))
    out = tmp_path / "m"
    save_predictor(old, out)

    def crash(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(models, "write_json", crash)
        with pytest.raises(KeyboardInterrupt):
            save_predictor(new, out)
    assert np.array_equal(load_predictor(out).predict(x), old.predict(x))
    assert [p for p in out.iterdir() if p.name.startswith(".")] == []  # the staging folder is gone
    real, calls = models.os.replace, []

    def crash_on_second(src, dst):  # the weights moved into `out`, then a kill before the marker
        if Path(dst).parent == out:
            calls.append(Path(dst).name)
            if len(calls) == 2:
                raise KeyboardInterrupt
        real(src, dst)

    with monkeypatch.context() as m:
        m.setattr(models.os, "replace", crash_on_second)
        with pytest.raises(KeyboardInterrupt):
            save_predictor(new, out)
    assert calls == ["model.safetensors", "config.json"]
    with pytest.raises(DataError, match="not a saved predictor"):
        load_predictor(out)
    save_predictor(new, out)  # a later save recovers the folder
    assert np.array_equal(load_predictor(out).predict(x), new.predict(x))


def _truncate(p):
    p.write_bytes(p.read_bytes()[:40])


@pytest.mark.parametrize("name, corrupt, message", [
    ("model.safetensors", _truncate, "model.safetensors is not a readable safetensors file"),
    ("model.safetensors", lambda p: p.write_text("not safetensors"), "model.safetensors is not a readable safetensors file"),
    ("config.json", lambda p: p.write_text('{"kind": '), "config.json is not valid JSON"),
    ("config.json", lambda p: p.write_text('{"kind": "mlp", "colour": 1}'), "config.json is not a valid predictor config"),
    ("config.json", lambda p: p.write_text('{"kind": "lstm"}'), "config.json is not a valid predictor config"),
    ("config.json", lambda p: p.write_text("[1, 2]"), "config.json is not a valid predictor config"),
    ("config.json", lambda p: p.write_text(p.read_text().replace('"hidden": 32', '"hidden": 16')), "does not match"),
    ("ensemble.json", lambda p: p.write_text("{"), "ensemble.json is not valid JSON"),
    ("ensemble.json", lambda p: p.write_text('{"members": "two"}'), "ensemble.json does not give a number of members"),
    ("ensemble.json", lambda p: p.write_text('{"members": 3}'), "member-2 is not a saved predictor"),
    ("member-1/model.safetensors", _truncate, "member-1/model.safetensors is not a readable"),
    ("member-0/history.json", lambda p: p.write_text("[{"), "history.json is not valid JSON"),
])  # fmt: skip
def test_corrupt_saved_predictor_is_a_data_error_naming_the_file(tmp_path, name, corrupt, message):
    x, y = _toy()
    fits = [train_predictor(_cfg("mlp"), (x, y), None, TrainConfig(epochs=1, seed=s)) for s in range(2)]
    model = Ensemble([m for m, _ in fits]) if "/" in name or name == "ensemble.json" else fits[0][0]
    save_predictor(model, tmp_path, [h for _, h in fits] if isinstance(model, Ensemble) else fits[0][1])
    corrupt(tmp_path / name)
    with pytest.raises(DataError, match=message.replace(".", r"\.")) as e:
        read_history(tmp_path) if name.endswith("history.json") else load_predictor(tmp_path)
    assert "\n" not in str(e.value)


def test_training_reports_progress_per_epoch():
    """``TrainConfig.progress`` hears every epoch, and the whole count on an early stop."""

    class Bar:
        def __init__(self):
            self.calls = []

        def update(self, done, total, **fields):
            self.calls.append((done, total, sorted(fields)))

    x, y = _toy()
    bar = Bar()
    _, hist = train_predictor(_cfg("mlp"), (x, y), None, TrainConfig(epochs=4, progress=bar))
    assert bar.calls == [(e, 4, ["loss", "val"]) for e in range(1, 5)] and len(hist) == 4
    xv, _ = _toy(32, seed=1)
    yv = np.random.default_rng(5).normal(size=(32, 2)).astype(np.float32) * 10  # unlearnable: stops early
    bar = Bar()
    _, hist = train_predictor(_cfg("mlp"), (x, y), (xv, yv), TrainConfig(epochs=60, patience=2, batch_size=48, progress=bar))
    assert len(hist) < 60 and len(bar.calls) == len(hist)
    assert [c[0] for c in bar.calls] == [*range(1, len(hist)), 60]
