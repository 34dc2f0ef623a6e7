"""The command line, as a user runs it."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from metalearner.cli import app
from metalearner.observe import read_run, read_trajectory

runner = CliRunner()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metalearner.cli", *args], capture_output=True, text=True, timeout=300)


def test_train_inspect_export_on_real_mnist(shared_data, tmp_path):
    out = tmp_path / "run"
    r = cli("train", "--task", "mnist", "--n-train", "2000", "--epochs", "1", "--width", "32",
            "--data-dir", str(shared_data), "--out", str(out), "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = r.stdout.strip().splitlines()[-1]
    assert summary.startswith("complete, 16 steps (1.00 epochs)") and "test acc" in summary
    assert read_run(out)["status"] == "complete"
    assert len(read_trajectory(out)) == 16

    r = runner.invoke(app, ["inspect", str(out), "--plot", str(tmp_path / "curves.png")])
    assert r.exit_code == 0, r.output
    assert "status" in r.output and "complete" in r.output and "final/test_acc" in r.output
    assert (tmp_path / "curves.png").stat().st_size > 10_000

    r = runner.invoke(app, ["export", str(out), str(tmp_path / "t.csv")])
    assert r.exit_code == 0 and (tmp_path / "t.csv").exists()


def test_data_dir_from_environment(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("METALEARNER_DATA", str(shared_data))
    r = runner.invoke(app, ["train", "--task", "fashion_mnist", "--n-train", "500", "--steps", "3",
                            "--width", "16", "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert read_run(tmp_path)["task"].startswith("fashion")


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--optimizer", "adamax"], "unknown method 'adamax'"),
        (["train", "--activation", "swish"], "unknown activation 'swish'"),
        (["train", "--task", "cifar"], "unknown"),
        (["train", "--lr", "-1", "--task", "moons"], "learning rate"),
        (["inspect", "/nonexistent/run"], "not a run directory"),
        (["bench", "--suite", "huge", "--out", "/tmp/x"], "unknown suite 'huge'"),
        (["bench", "--suite", "quick"], "give --out DIR"),
        (["bench", "--suite", "quick", "--out", "{tmp}/b", "--methods", "adam,sgdd"], "suite 'quick' has no method sgdd"),
        (["bench", "--suite", "quick", "--out", "{tmp}/b", "--cells", "mnist/mlp"], "suite 'quick' has no cell mnist/mlp"),
        (["bench", "report", "/nonexistent/bench"], "no benchmark results"),
        (["meta-train", "--kind", "opt2vecc", "--out", "{tmp}/meta"], "unknown kind 'opt2vecc'"),
        (["meta-train", "--kind", "learned", "--device", "cuda", "--out", "{tmp}/meta"], "--kind learned runs on the CPU"),
        (["meta-train", "--kind", "opt2vec", "--scales", "global", "--out", "{tmp}/meta"], "--scales is for --kind learned"),
        (["meta-train", "--kind", "learned", "--scales", "layer", "--out", "{tmp}/meta"], "unknown scales 'layer'"),
        (["train", "--data-dir", "{tmp}/nonexistent/data"], "data directory {tmp}/nonexistent/data does not exist"),
        (["train", "--task", "moons", "--epochs", "0"], "epochs must be a positive number, got 0"),
        (["train", "--task", "moons", "--steps", "0"], "steps must be >= 1"),
        (["train", "--task", "moons", "--target-acc", "97"], "(a fraction: 0.97 for 97%)"),
        (["train", "--task", "moons", "--optimizer", "sgd", "--momentum", "0.9"], "sgd has no momentum"),
        (["train", "--task", "moons", "--optimizer", "opt2vec+controller"], "has a learned part of its own"),
        (["train", "--task", "moons", "--optimizer", "adamw_cosine+controller"], "its own cosine schedule"),
        (["tower", "--task", "moons", "--steps", "2", "--plot", "{tmp}/levels.txt"], "cannot write a figure to {tmp}/levels.txt"),
        (["fewshot", "--task", "sinusoid", "--iterations", "1", "--plot", "{tmp}/adapt.txt"], "cannot write a figure"),
        (["zoo", "summary", "{tmp}", "--top", "-1"], "--top must be >= 0"),
        (["zoo", "--set", "dataset=moons", "--n-runs", "3", "--out", "{tmp}/z"], "n_runs is for sampling = 'random'"),
        (["zoo", "--set", "dataset=moons", "--prune", "halving", "--eta", "nan", "--out", "{tmp}/z"], "needs eta > 1"),
        (["zoo", "--out", "{tmp}/z"], "give the sweep with --spec"),
        (["lopt", "analyse", "--steps", "10", "--out", "{tmp}/a"], "--steps must be >= 48"),
        (["lopt", "ship-learned"], "give an engine folder to ship, or --fan-in-power"),
        (["lopt", "ship-learned", "--fan-in-power", "0.5", "--fan-in-scope", "hidden"], "--fan-in-scope one of all, input"),
        (["lopt", "ship-learned", "--fan-in-power", "nan"], "--fan-in-power must be a finite number >= 0"),
        (["lopt", "ship-learned", "--fan-in-scope", "input"], "--fan-in-scope needs --fan-in-power"),
    ],
)
def test_user_mistakes_print_one_line_and_exit_2(args, message, tmp_path):
    args, message = [a.format(tmp=tmp_path) for a in args], message.format(tmp=tmp_path)
    r = cli(*args, "--out", str(tmp_path)) if args[0] == "train" else cli(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not (tmp_path / "nonexistent").exists()  # nothing created at a mistyped path


def test_an_output_path_under_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    for args in (["train", "--task", "moons", "--steps", "2", "--out", f"{tmp_path}/afile/sub"],
                 ["bench", "--suite", "smoke", "--out", f"{tmp_path}/afile"]):  # fmt: skip
        r = cli(*args)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: cannot use"), r.stderr


def test_a_bad_figure_path_fails_before_the_work(tmp_path):
    """The figure's path is checked first: a run that would end in a failed savefig does not start."""
    (tmp_path / "afile").write_text("")
    for args in (["tower", "--task", "moons", "--steps", "2000", "--plot", f"{tmp_path}/afile/levels.png"],
                 ["fewshot", "--task", "sinusoid", "--iterations", "5000", "--plot", f"{tmp_path}/afile/adapt.png"]):  # fmt: skip
        r = cli(*args)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: cannot use {tmp_path}/afile"), r.stderr


def test_inspect_plots_to_the_path_it_reports(tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--task", "moons", "--steps", "5", "--out", str(run), "--no-progress").returncode == 0
    r = cli("inspect", str(run), "--plot", str(tmp_path / "figs" / "curves"))  # no suffix, a folder not made yet
    assert r.returncode == 0 and f"plot written to {tmp_path / 'figs' / 'curves.png'}" in r.stdout
    assert (tmp_path / "figs" / "curves.png").stat().st_size > 1000


def test_corrupt_or_foreign_trajectories_are_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    assert cli("train", "--task", "moons", "--steps", "5", "--out", str(run), "--no-progress").returncode == 0
    for content, message in ((None, "is not a readable Parquet file"), (pa.table({"x": [1, 2]}), "lacks the column(s) step, loss, val_acc")):
        if content is None:
            (run / "trajectory.parquet").write_text("not parquet")
        else:
            pq.write_table(content, run / "trajectory.parquet")
        for args in (["inspect", str(run)], ["export", str(run), str(tmp_path / "t.csv")]):
            r = cli(*args)
            lines = [line for line in r.stderr.splitlines() if line.strip()]
            assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "t.csv").exists()


def test_a_corrupt_run_in_a_zoo_is_skipped_with_a_one_line_warning(tmp_path):
    """One unreadable trajectory among several: the summary and the data set keep the others and say which they skipped."""
    spec = tmp_path / "s.toml"
    spec.write_text('sampling = "random"\nn_runs = 3\n[space]\ndataset = "moons"\nsteps = 6\nlr = { log_uniform = [0.001, 0.1] }\n')
    zoo = tmp_path / "z"
    assert cli("zoo", "--spec", str(spec), "--out", str(zoo), "--workers", "0", "--no-progress").returncode == 0
    bad = sorted((zoo / "runs").iterdir())[0]
    (bad / "trajectory.parquet").write_text("not parquet")
    for args in (["zoo", "summary", str(zoo)], ["dataset", "build", str(zoo), "--out", str(tmp_path / "ds")]):
        r = cli(*args)
        warned = [line for line in r.stderr.splitlines() if "unreadable" in line]
        assert r.returncode == 0, r.stderr
        assert len(warned) == 1 and warned[0].startswith("warning: ") and "skipped 1 unreadable run(s)" in warned[0], r.stderr
        assert bad.name in warned[0] and "Traceback" not in r.stderr
    import pandas as pd

    rows = pd.read_parquet(tmp_path / "ds" / "rows.parquet")
    assert bad.name not in set(rows["run_id"]) and rows["run_id"].nunique() == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_an_output_path_that_cannot_be_made_is_one_line():
    r = cli("zoo", "--set", "dataset=moons", "--set", "steps=2", "--out", "/proc/nonexistent/zoo")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: cannot use /proc/nonexistent"), r.stderr


def test_zoo_folders_grow_but_do_not_mix(tmp_path):
    from metalearner.atomic import write_json
    from metalearner.zoo import read_manifest

    write_json(tmp_path / "manifest.json", {"schema_version": 1, "runs": {"0123456789ab": {}}, "spec": {"name": "other"}})
    r = cli("zoo", "--set", "dataset=moons", "--out", str(tmp_path))
    assert r.returncode == 2 and "holds 1 run(s) this sweep would not make" in r.stderr
    spec = tmp_path / "s.toml"
    spec.write_text('sampling = "random"\nn_runs = 2\n[space]\ndataset = "moons"\nsteps = 2\nlr = { log_uniform = [0.001, 0.1] }\n')
    zoo = ["zoo", "--spec", str(spec), "--out", str(tmp_path / "z"), "--no-progress"]
    assert cli(*zoo).returncode == 0
    first = set(read_manifest(tmp_path / "z")["runs"])
    r = cli(*zoo, "--n-runs", "3")  # the same draws and one more: the zoo grows
    assert r.returncode == 0, r.stderr
    assert first < set(read_manifest(tmp_path / "z")["runs"])
    assert cli(*zoo).returncode == 2  # and the smaller sweep no longer makes every run it holds
    r = cli("zoo", "--spec", str(spec), "--sampling", "grid", "--set", "lr=[0.1,0.01]", "--dry-run")  # its n_runs dropped
    assert r.returncode == 0 and r.stdout.strip().endswith("2 runs"), r.stderr
    spec.write_text('name = "empty"\n')
    r = cli("zoo", "--spec", str(spec), "--out", str(tmp_path / "e"))
    assert r.returncode == 2 and "has an empty or missing [space] table" in r.stderr
    assert cli("zoo", "--spec", str(spec), "--set", "dataset=moons", "--dry-run").returncode == 0  # --set gives it one


def test_ctrl_c_says_interrupted(monkeypatch, capsys):
    import typer

    from metalearner import cli as cli_module

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "app", typer.Typer())
    cli_module.app.command()(interrupted)
    monkeypatch.setattr(sys, "argv", ["metalearner"])
    with pytest.raises(SystemExit) as e:
        cli_module.main()
    assert e.value.code == 130 and "interrupted" in capsys.readouterr().err


def test_a_command_exit_code_is_the_process_exit_code(monkeypatch):
    import typer

    from metalearner import cli as cli_module

    def failing() -> None:
        raise typer.Exit(3)

    monkeypatch.setattr(cli_module, "app", typer.Typer())
    cli_module.app.command()(failing)
    with pytest.raises(SystemExit) as e:
        monkeypatch.setattr(sys, "argv", ["metalearner"])
        cli_module.main()
    assert e.value.code == 3


def test_meta_train_is_one_top_level_command():
    assert cli("meta-train", "--help").returncode == 0
    r = cli("lopt", "meta-train", "--help")
    assert r.returncode == 2 and "No such command" in r.stderr


def test_usage_errors_show_usage_without_a_traceback():
    r = cli("train", "--no-such-flag")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "No such option" in r.stderr


def test_offline_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["train", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--no-progress"])
    assert r.exit_code != 0
    assert "could not be downloaded" in str(r.exception) and "--data-dir" not in str(r.exception)


def test_zoo_results_go_to_stdout_and_progress_to_stderr(tmp_path):
    zoo = tmp_path / "zoo"
    r = cli("zoo", "--spec", "tiny", "--set", "optimizer=adam", "--set", "width=[16]", "--out", str(zoo), "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert "2 runs (0 already done): 2 complete" in r.stdout and "best runs" in r.stdout
    assert "best runs" not in r.stderr
    r = cli("zoo", "summary", str(zoo))
    assert r.returncode == 0, r.stderr
    assert "2 runs: 2 complete" in r.stdout and "best runs" in r.stdout and r.stderr == ""


def test_train_refuses_a_file_or_an_existing_run_as_out_unless_overwrite(tmp_path):
    f = tmp_path / "file"
    f.write_text("mine")
    args = ["train", "--task", "moons", "--width", "8", "--steps", "3", "--no-progress"]
    r = cli(*args, "--out", str(f))
    assert r.returncode == 2 and "Traceback" not in r.stderr and f.read_text() == "mine"
    assert r.stderr.strip().splitlines() == [f"error: {f} exists and is not a directory; choose another --out"]
    out = tmp_path / "run"
    assert cli(*args, "--out", str(out)).returncode == 0
    first = read_run(out)["run_id"]
    r = cli(*args, "--out", str(out))
    assert r.returncode == 2 and "already holds a run; pass --overwrite" in r.stderr and read_run(out)["run_id"] == first
    r = cli(*args, "--out", str(out), "--overwrite")
    assert r.returncode == 0 and read_run(out)["run_id"] != first


def test_train_continues_an_interrupted_run_of_the_same_settings(tmp_path):
    """Interrupted after its first epoch (as Ctrl-C would), the same command continues it and
    ends as an uninterrupted run; --no-resume refuses it, as before resuming existed."""
    from metalearner.tasks import ModelConfig, TaskConfig
    from metalearner.train import RunConfig, train_run

    class Interrupt(Exception):
        pass

    class KillAfterFirstEpoch:
        def update(self, step, total, **info):
            if step > 7:  # 7 steps an epoch
                raise Interrupt

    args = ["train", "--task", "moons", "--width", "8", "--batch-size", "200", "--epochs", "3", "--eval-every", "2", "--no-progress"]
    cfg = RunConfig(task=TaskConfig(dataset="moons", model=ModelConfig(width=8), batch_size=200), epochs=3, eval_every=2)
    out = tmp_path / "run"
    with pytest.raises(Interrupt):
        train_run(cfg, out, progress=KillAfterFirstEpoch(), resume=True)
    assert read_run(out)["status"] == "partial" and (out / "checkpoint.safetensors").is_file()
    r = cli(*args, "--out", str(out), "--no-resume")
    assert r.returncode == 2 and "already holds a partial (interrupted) run; pass --overwrite" in r.stderr
    r = cli(*args, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == f"continuing the interrupted run in {out} from its last epoch's end"
    assert cli(*args, "--out", str(tmp_path / "whole")).returncode == 0
    a, b = (read_trajectory(d, format="pandas").drop(columns=["wall_time", "run_id"]) for d in (out, tmp_path / "whole"))
    assert a.equals(b) and read_run(out)["final"] == read_run(tmp_path / "whole")["final"]
    assert not (out / "checkpoint.safetensors").exists()


def test_a_run_stopped_at_its_target_says_so_and_is_complete_on_disk(tmp_path):
    out = tmp_path / "run"
    r = cli("train", "--task", "moons", "--width", "16", "--epochs", "5", "--eval-every", "5", "--target-acc", "0.6", "--no-progress", "--out", str(out))
    assert r.returncode == 0 and r.stdout.startswith("complete (target reached), "), r.stdout
    run = read_run(out)
    assert run["status"] == "complete" and run["final"]["val_acc"] >= 0.6


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize(
    "args", [["train", "--task", "moons"], ["zoo", "--spec", "tiny"], ["bench", "--suite", "smoke"], ["meta-train", "--kind", "opt2vec"]]
)
def test_device_cuda_without_a_gpu_fails_at_the_start_in_one_line(args, tmp_path):
    r = cli(*args, "--device", "cuda", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["error: device 'cuda' asked for, but torch sees no GPU (use --device cpu or auto)"]
    assert not (tmp_path / "out").exists()


def test_zoo_set_beats_the_specs_per_optimizer_values():
    r = cli("zoo", "--spec", "tiny", "--dry-run", "--set", "lr=0.05")
    assert r.returncode == 0, r.stderr
    lrs = {line.split("lr=")[1].split()[0] for line in r.stdout.splitlines() if "lr=" in line}
    assert lrs == {"0.05"}


def test_a_zoo_with_failed_runs_exits_1(tmp_path):
    r = cli("zoo", "--spec", "tiny", "--set", "data_options={bogus=1}", "--set", "optimizer=adam", "--set", "seed=0",
            "--workers", "0", "--no-progress", "--out", str(tmp_path / "z"))  # fmt: skip
    assert r.returncode == 1 and "run(s) failed" in r.stderr, r.stderr
