"""The optimizer contract and a table-driven descent check for every method under test."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from metalearner.errors import ConfigError
from metalearner.lopt import LRController, Opt2Vec, PolicyWeights
from metalearner.lopt.learned import LearnedOptimizer
from metalearner.meta.towers import Tower
from metalearner.lopt.policy import PolicyConfig
from metalearner.observe.probe import optimizer_hparams

# these tests exercise the mechanics with the budget left out; the warning itself: test_opt2vec_weights_that_read_the_budget_warn_without_one
pytestmark = pytest.mark.filterwarnings("ignore:these Opt2Vec weights read the budget fraction")


def random_policy(kind: str = "opt2vec", seed: int = 1, **kw) -> PolicyWeights:
    """Untrained encoder with non-zero heads, so the learned path really changes lr/momentum."""
    cfg = PolicyConfig(kind=kind, **kw) if kind == "opt2vec" else PolicyConfig(
        kind=kind, features=("log_loss", "log_loss_rel", "log_loss_delta", "log_grad_norm", "log_lr_scale",
                             "log_weight_norm", "log_update_ratio"), **kw)  # fmt: skip
    w = PolicyWeights.init(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for k in ("head.weight", "head.bias", "skip.weight"):
        w.tensors[k] = 0.3 * torch.randn(w.tensors[k].shape, generator=gen)
    return w


# -- methods x problems -----------------------------------------------------------------------

METHODS = {
    "opt2vec_pretrained": lambda p, lr: Opt2Vec(p, lr),
    "opt2vec_untrained": lambda p, lr: Opt2Vec(p, lr, weights=None),
    "controller_pretrained": lambda p, lr: LRController(torch.optim.Adam(p, lr=lr)),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "sgd_momentum": lambda p, lr: torch.optim.SGD(p, lr=lr / 10 if lr > 0.01 else lr * 10, momentum=0.9),
}


def parabola():
    x = nn.Parameter(torch.full((10,), 3.0))
    return [x], lambda: (x**2).sum(), 0.1, 200


def rosenbrock():
    xy = nn.Parameter(torch.tensor([-1.5, 2.0]))
    return [xy], lambda: (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2, 0.02, 400


def tiny_mlp():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=gen)
    y = (x[:, 0] * x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    return list(model.parameters()), lambda: nn.functional.cross_entropy(model(x), y), 0.01, 200


PROBLEMS = {"parabola": parabola, "rosenbrock": rosenbrock, "tiny_mlp": tiny_mlp}


def step(opt, loss):
    if getattr(opt, "takes_loss", False):
        opt.step(loss=loss.detach())
    else:
        opt.step()


def descend(model, opt, x, steps: int = 1) -> None:
    """``steps`` optimizer steps on the loss ``mean(model(x)²)``."""
    for _ in range(steps):
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        step(opt, loss)


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("method", METHODS)
def test_descends(method, problem):
    params, loss_fn, lr, steps = PROBLEMS[problem]()
    opt = METHODS[method](params, lr)
    first = float(loss_fn().detach())
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        step(opt, loss)
    last = float(loss_fn().detach())
    assert math.isfinite(last) and last < 0.5 * first, (first, last)


# -- the torch.optim contract -----------------------------------------------------------------


def test_untrained_is_exactly_adam():
    torch.manual_seed(0)
    a = nn.Linear(5, 3)
    b = copy.deepcopy(a)
    oa, ob = torch.optim.Adam(a.parameters(), lr=1e-2), Opt2Vec(b.parameters(), 1e-2, weights=None)
    x = torch.randn(16, 5)
    for _ in range(40):
        for m, o in ((a, oa), (b, ob)):
            descend(m, o, x)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_lr_stays_the_users_and_the_group_records_what_is_applied():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = Opt2Vec([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 1e-2}], lr=1e-3,
                  weights=random_policy(), observe_every=2)  # fmt: skip
    descend(model, opt, torch.randn(32, 4), 6)
    g0, g1 = opt.param_groups
    assert (g0["lr"], g1["lr"]) == (1e-3, 1e-2)  # never overwritten
    assert g1["effective_lr"] / g0["effective_lr"] == pytest.approx(10.0)
    assert g0["effective_lr"] != pytest.approx(1e-3)  # the learned scale acts
    lr, momentum = optimizer_hparams(opt)  # what the probe logs: the groups' size-weighted means
    n0, n1 = (sum(p.numel() for p in g["params"]) for g in (g0, g1))
    assert lr == pytest.approx((n0 * g0["effective_lr"] + n1 * g1["effective_lr"]) / (n0 + n1))
    assert momentum == pytest.approx(g0["effective_momentum"]) and 0 <= momentum < 1
    assert opt.embedding is not None and opt.embedding.shape == (64,)


def test_a_users_scheduler_composes_with_the_learned_scale():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = Opt2Vec(model.parameters(), lr=1e-2, weights=random_policy(), observe_every=2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x = torch.randn(8, 3)
    group, g = opt.param_groups[0], opt.state["opt2vec"]
    scales = []
    for k in range(4):
        descend(model, opt, x)
        sched.step()
        assert group["lr"] == pytest.approx(1e-2 * 0.5 ** (k + 1))  # the scheduler's value, never overwritten
        # the step applied: -(scheduler's lr x learned scale x backoff) m_hat / (sqrt(v_hat) + eps), Adam's with the learned momentum
        scale, t = g["lr_scale"] * g["backoff"], g["step"]
        scales.append(scale)
        before = [p.detach().clone() for p in model.parameters()]
        descend(model, opt, x)
        assert group["effective_lr"] == pytest.approx(group["lr"] * scale) and group["weight_decay"] == 0
        for p, w in zip(model.parameters(), before):
            state = opt.state[p]
            d = state["exp_avg"] / (1 - g["beta1_prod"]) / ((state["exp_avg_sq"] / (1 - group["betas"][1] ** (t + 1))).sqrt() + group["eps"])
            torch.testing.assert_close(p.detach() - w, -group["lr"] * scale * d, rtol=1e-3, atol=1e-7)
    assert scales[-1] != pytest.approx(1.0)  # the learned scale acts


def _run(model, opt, xs, start, stop):
    for i in range(start, stop):
        descend(model, opt, xs[i])


@pytest.mark.parametrize("extended", [True, False])
def test_state_dict_round_trip_continues_identically(extended):
    torch.manual_seed(0)
    xs = torch.randn(20, 8, 3)
    feats = None if extended else ("log_loss", "log_loss_rel", "log_loss_delta", "log_grad_norm", "log_lr_scale")
    w = random_policy(**({} if extended else {"features": feats}))
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    opt = Opt2Vec(model.parameters(), 1e-2, weights=w, observe_every=4, use_extended_features=extended)
    _run(model, opt, xs, 0, 7)  # stops between the two measured steps of an observation
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _run(model, opt, xs, 7, 20)
    model2 = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    model2.load_state_dict(saved_model)
    opt2 = Opt2Vec(model2.parameters(), 1e-2, weights=w, observe_every=4, use_extended_features=extended)
    opt2.load_state_dict(saved_opt)
    _run(model2, opt2, xs, 7, 20)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert opt.param_groups[0]["effective_lr"] == opt2.param_groups[0]["effective_lr"]


def test_closure_and_loss_forms_agree():
    results = []
    for form in ("closure", "keyword", "positional"):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        x = torch.randn(8, 3)
        opt = Opt2Vec(model.parameters(), 1e-2, weights=random_policy(), observe_every=2)

        def closure():
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            return loss

        for _ in range(5):
            if form == "closure":
                opt.step(closure)
            else:
                loss = closure()
                opt.step(loss=loss) if form == "keyword" else opt.step(loss)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1]) and torch.equal(results[1], results[2])


def test_a_step_without_the_loss_still_updates_and_observes_later():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(8, 3)
    opt = Opt2Vec(model.parameters(), lr=1e-2, weights=random_policy(), observe_every=2)
    before = model.weight.detach().clone()
    for t in range(6):
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step() if t % 2 == 0 else opt.step(loss=loss)  # every observation window has one loss
    assert not torch.equal(before, model.weight) and opt.embedding is not None


def test_any_module_with_unused_params_and_zero_grad():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    unused = nn.Parameter(torch.ones(2))
    opt = Opt2Vec([*model.parameters(), unused], 1e-3)
    descend(model, opt, torch.randn(4, 1, 6, 6), 20)
    assert torch.equal(unused, torch.ones(2)) and unused not in opt.state
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, message",
    [({"lr": -1.0}, "learning rate"), ({"beta2": 1.0}, "beta2"), ({"eps": -1.0}, "eps"),
     ({"weight_decay": -1.0}, "weight_decay"), ({"weight_decay": math.nan}, "weight_decay"), ({"budget": 0}, "budget"),
     ({"embedding_dim": 7}, "embedding_dim"), ({"observe_every": 0}, "observe_every")],
)  # fmt: skip
def test_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Opt2Vec([nn.Parameter(torch.ones(1))], **kwargs)


def test_a_groups_own_values_are_checked():
    w = nn.Parameter(torch.ones(1))
    with pytest.raises(ConfigError, match="beta2"):
        Opt2Vec([{"params": [w], "betas": (0.9, 1.5)}])
    with pytest.raises(ConfigError, match="weight_decay"):
        LearnedOptimizer([{"params": [w], "weight_decay": -1.0}])
    with pytest.raises(ConfigError, match="one dtype"):
        LearnedOptimizer([w, nn.Parameter(torch.ones(1, dtype=torch.float64))])


ALL_FOUR = {
    "learned_sf": lambda p: LearnedOptimizer(p, lr=1e-2, weight_decay=0.1),
    "opt2vec": lambda p: Opt2Vec(p, lr=1e-2, weight_decay=0.1, observe_every=4),
    "controller": lambda p: LRController(torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), observe_every=4),
    "tower": lambda p: Tower(p, lr=1e-2, height=2, warmup=3, hyper_every=2),
}


def _mlp_and_data(dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)
    gen = torch.Generator().manual_seed(1)
    return model, torch.randn(32, 4, generator=gen).to(dtype), torch.randn(32, 2, generator=gen).to(dtype)


def _train(model, opt, x, y, steps):
    for i in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x[i % 4 * 8 : i % 4 * 8 + 8]), y[i % 4 * 8 : i % 4 * 8 + 8])
        loss.backward()
        step(opt, loss)


@pytest.mark.parametrize("name", ALL_FOUR)
def test_parameters_without_a_gradient_stay_as_they_are(name):
    """Frozen and unused parameters: no step, no weight decay, no averaging (as torch.optim)."""
    model, x, y = _mlp_and_data()
    unused = nn.Parameter(torch.ones(3))
    opt = ALL_FOUR[name]([*model.parameters(), unused])
    _train(model, opt, x, y, 6)
    model[0].requires_grad_(False)  # frozen mid-run
    model[0].weight.grad = model[0].bias.grad = None
    frozen = [p.detach().clone() for p in model[0].parameters()]
    _train(model, opt, x, y, 12)
    assert torch.equal(unused, torch.ones(3))
    assert all(torch.equal(p, q) for p, q in zip(model[0].parameters(), frozen))


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", ALL_FOUR)
def test_a_copy_continues_like_the_original(name, how):
    model, x, y = _mlp_and_data()
    opt = ALL_FOUR[name](model.parameters())
    _train(model, opt, x, y, 6)
    model2, opt2 = copy.deepcopy((model, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, opt)))
    _train(model, opt, x, y, 14)
    _train(model2, opt2, x, y, 14)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))


@pytest.mark.parametrize("name", [n for n in ALL_FOUR if n != "tower"])
def test_a_loss_that_is_not_a_scalar_is_refused_before_the_step(name):
    model, x, y = _mlp_and_data()
    opt = ALL_FOUR[name](model.parameters())
    _train(model, opt, x, y, 3)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    per_example = (model(x) - y).pow(2).mean(1)
    per_example.mean().backward()
    for bad in (per_example, "abc"):
        with pytest.raises(ConfigError, match="step"):
            opt.step(loss=bad)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    _train(model, opt, x, y, 8)  # and it goes on observing


@pytest.mark.parametrize("name", ["opt2vec", "controller"])
def test_float64_models_are_observed(name):
    model, x, y = _mlp_and_data(torch.float64)
    opt = ALL_FOUR[name](model.parameters())
    _train(model, opt, x, y, 12)
    assert all(torch.isfinite(p).all() and p.dtype == torch.float64 for p in model.parameters())


def test_controller_closure_observes_this_steps_gradient():
    """``step(closure)`` and ``step(loss=...)`` take the same steps (the closure runs before the
    physics hook reads the gradient)."""
    runs = []
    for form in ("closure", "loss"):
        model, x, y = _mlp_and_data()
        opt = LRController(torch.optim.Adam(model.parameters(), lr=1e-2), weights=random_policy("controller"), observe_every=2)
        for i in range(12):
            def closure():
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                return loss

            opt.step(closure) if form == "closure" else opt.step(loss=closure())
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("name", ["learned_sf", "tower"])
def test_onecycle_from_the_registry(name):
    from metalearner.methods import get_method

    model, x, y = _mlp_and_data()
    opt, schedule = get_method({"learned_sf": "learned_sf", "tower": "hyper_sgd"}[name]).build(model.parameters(), total_steps=10, schedule="onecycle")
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        _train(model, opt, x, y, 1)
        schedule.step()
    peak = max(lrs)
    assert lrs[0] < peak / 10 and lrs.index(peak) not in (0, 9) and lrs[-1] < peak / 10  # the one-cycle's ramp up and down
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_controller_is_a_drop_in_optimizer():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctrl = LRController(inner, weights=random_policy("controller", history_length=8, hidden_dim=16, embedding_dim=16,
                                                     activation="tanh"), observe_every=2)  # fmt: skip
    assert isinstance(ctrl, torch.optim.Optimizer)
    x = torch.randn(8, 3)
    descend(model, ctrl, x, 10)
    assert ctrl.param_groups is inner.param_groups
    assert inner.param_groups[0]["lr"] == 0.1 and inner.param_groups[0]["effective_lr"] != pytest.approx(0.1)
    sd = copy.deepcopy(ctrl.state_dict())  # as if saved: torch state dicts share buffers in-process
    model2 = nn.Linear(3, 1)
    model2.load_state_dict(model.state_dict())
    ctrl2 = LRController(torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9), weights=ctrl.theta, observe_every=2)
    ctrl2.load_state_dict(sd)
    assert ctrl2.ctrl_state["lr_scale"] == ctrl.ctrl_state["lr_scale"]
    for m, c in ((model, ctrl), (model2, ctrl2)):  # identical continuation after the round trip
        descend(m, c, x, 7)
    assert torch.equal(model.weight, model2.weight) and torch.equal(model.bias, model2.bias)
    assert ctrl.param_groups[0]["effective_lr"] == ctrl2.param_groups[0]["effective_lr"]


def test_controller_composes_with_a_torch_lr_scheduler_and_steps_without_a_loss():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    ctrl = LRController(torch.optim.Adam(model.parameters(), lr=1e-2), observe_every=2,
                        weights=random_policy("controller", history_length=8, hidden_dim=16, embedding_dim=16, activation="tanh"))  # fmt: skip
    sched = torch.optim.lr_scheduler.StepLR(ctrl, step_size=1, gamma=0.5)  # torch accepts it as an optimizer
    x = torch.randn(8, 3)
    scales = set()
    for k in range(6):
        before = model.weight.detach().clone()
        applied = ctrl.ctrl_state["lr_scale"] * ctrl.ctrl_state["backoff"]  # an observation sets the next steps' scale
        loss = model(x).pow(2).mean()
        ctrl.zero_grad()
        loss.backward()
        ctrl.step() if k % 2 else ctrl.step(loss=loss)  # a step without a loss still steps (and observes the window's)
        assert not torch.equal(before, model.weight)
        group = ctrl.param_groups[0]
        assert group["lr"] == pytest.approx(1e-2 * 0.5**k)  # the user's lr, as the scheduler set it
        assert group["effective_lr"] == pytest.approx(group["lr"] * applied)  # what this step applied: the user's lr x the scale
        scales.add(applied)
        sched.step()
    assert len(scales) > 1  # the learned scale moved, so the check above saw it compose
    assert ctrl.embedding is not None


def test_works_in_fit():
    import numpy as np

    from metalearner.tasks import ModelConfig, TaskConfig, make_task
    from metalearner.train import fit

    task = make_task(TaskConfig(dataset="synthetic", model=ModelConfig(depth=1, width=16), batch_size=64, n_train=256))
    for make in (lambda p: Opt2Vec(p, 3e-3), lambda p: LRController(torch.optim.Adam(p, lr=3e-3))):
        model = task.build_model(seed=0)
        result = fit(model, make(model.parameters()), task, epochs=3)
        assert result.status == "complete" and np.isfinite(result.final["val_loss"])


def test_analysis_plots(tmp_path):
    from metalearner.lopt.analysis import plot_embedding, plot_schedule, record_run
    from metalearner.tasks import ModelConfig, TaskConfig, make_task

    task = make_task(TaskConfig(dataset="synthetic", model=ModelConfig(depth=1, width=16), batch_size=32, n_train=256))
    traj = record_run(task, "opt2vec", lr=1e-3, steps=96)
    assert traj["embedding"].shape == (96 // 16, 64) and len(traj["lr"]) == 96
    plot_embedding(traj, tmp_path / "emb.png")
    plot_schedule(traj, tmp_path / "sched.png")
    assert (tmp_path / "emb.png").stat().st_size > 1000 and (tmp_path / "sched.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ALL_FOUR)
def test_a_state_of_another_kind_or_model_is_refused_at_load(name):
    model, x, y = _mlp_and_data()
    opt = ALL_FOUR[name](model.parameters())
    adam = torch.optim.Adam(model.parameters())
    _train(model, adam, x, y, 2)
    with pytest.raises(ConfigError, match="state"):
        opt.load_state_dict(adam.state_dict())
    wider = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    other = ALL_FOUR[name](wider.parameters())
    _train(wider, other, x, y, 3)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match="does not fit"):
        opt.load_state_dict(other.state_dict())
    _train(model, opt, x, y, 3)  # the optimizer is as it was
    assert not any(torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("name", [n for n in ALL_FOUR if n != "tower"])
def test_a_copy_with_a_scheduler_attached_steps_itself(name):
    """A scheduler wraps ``opt.step`` in a closure over the original: the copy leaves it out."""
    model, x, y = _mlp_and_data()
    opt = ALL_FOUR[name](model.parameters())
    torch.optim.lr_scheduler.StepLR(opt, 10)
    _train(model, opt, x, y, 3)
    for model2, opt2 in (copy.deepcopy((model, opt)), pickle.loads(pickle.dumps((model, opt)))):
        before = [p.detach().clone() for p in model.parameters()]
        _train(model2, opt2, x, y, 2)
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # the original did not move
        assert not all(torch.equal(p, q) for p, q in zip(model2.parameters(), before))


def test_the_controller_passes_a_closure_to_an_optimizer_that_needs_one():
    model, x, y = _mlp_and_data()
    opt = LRController(torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4), observe_every=2)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = float(closure().detach())
    for _ in range(4):
        opt.step(closure)
    assert float(nn.functional.mse_loss(model(x), y).detach()) < first and len(calls) > 5


def test_the_controller_keeps_state_of_other_shapes_to_its_optimizer():
    model, x, y = _mlp_and_data()
    opt = LRController(torch.optim.Adafactor(model.parameters(), lr=1e-2), observe_every=2)
    _train(model, opt, x, y, 3)
    twin, _, _ = _mlp_and_data()
    twin.load_state_dict(model.state_dict())
    again = LRController(torch.optim.Adafactor(twin.parameters(), lr=1e-3), observe_every=2)
    again.load_state_dict(copy.deepcopy(opt.state_dict()))  # row and column factors are not the parameters' shape
    assert again.param_groups[0]["lr"] == 1e-2
    _train(model, opt, x, y, 5)
    _train(twin, again, x, y, 5)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_numpy_and_one_element_losses_are_read():
    model, x, y = _mlp_and_data()
    opt = ALL_FOUR["opt2vec"](model.parameters())
    for loss in (np.float32(0.5), np.array(0.5), 0.5, torch.tensor([0.5])):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step(loss=loss)
    with pytest.raises(ConfigError):
        opt.step(loss=True)


@pytest.mark.parametrize("name", [n for n in ALL_FOUR if n != "controller"])
def test_a_sparse_gradient_is_refused_before_anything_changes(name):
    """nn.Embedding(sparse=True): one line, as torch's Adam refuses it, and nothing moved (the
    controller passes its optimizer's own refusal through)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Flatten(), nn.Linear(12, 2))
    opt = ALL_FOUR[name](model.parameters())
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    loss = model(torch.randint(0, 10, (5, 3))).pow(2).mean()
    loss.backward()
    with pytest.raises(ConfigError, match="sparse gradients"):
        step(opt, loss)
    assert all(torch.equal(p, before[0][k]) for k, p in model.state_dict().items())
    assert repr(opt.state_dict()) == repr(before[1])


@pytest.mark.parametrize("name", ALL_FOUR)
def test_a_tensor_lr_steps_as_the_same_float_and_a_string_lr_is_refused(name):
    """torch.optim takes a tensor lr (a scheduler may set one mid-run); a string (a YAML value
    read as text) is refused in one line instead of failing inside a kernel."""
    runs = []
    for lr in (torch.tensor(1e-2), 1e-2):
        model, x, y = _mlp_and_data()
        opt = ALL_FOUR[name](model.parameters())
        opt.param_groups[0]["lr"] = lr
        _train(model, opt, x, y, 9)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.allclose(p, q, rtol=1e-6, atol=1e-8) for p, q in zip(*runs))
    model, _, _ = _mlp_and_data()
    make = {"opt2vec": Opt2Vec, "learned_sf": LearnedOptimizer, "tower": Tower}.get(name)
    if make is not None:
        with pytest.raises(ConfigError, match="positive"):
            make(model.parameters(), lr="1e-3")


def test_observe_every_must_be_a_whole_number():
    p = [nn.Parameter(torch.ones(1))]
    for value in (2.5, True, "4"):
        with pytest.raises(ConfigError, match="whole number"):
            LRController(torch.optim.Adam(p), observe_every=value)
        with pytest.raises(ConfigError, match="whole number"):
            Opt2Vec(p, observe_every=value)


def test_an_integer_loss_is_refused_for_its_dtype():
    model, x, y = _mlp_and_data()
    opt = ALL_FOUR["opt2vec"](model.parameters())
    nn.functional.mse_loss(model(x), y).backward()
    with pytest.raises(ConfigError, match="floating-point"):
        opt.step(loss=torch.tensor(3))


def test_the_controllers_state_dict_has_torchs_keys_and_reads_the_earlier_form():
    model, x, y = _mlp_and_data()
    opt = ALL_FOUR["controller"](model.parameters())
    _train(model, opt, x, y, 6)
    sd = opt.state_dict()
    assert {"state", "param_groups", "controller"} <= set(sd)
    runs = []
    for form in (sd, {"optimizer": {k: v for k, v in sd.items() if k != "controller"}, "controller": sd["controller"]}):
        twin, _, _ = _mlp_and_data()
        twin.load_state_dict(model.state_dict())
        again = ALL_FOUR["controller"](twin.parameters())
        again.load_state_dict(copy.deepcopy(form))
        _train(twin, again, x, y, 8)
        runs.append([p.detach().clone() for p in twin.parameters()])
    assert all(torch.equal(p, q) for p, q in zip(*runs))
    nested = LRController(LRController(torch.optim.Adam(model.parameters()), observe_every=4), observe_every=4)
    _train(model, nested, x, y, 6)
    sd = nested.state_dict()
    assert set(sd) == {"optimizer", "controller"} and "controller" in sd["optimizer"]
    twin, _, _ = _mlp_and_data()
    twin.load_state_dict(model.state_dict())
    again = LRController(LRController(torch.optim.Adam(twin.parameters()), observe_every=4), observe_every=4)
    again.load_state_dict(copy.deepcopy(sd))
    _train(model, nested, x, y, 8)
    _train(twin, again, x, y, 8)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_opt2vec_weights_that_read_the_budget_warn_without_one():
    import warnings

    from metalearner.errors import MetalearnerWarning

    model = nn.Linear(3, 1)
    with pytest.warns(MetalearnerWarning, match="pass budget="):
        Opt2Vec(model.parameters())  # the shipped weights read the budget fraction
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Opt2Vec(model.parameters(), budget=100)
        Opt2Vec(model.parameters(), weights=None)  # untrained: Adam, nothing to read


@pytest.mark.parametrize("kind", ["learned_sf", "opt2vec", "controller"])
def test_a_loop_that_never_passes_the_loss_is_told_once(kind):
    import warnings

    from metalearner.errors import MetalearnerWarning
    from metalearner.lopt.learned import LearnedOptimizer
    from metalearner.lopt.policy import NO_LOSS_STEPS

    def make(p):
        if kind == "learned_sf":
            return LearnedOptimizer(p)
        return Opt2Vec(p, budget=200) if kind == "opt2vec" else LRController(torch.optim.Adam(p, lr=1e-3))

    for given in (False, True):
        w = nn.Parameter(torch.ones(3))
        opt = make([w])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for t in range(NO_LOSS_STEPS + 10):
                opt.zero_grad()
                loss = (w**2).sum()
                loss.backward()
                opt.step(loss=loss) if given and t == 0 else opt.step()  # one loss is enough to observe
        ours = [str(c.message) for c in caught if issubclass(c.category, MetalearnerWarning)]
        assert ours == ([] if given else [f"{type(opt).__name__} has taken {NO_LOSS_STEPS} steps without a loss, so its policy has "
                                          "nothing to observe and it runs as its base optimizer: pass the loss, opt.step(loss=loss) "
                                          "(with a GradScaler: scaler.step(opt, loss=loss))"])  # fmt: skip


@pytest.mark.parametrize("kind", ["learned_sf", "opt2vec"])
def test_a_group_with_lr_0_is_held_still_as_torch_allows(kind):
    from metalearner.lopt.learned import LearnedOptimizer

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    first, head = [p.detach().clone() for p in m[0].parameters()], m[2].weight.detach().clone()
    groups = [{"params": m[0].parameters(), "lr": 0.0}, {"params": m[2].parameters()}]
    opt = LearnedOptimizer(groups) if kind == "learned_sf" else Opt2Vec(groups, budget=50)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(40):  # observations included
        opt.zero_grad()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step(loss=loss)
    assert all(torch.equal(a, b) for a, b in zip(first, m[0].parameters()))
    assert not torch.equal(head, m[2].weight) and torch.isfinite(m[2].weight).all()
    assert opt.param_groups[0]["effective_lr"] == 0.0 and opt.param_groups[1]["effective_lr"] > 0
    with pytest.raises(ConfigError, match="positive number or 0, got -1"):
        (LearnedOptimizer if kind == "learned_sf" else Opt2Vec)([{"params": [nn.Parameter(torch.ones(2))], "lr": -1}])
