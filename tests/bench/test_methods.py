"""The method registry: every method trains on a tiny task; the trial budget is equal."""

import pytest
import torch

from metalearner.bench.methods import METHODS, get_method
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
    loss, finite = train_step(model, opt, task.loss_fn, xb, yb)
    assert finite
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
    ours, adam = bench.job(cell, "controller", 1e-3, 0), bench.job(cell, "adam", 1e-3, 0)
    assert ours["weights"] == shipped.fingerprint() and "weights" not in adam
    assert get_method("controller").ours and not get_method("adam").ours
    assert job_key(ours) != job_key({k: v for k, v in ours.items() if k != "weights"})
