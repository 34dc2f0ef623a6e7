"""Sweeps: end to end with local workers, resume after SIGKILL, the lock, failures, pruning,
queries, the CLI and the Ray executor."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from metalearner.errors import ConfigError, MetalearnerWarning
from metalearner.observe import read_run, read_trajectory
from metalearner.tasks.models import ModelConfig
from metalearner.tasks.task import TaskConfig
from metalearner.train.run import RunConfig
from metalearner.parallel import DirectoryLock, DirectoryLocked, InlineExecutor, LocalExecutor
from metalearner.zoo import SuccessiveHalving, load_spec, load_zoo, read_manifest, run_id, run_sweep, sample_runs, summarize_zoo
from metalearner.zoo.cli import zoo_app

TINY = sample_runs(load_spec("tiny"))  # 8 digits runs, two of them diverge


def _check_zoo(out, runs):
    """Every run done exactly once: one directory each, final files, manifest agrees."""
    ids = {run_id(r) for r in runs}
    assert {p.name for p in (out / "runs").iterdir()} == ids
    manifest = read_manifest(out)["runs"]
    for rid in ids:
        meta = read_run(out / "runs" / rid)
        assert meta["status"] in ("complete", "diverged")
        assert manifest[rid]["status"] == meta["status"]
        assert not (out / "runs" / rid / "trajectory.parts").exists()
        traj = read_trajectory(out / "runs" / rid, format="pandas")
        assert traj["step"].tolist() == list(range(len(traj))) and len(traj) == meta["steps"]


def test_tiny_sweep_with_two_workers_then_resume_is_a_no_op(tmp_path):
    out = tmp_path / "zoo"
    with LocalExecutor(workers=2) as ex:
        assert ex.threads_per_worker == max(1, len(os.sched_getaffinity(0)) // 2)
        res = run_sweep(load_spec("tiny"), out, ex, progress=False)
        assert (res.total, res.ran, res.skipped) == (8, 8, 0)
        assert res.counts == {"complete": 6, "diverged": 2}
        _check_zoo(out, TINY)
        log = (out / "runs" / run_id(TINY[0]) / "log.txt").read_text()
        assert "complete after" in log
        again = run_sweep(load_spec("tiny"), out, ex, progress=False)
    assert (again.ran, again.skipped) == (0, 8)

    df = load_zoo(out)
    assert set(df["run_id"]) == {run_id(r) for r in TINY}
    one = df[df["run_id"] == run_id(TINY[0])]
    assert (one["cfg_optimizer"] == TINY[0].optimizer).all() and (one["cfg_lr"] == TINY[0].lr).all()
    assert (one["cfg_width"] == TINY[0].task.model.width).all() and (one["status"] == "complete").all()
    assert set(df.loc[df["cfg_lr"] == 30.0, "status"]) == {"diverged"}
    con = load_zoo(out, format="duckdb")
    n = con.execute("select count(distinct run_id) from zoo where cfg_dataset = 'digits'").fetchone()[0]
    assert n == 8 and len(con.execute("select * from runs").df()) == 8
    runs = summarize_zoo(out)
    assert len(runs) == 8 and runs["val_acc"].max() > 0.9
    assert set(runs.loc[runs["status"] == "diverged", "lr"]) == {30.0}

    bad = run_id(TINY[1])  # one corrupt trajectory: the others stay readable, and the skip is said once
    (out / "runs" / bad / "trajectory.parquet").write_bytes(b"not parquet")
    for read in (load_zoo, summarize_zoo):
        with pytest.warns(MetalearnerWarning, match=f"skipped 1 unreadable run.*{bad}"):
            got = read(out)
        assert set(got["run_id"]) == {run_id(r) for r in TINY} - ({bad} if read is load_zoo else set())


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys
    from metalearner.tasks.models import ModelConfig
    from metalearner.tasks.task import TaskConfig
    from metalearner.train.run import RunConfig
    from metalearner.parallel import LocalExecutor
    from metalearner.zoo import run_sweep

    def runs():
        task = TaskConfig(dataset="digits", batch_size=32, model=ModelConfig(depth=2, width=64))
        return [RunConfig(task=task, optimizer="adam", lr=1e-3, epochs=12, seed=s) for s in range(6)]

    if __name__ == "__main__":
        run_sweep(runs(), sys.argv[1], LocalExecutor(2), progress=False)
    """
)


def _statuses(out):
    found = {}
    for d in (out / "runs").glob("*") if (out / "runs").exists() else []:
        try:
            found[d.name] = json.loads((d / "run.json").read_text())["status"]
        except (OSError, ValueError):
            found[d.name] = "starting"
    return found


def test_resume_after_sigkill_finishes_only_what_is_missing(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(RESUME_SCRIPT)
    out = tmp_path / "zoo"
    proc = subprocess.Popen([sys.executable, str(script), str(out)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            s = _statuses(out)
            if "complete" in s.values() and any(v == "partial" and (out / "runs" / k / "checkpoint.safetensors").exists() for k, v in s.items()):
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        else:
            pytest.fail(f"sweep never had a finished run and a running one past its first epoch: {_statuses(out)}")
        # while it runs, a second sweep into the same directory must refuse
        with pytest.raises(DirectoryLocked, match="in use by another process"):
            run_sweep([], out, InlineExecutor(), progress=False)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers
        proc.wait()
    time.sleep(0.2)
    before = _statuses(out)
    # a run left unfinished: partial, or (when the kill came as the next run began) without its run.json yet
    assert set(before.values()) - {"complete"}, before
    kept = [rid for rid, s in before.items() if s == "partial" and (out / "runs" / rid / "checkpoint.safetensors").exists()]
    assert kept, before
    done = {rid: (out / "runs" / rid / "run.json").stat().st_mtime_ns
            for rid, s in before.items() if s == "complete" and (out / "runs" / rid / "trajectory.parquet").exists()}  # fmt: skip
    assert done

    ns = {}
    exec(compile(RESUME_SCRIPT, "sweep", "exec"), ns)
    runs = ns["runs"]()
    with LocalExecutor(2) as ex:
        res = run_sweep(runs, out, ex, progress=False)
    assert res.skipped == len(done) and res.ran == 6 - len(done)
    assert res.counts == {"complete": 6}
    _check_zoo(out, runs)
    for rid, mtime in done.items():  # finished runs were not run again
        assert (out / "runs" / rid / "run.json").stat().st_mtime_ns == mtime
    # a run killed after an epoch's end continued from it: its log is an uninterrupted run's
    from metalearner.observe import read_trajectory
    from metalearner.train.run import train_run
    from metalearner.zoo.sweep import run_id

    cfg = next(c for c in runs if run_id(c) == kept[0])
    train_run(cfg, tmp_path / "whole")
    a, b = (read_trajectory(d, format="pandas").drop(columns=["wall_time", "run_id"]) for d in (out / "runs" / kept[0], tmp_path / "whole"))
    assert a.equals(b) and not (out / "runs" / kept[0] / "checkpoint.safetensors").exists()
    assert "continuing from the checkpoint of its last epoch's end" in (out / "runs" / kept[0] / "log.txt").read_text()


def test_second_sweep_refuses_while_the_lock_is_held(tmp_path):
    with DirectoryLock(tmp_path):
        with pytest.raises(DirectoryLocked, match=f"pid {os.getpid()}"):
            run_sweep(TINY[:1], tmp_path, InlineExecutor(), progress=False)
    res = run_sweep(TINY[:1], tmp_path, InlineExecutor(), progress=False)  # released: fine
    assert res.counts == {"complete": 1}


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    import metalearner.train.run as run_mod

    real = run_mod.train_run
    bad = TINY[4]

    def flaky(cfg, *a, **kw):
        if cfg == bad:
            raise RuntimeError("boom")
        return real(cfg, *a, **kw)

    monkeypatch.setattr(run_mod, "train_run", flaky)
    res = run_sweep(TINY[4:7], tmp_path, InlineExecutor(), progress=False)
    assert res.counts == {"complete": 2, "failed": 1}
    entry = read_manifest(tmp_path)["runs"][run_id(bad)]
    assert entry["status"] == "failed" and "boom" in entry["error"]
    assert "RuntimeError: boom" in (tmp_path / "runs" / run_id(bad) / "log.txt").read_text()
    monkeypatch.setattr(run_mod, "train_run", real)
    res = run_sweep(TINY[4:7], tmp_path, InlineExecutor(), progress=False)  # failed runs are retried
    assert (res.ran, res.counts) == (1, {"complete": 3})


def _traj(run, fraction, value):
    df = pd.DataFrame({"val_acc": [value]})
    df.attrs.update(run_id=run, fraction=fraction, val_acc=value)
    return df


def test_successive_halving_on_a_synthetic_example(tmp_path):
    sh = SuccessiveHalving(eta=2, min_fraction=0.25)
    assert sh.rungs == [0.25, 0.5]
    sh.setup(tmp_path)
    # rung 0, runs arrive in order: keep the top max(1, n // 2) of those seen so far
    decisions = {r: sh(_traj(r, 0.3, v), None) for r, v in [("a", 0.5), ("b", 0.4), ("c", 0.7), ("d", 0.3), ("e", 0.6)]}
    assert decisions == {"a": False, "b": True, "c": False, "d": True, "e": False}
    assert not sh(_traj("a", 0.35, 0.1), None)  # a rung is judged once per run
    # rung 1: a and c and e continue; NaN (diverged) counts as worst
    assert not sh(_traj("c", 0.5, 0.8), None)
    assert sh(_traj("a", 0.5, float("nan")), None)
    assert sh(_traj("e", 0.5, 0.75), None)  # 3 values, keep 1: 0.8
    assert sorted(p.name for p in (tmp_path / "rungs" / "0").iterdir()) == [f"{r}.json" for r in "abcde"]


def test_successive_halving_does_not_judge_a_continued_run_again_at_a_rung_it_recorded(tmp_path):
    sh = SuccessiveHalving(eta=2, min_fraction=0.25)
    sh.setup(tmp_path)
    assert not sh(_traj("a", 0.3, 0.5), None)
    again = SuccessiveHalving(eta=2, min_fraction=0.25)  # the worker that continues run a after a kill
    again.setup(tmp_path)
    assert not again(_traj("a", 0.6, 0.9), None)  # its first evaluation after the checkpoint lies past both rungs
    read = lambda k: json.loads((tmp_path / "rungs" / k / "a.json").read_text())["val_acc"]  # noqa: E731
    assert read("0") == 0.5 and read("1") == 0.9


def test_sweep_with_halving_prunes_and_keeps_trajectories(tmp_path):
    task = TaskConfig(dataset="digits", batch_size=64, model=ModelConfig(depth=1, width=16))
    lrs = [1e-4, 1e-5, 3e-3, 2e-5]  # arriving in this order, see the synthetic example
    runs = [RunConfig(task=task, optimizer="adam", lr=lr, epochs=4) for lr in lrs]
    res = run_sweep(runs, tmp_path, InlineExecutor(), pruner=SuccessiveHalving(eta=2, min_fraction=0.25), progress=False)
    manifest = read_manifest(tmp_path)["runs"]
    status = {r.lr: manifest[run_id(r)]["status"] for r in runs}
    assert status == {1e-4: "complete", 1e-5: "pruned", 3e-3: "complete", 2e-5: "pruned"}
    assert res.counts == {"complete": 2, "pruned": 2}
    pruned = runs[1]
    meta = read_run(tmp_path / "runs" / run_id(pruned))
    assert meta["status"] == "stopped" and meta["final"]["stopped_at_step"] < meta["final"]["steps"] + 1
    assert len(read_trajectory(tmp_path / "runs" / run_id(pruned))) == meta["steps"] < 4 * 24
    again = run_sweep(runs, tmp_path, InlineExecutor(), pruner=SuccessiveHalving(eta=2, min_fraction=0.25), progress=False)
    assert again.skipped == 4  # pruned runs are done


def test_cli_runs_resumes_and_summarises(tmp_path):
    app = typer.Typer()
    app.add_typer(zoo_app, name="zoo")
    runner = CliRunner()
    out = tmp_path / "zoo"
    args = ["zoo", "--spec", "tiny", "--set", "optimizer=adam", "--set", "width=[16]", "--out", str(out), "--workers", "0"]
    r = runner.invoke(app, [*args, "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "2 runs (0 already done): 2 complete" in r.output
    r = runner.invoke(app, [*args, "--no-progress"])
    assert "2 runs (2 already done)" in r.output
    r = runner.invoke(app, ["zoo", "summary", str(out), "--csv", str(tmp_path / "s.csv"), "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.strip().splitlines()]
    assert len(rows) == 2 and {row["optimizer"] for row in rows} == {"adam"}
    assert all(isinstance(row[c], int) for row in rows for c in ("n_params", "steps_done", "width"))
    csv = pd.read_csv(tmp_path / "s.csv")
    assert len(csv) == 2
    # digits (64 inputs) -> 16 hidden -> 10 classes
    assert csv["n_params"].tolist() == [64 * 16 + 16 + 16 * 10 + 10] * 2
    lines = (tmp_path / "s.csv").read_text().splitlines()
    header = lines[0].split(",")
    for line in lines[1:]:
        cell = dict(zip(header, line.split(",")))
        assert cell["steps_done"].isdigit() and cell["width"] == "16" and cell["steps"] == ""  # integers, a missing one empty
    r = runner.invoke(app, ["zoo", "--spec", "mnist100", "--dry-run"])
    assert r.exit_code == 0 and r.output.strip().endswith("100 runs")
    r = runner.invoke(app, ["zoo", "--spec", "nope", "--out", str(out)])
    assert isinstance(r.exception, ConfigError) and "nope" in str(r.exception)


def test_ray_executor_on_a_tiny_sweep(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'metalearner[ray]')")
    from metalearner.parallel import RayExecutor

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ex = RayExecutor()
        res = run_sweep(TINY[:4], tmp_path, ex, progress=False)
        assert ex.workers == 2
        assert res.counts == {"complete": 2, "diverged": 2}
        _check_zoo(tmp_path, TINY[:4])
        got = dict(ex.map_unordered(int, ["3", "x"]))
        assert got["3"] == 3 and isinstance(got["x"], ValueError)
    finally:
        ray.shutdown()


def test_a_manifest_that_is_not_a_json_object_is_one_error(tmp_path):
    from metalearner.errors import DataError

    for text, what in (("[]", "a JSON object, got a list"), ('{"runs": [1]}', "its 'runs' is not a JSON object")):
        (tmp_path / "manifest.json").write_text(text)
        with pytest.raises(DataError, match=re.escape(what)):
            read_manifest(tmp_path)
