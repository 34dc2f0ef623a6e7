"""``metalearner tower`` and ``metalearner fewshot`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import typer
from typer.testing import CliRunner

from metalearner.errors import ConfigError
from metalearner.meta.cli import fewshot_app, tower_app

app = typer.Typer()
app.add_typer(tower_app, name="tower")
app.add_typer(fewshot_app, name="fewshot")
runner = CliRunner()

# the main command with both registered, run as a user does (until the lead's registration lands)
MAIN = """
from metalearner.cli import app, main
from metalearner.meta.cli import fewshot_app, tower_app
names = {g.name for g in app.registered_groups}
for sub, name in ((tower_app, "tower"), (fewshot_app, "fewshot")):
    if name not in names:
        app.add_typer(sub, name=name)
main()
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """fewshot keeps its checkpoints in ./runs/fewshot by default: here, in the test's own folder."""
    monkeypatch.chdir(tmp_path)


def invoke(*args: str) -> dict:
    r = runner.invoke(app, [*args, "--no-progress"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_tower_trains_prints_json_and_plots_every_level(tmp_path):
    out = invoke("tower", "--task", "moons", "--steps", "12", "--width", "16", "--height", "2", "--warmup", "24",
                 "--max-update-ratio", "0.05", "--plot", str(tmp_path / "levels.png"))  # fmt: skip
    assert out["final"]["steps"] == 12 and 0 <= out["final"]["test_acc"] <= 1 and out["tower"]["warmup"] == 24
    assert out["tower"]["max_update_ratio"] == 0.05
    assert list(out["hyperparameters"]) == ["lr", "effective_lr", "beta1", "beta2", "hyper_lr_1", "hyper_lr_2"]
    assert out["hyperparameters"]["effective_lr"] == pytest.approx(out["hyperparameters"]["lr"] * 12 / 24, rel=1e-12)
    assert (tmp_path / "levels.png").stat().st_size > 10_000


def test_fewshot_prints_json_with_interval_and_plots_the_adaptation(tmp_path):
    out = invoke("fewshot", "--task", "sinusoid", "--method", "meta_meta", "--iterations", "6", "--meta-batch", "4",
                 "--eval-tasks", "30", "--eval-steps", "3", "--plot", str(tmp_path / "adapt.png"))  # fmt: skip
    assert out["metric"] == "mse" and out["ci95"][0] <= out["mean"] <= out["ci95"][1] and len(out["curve"]) == 4
    assert out["config"]["method"] == "meta_meta" and out["history"][-1]["iteration"] == 6
    assert out["config"]["hyper_source"] == "train"  # the default
    assert (tmp_path / "adapt.png").stat().st_size > 10_000


def test_fewshot_prototype_head_on_unseen_digits(shared_data):
    out = invoke("fewshot", "--task", "mnist", "--head", "prototypes", "--k-shot", "1", "--inner-lr", "0.1", "--iterations", "3",
                 "--meta-batch", "2", "--eval-tasks", "40", "--data-dir", str(shared_data))  # fmt: skip
    # a random initialisation scores about 0.30 with the learned head and 0.42 with the prototype head
    assert out["metric"] == "acc" and out["config"]["head"] == "prototypes" and 0.36 < out["mean"] <= 1


def test_holding_out_classes_without_the_augmentation_is_a_config_error(shared_data):
    r = runner.invoke(app, ["fewshot", "--task", "mnist", "--method", "meta_meta", "--hyper-source", "heldout", "--augment", "none",
                            "--data-dir", str(shared_data), "--no-progress"])  # fmt: skip
    assert isinstance(r.exception, ConfigError) and "holding out 5 of 5 classes leaves too few for 5-way episodes" in str(r.exception)


@pytest.mark.parametrize(
    "args, message",
    [
        (["tower", "--base", "rmsprop", "--task", "moons"], "unknown tower base 'rmsprop'"),
        (["tower", "--height", "0", "--task", "moons"], "tower height must be an integer >= 1"),
        (["tower", "--warmup", "-1", "--task", "moons"], "warmup must be an integer >= 0"),
        (["tower", "--max-update-ratio", "-1", "--task", "moons"], "max_update_ratio must be a non-negative"),
        (["tower", "--task", "cifar"], "unknown data set 'cifar'"),
        (["fewshot", "--method", "reptile"], "unknown few-shot method 'reptile'"),
        (["fewshot", "--task", "omniglot"], "unknown few-shot task 'omniglot'"),
        (["fewshot", "--k-shot", "0"], "k_shot must be >= 1"),
        (["fewshot", "--outer-lr", "-1"], "outer_lr must be a positive number"),
        (["fewshot", "--head", "prototypes"], "prototype head is for classification"),
        (["fewshot", "--hyper-source", "heldout"], "hyper_source is the meta_meta level's"),
        (["fewshot", "--method", "meta_meta", "--hyper-source", "val"], "unknown hyper_source 'val'; choose from train, heldout"),
        (["fewshot", "--backbone", "conv"], "the conv backbone is for image episodes"),
        (["fewshot", "--task", "mnist", "--backbone", "vgg"], "unknown backbone 'vgg'; choose from mlp, conv"),
    ],
)
def test_user_mistakes_are_config_errors(args, message):
    r = runner.invoke(app, [*args, "--no-progress"])
    assert isinstance(r.exception, ConfigError) and message in str(r.exception)
    assert "\n" not in str(r.exception)


def test_the_main_command_prints_one_line_and_exits_2():
    r = subprocess.run([sys.executable, "-c", MAIN, "fewshot", "--method", "reptile"], capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert lines == ["error: unknown few-shot method 'reptile'; choose from maml, meta_sgd, meta_meta"]


def test_fewshot_keeps_its_meta_training_and_the_same_command_continues_it(tmp_path):
    args = ("fewshot", "--task", "sinusoid", "--method", "meta_sgd", "--iterations", "8", "--meta-batch", "3", "--eval-tasks", "20",
            "--out", str(tmp_path / "fs"))  # fmt: skip
    first = invoke(*args)
    ckpt = tmp_path / "fs" / first["checkpoint"].rsplit("/", 1)[-1]
    assert ckpt.is_file() and json.loads(ckpt.with_suffix(".json").read_text())["mean"] == first["mean"]
    r = runner.invoke(app, [*args, "--no-progress"])  # the finished meta-training is read back, not redone
    assert r.exit_code == 0 and "continuing the run kept in" in r.stderr
    again = json.loads(r.stdout.strip().splitlines()[-1])
    assert again["mean"] == first["mean"] and again["history"] == first["history"]
    other = invoke(*args, "--inner-lr", "0.02")  # another configuration: its own checkpoint beside the first
    assert other["checkpoint"] != first["checkpoint"] and len(list((tmp_path / "fs").glob("*.safetensors"))) == 2
    r = runner.invoke(app, [*args, "--no-resume", "--no-progress"])
    assert r.exit_code == 0 and "continuing" not in r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["mean"] == first["mean"]  # started over, deterministically


def test_a_user_mistake_in_fewshot_writes_nothing(tmp_path):
    for args in (["--task", "omniglot"], ["--task", "sinusoid", "--head", "prototypes"]):
        r = runner.invoke(app, ["fewshot", *args, "--out", str(tmp_path / "fs"), "--no-progress"])
        assert isinstance(r.exception, ConfigError)
    assert not (tmp_path / "fs").exists() and not (tmp_path / "runs").exists()


def test_tower_keeps_its_run_and_the_same_command_continues_it(tmp_path):
    args = ("tower", "--task", "moons", "--steps", "30", "--width", "16", "--batch-size", "50", "--n-train", "400",
            "--out", str(tmp_path / "tw"), "--plot", str(tmp_path / "levels.png"))  # fmt: skip
    first = invoke(*args)
    ckpt = tmp_path / "tw" / first["checkpoint"].rsplit("/", 1)[-1]
    assert ckpt.is_file() and json.loads(ckpt.with_suffix(".json").read_text())["final"] == first["final"]
    r = runner.invoke(app, [*args, "--no-progress"])  # finished: read back, the same result and the same figure's rows
    assert r.exit_code == 0 and "continuing the run kept in" in r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["hyperparameters"] == first["hyperparameters"]
    r = runner.invoke(app, [*args, "--no-resume", "--no-progress"])
    assert r.exit_code == 0 and "continuing" not in r.stderr and json.loads(r.stdout.strip().splitlines()[-1])["final"] == first["final"]
