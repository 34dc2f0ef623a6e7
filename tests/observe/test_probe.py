"""The probe: hand-checked rows, the on-disk format, crash safety, exports."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalearner.atomic import atomic_path
from metalearner.errors import ConfigError, DataError
from metalearner.observe import COLUMNS, EXTENDED_COLUMNS, SCHEMA_VERSION, Probe, export_trajectory, read_run, read_trajectory


def make(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    x = torch.randn(16, 4)
    y = (x[:, 0] > 0).long()
    return model, x, y


def train_steps(model, opt, probe, x, y, n):
    for i in range(n):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        probe.observe(loss, logits=logits, targets=y, epoch=i // 2, batch=i % 2)
        opt.step()


def test_rows_match_values_computed_by_hand(tmp_path):
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    probe = Probe(model, opt, out_dir=tmp_path, meta={"task": "toy"})
    expected = []
    for i in range(3):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        before = [p.detach().clone() for p in model.parameters()]
        grads = [p.grad.clone() for p in model.parameters()]
        probe.observe(loss, logits=logits, targets=y, epoch=0, batch=i)
        opt.step()
        update = [p.detach() - b for p, b in zip(model.parameters(), before)]

        def norm(ts):
            return math.sqrt(sum(float((t.double() ** 2).sum()) for t in ts))

        expected.append({
            "loss": float(loss.detach()), "train_acc": float((logits.argmax(1) == y).float().mean()),
            "grad_norm": norm(grads), "weight_norm": norm(before), "update_norm": norm(update),
            "layer0_grad": norm(grads[:2]),
        })  # fmt: skip
        if i == 1:
            probe.log_eval(0.5, 0.75)
    probe.close()

    df = read_trajectory(tmp_path, format="pandas")
    assert list(df.columns) == list(COLUMNS)
    assert df["step"].tolist() == [0, 1, 2]
    assert df["batch"].tolist() == [0, 1, 2]
    for row, exp in zip(df.itertuples(), expected):
        for k in ("loss", "train_acc", "grad_norm", "weight_norm", "update_norm"):
            assert math.isclose(getattr(row, k), exp[k], rel_tol=1e-5, abs_tol=1e-7), k
        assert math.isclose(row.update_ratio, exp["update_norm"] / exp["weight_norm"], rel_tol=1e-5)
        assert math.isclose(row.grad_norm_layers[0], exp["layer0_grad"], rel_tol=1e-5)
    assert math.isnan(df["loss_delta"][0])
    assert math.isclose(df["loss_delta"][1], expected[1]["loss"] - expected[0]["loss"], rel_tol=1e-4)
    assert df["val_acc"].isna().tolist() == [True, False, True]
    assert df["val_acc"][1] == 0.75
    assert (df["lr"] == 0.1).all() and (df["momentum"] == 0.5).all()
    assert set(df["optimizer"]) == {"SGD"} and set(df["task"]) == {"toy"}
    assert (df["n_params"] == sum(p.numel() for p in model.parameters())).all()
    assert df["wall_time"].is_monotonic_increasing

    meta = read_run(tmp_path)
    assert meta["status"] == "complete" and meta["steps"] == 3
    assert meta["layer_names"] == ["0", "2"] and meta["schema_version"] == SCHEMA_VERSION
    md = pq.read_schema(tmp_path / "trajectory.parquet").metadata
    assert md[b"metalearner.schema_version"] == str(SCHEMA_VERSION).encode()
    assert not (tmp_path / "trajectory.parts").exists()


def test_adam_momentum_is_beta1_and_works_without_observe():
    model, x, y = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.99))
    probe = Probe(model, opt)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()  # a training loop that never calls probe.observe
    table = probe.table().to_pandas()
    probe.close()
    assert (table["momentum"] == 0.8).all() and (table["lr"] == 1e-2).all()
    assert table["loss"].isna().all() and (table["grad_norm"] > 0).all()


def test_hooks_are_removed_on_close():
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt)
    train_steps(model, opt, probe, x, y, 2)
    probe.close()
    train_steps(model, opt, probe, x, y, 2)
    assert probe.step == 2


def test_chunks_and_extended_columns(tmp_path):
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, out_dir=tmp_path, extended=True, chunk_size=4)
    train_steps(model, opt, probe, x, y, 10)
    # parts are written while running, a partial run is readable
    assert len(list((tmp_path / "trajectory.parts").glob("part-*.parquet"))) == 2
    assert read_run(tmp_path)["status"] == "partial"
    assert len(read_trajectory(tmp_path)) == 8
    probe.close()
    df = read_trajectory(tmp_path, format="pandas")
    assert len(df) == 10 and df["step"].tolist() == list(range(10))
    assert list(df.columns) == list(COLUMNS) + list(EXTENDED_COLUMNS)
    assert np.isfinite(df["grad_cos"][1:]).all() and np.isnan(df["grad_cos"][0])


def test_exports_round_trip(tmp_path):
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Probe(model, opt, out_dir=tmp_path / "run") as probe:
        train_steps(model, opt, probe, x, y, 5)
    df = read_trajectory(tmp_path / "run", format="pandas")
    import pandas as pd

    csv = pd.read_csv(export_trajectory(tmp_path / "run", tmp_path / "t.csv"))
    assert np.allclose(csv["loss"], df["loss"], rtol=1e-6)
    assert json.loads(csv["grad_norm_layers"][0]) == pytest.approx(list(df["grad_norm_layers"][0]), rel=1e-6)
    npz = np.load(export_trajectory(tmp_path / "run", tmp_path / "t.npz"))
    assert npz["grad_norm_layers"].shape == (5, 2)
    assert np.allclose(npz["update_norm"], df["update_norm"])
    with pytest.raises(DataError, match="csv or .npz"):
        export_trajectory(tmp_path / "run", tmp_path / "t.xlsx")


def test_reading_a_non_run_fails_clearly(tmp_path):
    with pytest.raises(DataError, match="run directory"):
        read_run(tmp_path)
    with pytest.raises(DataError, match="run directory"):
        read_trajectory(tmp_path)
    (tmp_path / "run.json").write_text("[1, 2]")  # valid JSON, not what a probe writes
    with pytest.raises(DataError, match="run.json is not what metalearner writes there \\(a JSON object, got a list\\)"):
        read_run(tmp_path)


def test_atomic_path_gives_ordinary_permissions_even_to_writers_that_replace_the_file(tmp_path):
    from safetensors.torch import save_file

    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"x": torch.zeros(2)}, str(tmp))  # safetensors replaces the file it writes (0600)
    finally:
        os.umask(umask)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


KILLED_RUN = textwrap.dedent(
    """
    import sys, torch, torch.nn.functional as F
    from torch import nn
    from metalearner.observe import Probe
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = Probe(model, opt, out_dir=sys.argv[1], chunk_size=50)
    x = torch.randn(32, 4); y = (x[:, 0] > 0).long()
    step = 0
    while True:
        logits = model(x); loss = F.cross_entropy(logits, y)
        opt.zero_grad(); loss.backward()
        probe.observe(loss, logits=logits, targets=y)
        opt.step(); step += 1
        if step == 120:
            print("ready", flush=True)
    """
)


def test_sigkill_leaves_a_readable_partial_run(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    meta = read_run(run)
    assert meta["status"] == "partial"
    table = read_trajectory(run)
    assert len(table) >= 100 and len(table) % 50 == 0
    assert table.column("step").to_pylist() == list(range(len(table)))
    assert not (run / "trajectory.parquet").exists()


def test_probe_in_a_users_loop_fills_run_json_and_columns(tmp_path):
    """What a hand-written loop gives the probe is enough for `inspect`: the last evaluation
    lands in final, the architecture is read off the model, the task is what the user says."""
    from metalearner.observe import read_run, read_trajectory, summarize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, out_dir=tmp_path, task="my-data")
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    for _ in range(3):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        probe.observe(loss, logits=logits, targets=y)
        opt.step()
    probe.log_eval(0.9, 0.6)
    probe.close()
    meta, df = read_run(tmp_path), read_trajectory(tmp_path, format="pandas")
    assert meta["final"] == {"val_loss": 0.9, "val_acc": 0.6, "steps": 3} and meta["task"] == "my-data"
    assert (df["task"] == "my-data").all() and (df["depth"] == 2).all() and (df["width"] == 16).all()
    assert (df["activation"] == "tanh").all()
    assert summarize(tmp_path)["final/val_acc"] == 0.6


def test_probe_refuses_a_file_as_its_run_directory(tmp_path):
    from metalearner.errors import ConfigError

    f = tmp_path / "file"
    f.write_text("x")
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        Probe(model, torch.optim.SGD(model.parameters(), lr=0.1), out_dir=f)


def test_probe_refuses_to_replace_a_run_unless_told(tmp_path):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = Probe(model, opt, out_dir=tmp_path, task="first")
    for _ in range(3):
        loss = model(torch.ones(1, 2)).sum()
        opt.zero_grad()
        loss.backward()
        first.observe(loss)
        opt.step()
    first.close("complete")
    with pytest.raises(ConfigError, match="already holds a run; pass overwrite=True"):
        Probe(model, opt, out_dir=tmp_path, task="second")
    assert read_run(tmp_path)["task"] == "first" and read_trajectory(tmp_path).num_rows == 3  # untouched
    second = Probe(model, opt, out_dir=tmp_path, task="second", overwrite=True)
    second.close("complete")
    assert read_run(tmp_path)["task"] == "second" and read_trajectory(tmp_path).num_rows == 0
    with pytest.raises(ConfigError, match="format must be arrow or pandas"):
        read_trajectory(tmp_path, format="bogus")


def test_probe_contract_edges(tmp_path):
    """Several param groups log their size-weighted lr; an evaluation logged after a flush
    lands on its step; a second close keeps the final metrics; bad inputs fail at once."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters(), "lr": 0.1}])
    probe = Probe(model, opt, out_dir=tmp_path / "run")
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    train_steps(model, opt, probe, x, y, 3)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    probe.table()  # flushes the three steps
    probe.log_eval(0.5, 0.75)
    with pytest.raises(ConfigError, match="one-element"):
        probe.observe(F.cross_entropy(model(x), y, reduction="none"))
    with pytest.raises(ConfigError, match="targets of shape"):
        probe.observe(loss, logits=logits, targets=y[:3])
    probe.close(final={"test_acc": 0.9})
    probe.close()
    table = read_trajectory(tmp_path / "run", format="pandas")
    assert table["lr"].iloc[0] == pytest.approx(0.1 * 27 / (40 + 27))
    assert table["val_acc"].iloc[-1] == pytest.approx(0.75) and table["val_acc"].iloc[:-1].isna().all()
    assert read_run(tmp_path / "run")["final"]["test_acc"] == 0.9
    with pytest.raises(ConfigError, match="chunk_size"):
        Probe(model, opt, chunk_size=0)


def test_an_unusable_output_path_is_named_as_given(tmp_path):
    from metalearner.atomic import writable_folder, write_json

    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        write_json(tmp_path / "folder", {})
    assert e.value.filename == str(tmp_path / "folder")  # not the temporary file beside it
    (tmp_path / "afile").write_text("")
    with pytest.raises(FileExistsError):
        writable_folder(tmp_path / "afile")
    assert writable_folder(tmp_path / "new" / "deep") == tmp_path / "new" / "deep" and (tmp_path / "new" / "deep").is_dir()


def test_figure_paths_are_checked_before_the_work(tmp_path):
    from metalearner.errors import ConfigError
    from metalearner.report.paths import figure_path

    assert figure_path(tmp_path / "sub" / "curves") == tmp_path / "sub" / "curves.png" and (tmp_path / "sub").is_dir()
    assert figure_path(tmp_path / "c.pdf").suffix == ".pdf"
    with pytest.raises(ConfigError, match="use one of"):
        figure_path(tmp_path / "c.txt")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ConfigError, match="it is a folder"):
        figure_path(tmp_path / "d.png")
