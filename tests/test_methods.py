"""The method registry: every method trains on a tiny task; the trial budget is equal."""

import pytest
import torch

from metalearner.bench.protocol import METHODS as BENCHMARKED
from metalearner.methods import METHODS, get_method
from metalearner.errors import ConfigError
from metalearner.tasks.models import ModelConfig
from metalearner.tasks.task import TaskConfig, make_task
from metalearner.train.fit import fit, train_step


@pytest.fixture(scope="module")
def task():
    return make_task(TaskConfig(dataset="moons", model=ModelConfig(depth=1, width=16), batch_size=64))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_takes_a_step_and_trains(task, name):
    method = METHODS[name]
    model = task.build_model(seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    opt, sched = method.build(model.parameters(), total_steps=50)
    xb, yb = task.data.x_train[:64], task.data.y_train[:64]
    if callable(getattr(opt, "train", None)):
        opt.train()
    loss = train_step(model, opt, task.loss_fn, xb, yb)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters())), f"{name} did not move the weights"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_learns_moons_with_its_defaults(task, name):
    model = task.build_model(seed=0)
    per_epoch = -(-task.data.n_train // 64)
    opt, sched = METHODS[name].build(model.parameters(), total_steps=20 * per_epoch)
    r = fit(model, opt, task, epochs=20, scheduler=sched, seed=0, test=False)
    best_loss = min(h["train_loss"] for h in r.history)  # chance: loss 0.69, accuracy 50%
    best_acc = max(h["val_acc"] for h in r.history)  # (D-Adaptation oscillates late: judge the run, not its last epoch)
    assert r.status == "complete" and best_loss < 0.5 and best_acc > 0.8, (name, best_loss, best_acc)


def test_budget_aware_methods_use_the_budget():
    model = torch.nn.Linear(2, 2)
    opt, sched = get_method("adamw_cosine").build(model.parameters(), lr=1e-2, total_steps=10)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
    opt2, _ = get_method("opt2vec").build(torch.nn.Linear(2, 2).parameters(), total_steps=123)
    assert opt2.budget == 123


def test_every_method_gets_the_same_number_of_tuning_trials():
    assert len({len(m.tuning_lrs()) for m in METHODS.values()}) == 1
    for m in METHODS.values():
        assert m.default_lr in m.tuning_lrs()


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown method"):
        get_method("sgdx")


def test_learned_optimizer_jobs_are_keyed_by_their_weights(tmp_path):
    """Re-shipped weights must not be served from the job cache: an ours job carries the
    fingerprint of the tensors (stable across a save/load, changed by any value), a baseline's
    job does not."""
    from metalearner.bench import Bench
    from metalearner.bench.protocol import SUITES
    from metalearner.bench.runner import job_key
    from metalearner.lopt.policy import PolicyWeights, default_weights

    shipped = default_weights("controller")
    shipped.save(tmp_path / "c.safetensors")
    assert PolicyWeights.load(tmp_path / "c.safetensors").fingerprint() == shipped.fingerprint()
    nudged = shipped.with_flat(shipped.flat() + 1e-6)
    assert nudged.fingerprint() != shipped.fingerprint()

    bench = Bench(SUITES["smoke"], tmp_path / "bench")
    cell = SUITES["smoke"].cells[0]
    ours, adam = bench.job(cell, "adam+controller", 1e-3, 0), bench.job(cell, "adam", 1e-3, 0)
    assert ours["weights"] == shipped.fingerprint() and "weights" not in adam
    assert get_method("adam+controller").ours and not get_method("adam").ours
    assert job_key(ours) != job_key({k: v for k, v in ours.items() if k != "weights"})


# -- the registry is the one list every part reads ---------------------------------------------


def test_adamw_weight_decay_zero_stays_zero_and_defaults_to_001():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert get_method("adamw").build(params, weight_decay=0.0)[0].param_groups[0]["weight_decay"] == 0.0
    assert get_method("adamw").build(params)[0].param_groups[0]["weight_decay"] == 0.01
    from metalearner.train import RunConfig

    assert RunConfig(optimizer="adamw", weight_decay=0.0).weight_decay == 0.0
    assert RunConfig(optimizer="adamw").weight_decay == 0.01 and RunConfig(optimizer="adam").weight_decay == 0.0


@pytest.mark.parametrize("base", ["sgd", "momentum", "adam", "rmsprop"])
def test_any_base_optimizer_takes_the_controller(base):
    from metalearner.lopt import LRController

    method = get_method(f"{base}+controller")
    assert method.ours and method.weights == "controller"
    opt, sched = method.build([torch.nn.Parameter(torch.ones(3))], lr=0.05)
    assert isinstance(opt, LRController) and sched is None
    assert type(opt.optimizer) is type(get_method(base).build([torch.nn.Parameter(torch.ones(3))])[0])


@pytest.mark.parametrize(
    "name, kwargs, message",
    [("adamw_cosine+controller", {}, "its own cosine schedule; wrap"), ("opt2vec+controller", {}, "a learned part of its own"),
     ("nosuch+controller", {}, "unknown method"),
     ("sgd", {"momentum": 0.9}, "sgd has no momentum"), ("adamw_cosine", {"schedule": "onecycle"}, "its own cosine schedule"),
     ("adam", {"schedule": "linear"}, "unknown schedule"), ("adam", {"lr": 0.0}, "learning rate"),
     ("adam", {"weight_decay": -1.0}, "weight decay"), ("adam", {"schedule": "cosine"}, "needs the step budget")],
)  # fmt: skip
def test_registry_refuses_bad_settings_in_one_line(name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        get_method(name).build([torch.nn.Parameter(torch.ones(1))], **kwargs)


def test_the_benchmark_runs_registered_methods():
    assert set(BENCHMARKED) <= set(METHODS) and "adam+controller" in BENCHMARKED


@pytest.mark.parametrize("name", ["opt2vec", "adam+controller", "sgd+controller"])
def test_learned_optimizers_train_from_the_cli(name, tmp_path):
    from typer.testing import CliRunner

    from metalearner.cli import app
    from metalearner.observe import read_run

    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--task", "digits", "--depth", "1", "--width", "32", "--optimizer", name,
                                 "--epochs", "5", "--out", str(out), "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    meta = read_run(out)
    assert meta["config"]["optimizer"] == name and meta["status"] == "complete" and meta["final"]["val_acc"] > 0.5


def test_a_zoo_spec_sweeps_learned_optimizers(tmp_path):
    from metalearner.parallel import InlineExecutor
    from metalearner.zoo import SweepSpec, run_sweep, sample_runs

    spec = SweepSpec(space={"dataset": "digits", "depth": 1, "width": 16, "epochs": 1, "optimizer": ["opt2vec", "adam+controller"],
                            "by_optimizer": {"adam+controller": {"lr": [1e-3, 3e-3]}}})  # fmt: skip
    runs = sample_runs(spec)
    assert sorted((r.optimizer, r.lr) for r in runs) == [("adam+controller", 1e-3), ("adam+controller", 3e-3), ("opt2vec", 1e-3)]
    res = run_sweep(runs, tmp_path, InlineExecutor(), progress=False)
    assert res.counts == {"complete": 3}
