"""The mirror CLI's answers to user mistakes (one line, non-zero exit) and its progress."""

import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from metalearner.cli import app
from metalearner.errors import ConfigError, DataError
from metalearner.mirror.models import PredictorConfig, TrainConfig, save_predictor, train_predictor

runner = CliRunner()


@pytest.mark.parametrize("args, message", [
    (["dataset", "build", "ZOO", "--k", "-5"], "--k must be >= 1, got -5"),
    (["dataset", "build", "ZOO", "--k", "0"], "--k must be >= 1, got 0"),
    (["dataset", "build", "ZOO", "--ahead", "-1"], "--ahead must be >= --k (20), got -1"),
    (["dataset", "build", "ZOO", "--k", "30", "--ahead", "10"], "--ahead must be >= --k (30), got 10"),
    (["dataset", "build", "ZOO", "--acc-threshold", "5"], "--acc-threshold must be an accuracy in (0, 1], got 5.0"),
    (["dataset", "build", "ZOO", "--acc-threshold", "0"], "--acc-threshold must be an accuracy in (0, 1], got 0.0"),
    (["mirror", "train", "DATA", "--window", "0"], "--window must be >= 1, got 0"),
    (["mirror", "train", "DATA", "--hidden", "0"], "--hidden must be >= 1, got 0"),
    (["mirror", "train", "DATA", "--layers", "0"], "--layers must be >= 1, got 0"),
    (["mirror", "train", "DATA", "--epochs", "-1"], "--epochs must be >= 1, got -1"),
    (["mirror", "train", "DATA", "--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["mirror", "train", "DATA", "--stride", "0"], "--stride must be >= 1, got 0"),
    (["mirror", "train", "DATA", "--members", "0"], "--members must be >= 1, got 0"),
    (["mirror", "train", "DATA", "--lr", "0"], "--lr must be > 0, got 0.0"),
    (["mirror", "train", "DATA", "--kind", "transformer", "--hidden", "6"], "--hidden must be a multiple of 4 for a transformer"),
    (["mirror", "train", "DATA", "--kind", "lstm"], "--kind must be one of mlp, gru, transformer, got 'lstm'"),
    (["mirror", "train", "DATA", "--split", "seed"], "--split must be one of run, arch, task, optimizer, got 'seed'"),
    (["mirror", "train", "DATA", "--quantiles", "0.5,1.5"], "--quantiles must be numbers in (0, 1)"),
    (["mirror", "eval", "MODEL", "DATA", "--at-fraction", "2"], "--at-fraction must be a fraction of the budget in (0, 1], got 2.0"),
    (["mirror", "eval", "MODEL", "DATA", "--at-fraction", "0"], "--at-fraction must be a fraction of the budget in (0, 1], got 0.0"),
    (["mirror", "eval", "MODEL", "DATA", "--side", "train"], "--side must be test or val, got 'train'"),
])  # fmt: skip
def test_out_of_range_options_are_config_errors(tmp_path, args, message):
    """Checked before any file is read (the paths here do not exist)."""
    args = [str(tmp_path / a) if a.isupper() else a for a in args]
    out = ["--out", str(tmp_path / "out")] if args[1] in ("build", "train") else []
    r = runner.invoke(app, [*args, *out])
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError), r.output
    assert message in str(r.exception) and "\n" not in str(r.exception)
    assert not (tmp_path / "out").exists()


def _model(folder):
    x = np.random.default_rng(0).normal(size=(32, 4, 2)).astype(np.float32)
    cfg = PredictorConfig(kind="mlp", features=["a", "b"], targets=["smooth_loss"], window=4, hidden=8, layers=1)
    model, hist = train_predictor(cfg, (x, x[:, -1, :1]), None, TrainConfig(epochs=1))
    return save_predictor(model, folder, hist, split={"split": {}})


def test_corrupt_model_in_eval_is_one_line(tmp_path):
    """Through the real entry point: a truncated model.safetensors or a config.json that is
    not JSON prints one line naming the file and exits 2, no traceback."""
    (_model(tmp_path / "m") / "model.safetensors").write_bytes(b"\x10\x00")
    (_model(tmp_path / "c") / "config.json").write_text('{"kind": ')
    for name, file in (("m", "model.safetensors"), ("c", "config.json")):
        r = runner.invoke(app, ["mirror", "eval", str(tmp_path / name), str(tmp_path / "data")])
        assert isinstance(r.exception, DataError) and f"{tmp_path / name / file} is not" in str(r.exception)
    r = subprocess.run([sys.executable, "-m", "metalearner.cli", "mirror", "eval", str(tmp_path / "m"), str(tmp_path / "data")],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'm' / 'model.safetensors'} is not a readable safetensors file: ")


def test_member_epochs_is_one_bar_over_the_members():
    from metalearner.mirror.cli import _MemberEpochs

    class Bar:
        def __init__(self):
            self.calls = []

        def update(self, done, total, **fields):
            self.calls.append((done, total, fields.get("member")))

    bar = Bar()
    members = _MemberEpochs(bar, 2)
    for e in (1, 2, 3):  # member 1 runs all 3 epochs
        members.update(e, 3)
    for e in (1, 3):  # member 2 stops early after one
        members.update(e, 3)
    assert bar.calls == [(1, 6, 1), (2, 6, 1), (3, 6, 1), (4, 6, 2), (6, 6, 2)]
