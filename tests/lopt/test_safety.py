"""NaN/Inf robustness and safe (pickle-free) weight loading."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn

from metalearner.errors import MetalearnerError
from metalearner.lopt import LRController, Opt2Vec, PolicyWeights, WeightsError, default_weights
from metalearner.lopt.learned import LearnedOptimizer
from metalearner.lopt.policy import PolicyConfig
from metalearner.observe import Probe

# these tests exercise the mechanics with the budget left out; the warning itself: test_opt2vec_weights_that_read_the_budget_warn_without_one
pytestmark = pytest.mark.filterwarnings("ignore:these Opt2Vec weights read the budget fraction")


def _steps(model, opt, x, n):
    for _ in range(n):
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step(loss=loss)


@pytest.mark.parametrize("poison", ["loss", "grad_nan", "grad_inf"])
@pytest.mark.parametrize("at", [0, 1])  # inside the window, or on its observed (last) step
def test_a_bad_window_is_rolled_back_backed_off_and_visible(poison, at):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = Opt2Vec(model.parameters(), 1e-2, observe_every=2, use_extended_features=True)
    probe = Probe(model, opt)
    x = torch.randn(8, 3)
    _steps(model, opt, x, 4)  # two full windows
    before = [p.detach().clone() for p in model.parameters()]
    moments = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    g = opt.state["opt2vec"]
    lr_before = opt.param_groups[0]["lr"] * g["lr_scale"] * g["backoff"]  # what the next step would apply
    for t in range(2):  # the next window, poisoned at step `at`
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        if t == at:
            if poison == "loss":
                loss = torch.tensor(math.nan)
            else:
                model.weight.grad[0, 0] = math.nan if poison == "grad_nan" else math.inf
        opt.step(loss=loss)
    assert opt.skipped_steps == 2
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # back at the window's start
    assert all(torch.equal(opt.state[p]["exp_avg"], m) for p, m in zip(model.parameters(), moments))
    _steps(model, opt, x, 1)
    assert opt.param_groups[0]["effective_lr"] == pytest.approx(lr_before / 2)  # what the next step applied
    assert probe._host["lr"][-1] == pytest.approx(lr_before / 2)  # the probe logged the back-off
    _steps(model, opt, x, 5)
    state = opt.state_dict()["state"]
    assert all(torch.isfinite(t).all() for s in state.values() if isinstance(s, dict) for t in s.values() if torch.is_tensor(t))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    probe.close()


def test_a_bad_first_window_restarts_the_moments():
    model = nn.Linear(3, 2)
    start = [p.detach().clone() for p in model.parameters()]
    opt = Opt2Vec(model.parameters(), 1e-2, observe_every=4)
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step(loss=torch.tensor(math.inf))
    assert opt.skipped_steps == 4 and all(torch.equal(p, q) for p, q in zip(model.parameters(), start))
    assert all(p not in opt.state for p in model.parameters())


def test_controller_backs_off_on_a_bad_window():
    model = nn.Linear(3, 2)
    ctrl = LRController(torch.optim.Adam(model.parameters(), lr=1e-2), observe_every=2)
    x = torch.randn(8, 3)
    for t in range(2):
        loss = model(x).pow(2).mean()
        ctrl.zero_grad()
        loss.backward()
        ctrl.step(loss=torch.tensor(math.inf) if t == 0 else loss)
    assert ctrl.skipped_steps == 2
    _steps(model, ctrl, x, 1)
    assert ctrl.param_groups[0]["lr"] == 1e-2 and ctrl.param_groups[0]["effective_lr"] == pytest.approx(5e-3)
    assert torch.isfinite(ctrl.ctrl_state["history"]).all()


def test_learned_optimizers_read_the_device_only_at_observations(monkeypatch):
    """No host synchronisation on steps that do not observe: every read of a tensor's value
    (``bool``, ``float``, ``item``, ``tolist``) during a step falls on an observation."""
    reads = []
    for name in ("__bool__", "__float__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            reads.append(1)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(8, 3)
    for make in (lambda ps: Opt2Vec(ps, 1e-2, observe_every=16),
                 lambda ps: LRController(torch.optim.SGD(ps, lr=1e-2), observe_every=16),
                 lambda ps: LearnedOptimizer(ps, 1e-2)):  # fmt: skip
        opt = make(model.parameters())
        every = opt.kernel.observe_every if isinstance(opt, LearnedOptimizer) else 16
        per_step = []
        for _ in range(4 * every):
            reads.clear()
            _steps(model, opt, x, 1)
            per_step.append(len(reads))
        observing = [(i + 1) % every == 0 for i in range(len(per_step))]
        assert all(n == 0 for n, o in zip(per_step, observing) if not o), (type(opt).__name__, per_step)
        assert all(0 < n <= 8 for n, o in zip(per_step, observing) if o), (type(opt).__name__, per_step)


def test_weights_round_trip(tmp_path):
    w = PolicyWeights.init(PolicyConfig(history_length=4, hidden_dim=8, embedding_dim=8), seed=3)
    w.save(tmp_path / "w.safetensors", metadata={"note": "x"})
    v = PolicyWeights.load(tmp_path / "w.safetensors")
    assert v.config == w.config and v.metadata["note"] == "x"
    assert torch.equal(v.flat(), w.flat())
    Opt2Vec([nn.Parameter(torch.ones(2))], weights=tmp_path / "w.safetensors")


def test_pickle_renamed_to_safetensors_fails_cleanly(tmp_path):
    path = tmp_path / "evil.safetensors"

    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled!",))

    path.write_bytes(pickle.dumps({"w": Boom()}))
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        PolicyWeights.load(path)
    torch.save({"enc0.weight": torch.ones(2)}, tmp_path / "torch.safetensors")
    with pytest.raises(MetalearnerError):
        Opt2Vec([nn.Parameter(torch.ones(2))], weights=tmp_path / "torch.safetensors")
    with pytest.raises(WeightsError, match="does not exist"):
        PolicyWeights.load(tmp_path / "missing.safetensors")
    with pytest.raises(WeightsError, match="is a folder"):
        PolicyWeights.load(tmp_path)


def test_shipped_weights_load_without_pickle(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    for kind in ("opt2vec", "controller"):
        w = default_weights(kind)
        assert w.config.kind == kind and w.n_params < 10_000
    with pytest.raises(WeightsError, match="for 'controller'"):
        Opt2Vec([nn.Parameter(torch.ones(2))], weights=default_weights("controller"))


def test_the_guards_bound_the_motion_and_halve_on_a_spike():
    from metalearner.lopt.policy import MAX_MOVE, META_SPIKE_GUARD, SPIKE_GUARD, guarded_lr_scale, guarded_momentum

    state = {"lr_scale": 1.0}
    assert guarded_lr_scale(state, 20.0, 1.0, SPIKE_GUARD) == pytest.approx(1.5)  # at most 1.5x up ...
    assert guarded_lr_scale({"lr_scale": 1.0}, 0.01, 1.0, SPIKE_GUARD) == pytest.approx(1 / 1.5)  # ... or down
    assert guarded_lr_scale({"lr_scale": 1.0}, 1.2, 1.0, SPIKE_GUARD) == pytest.approx(1.2)  # within the bound: as proposed
    state = {"lr_scale": 2.0, "min_loss": 0.5}
    assert guarded_lr_scale(state, 20.0, 2.0, META_SPIKE_GUARD) == pytest.approx(1.0)  # 4x its best window: half, not up
    assert state["spike_guards"] == 1 and state["min_loss"] == 0.5
    for guard, fires in ((SPIKE_GUARD, True), (META_SPIKE_GUARD, False)):  # 2.5x its best window
        state = {"lr_scale": 2.0, "min_loss": 0.4}
        assert guarded_lr_scale(state, 2.0, 1.0, guard) == pytest.approx(1.0 if fires else 2.0)
        assert state.get("spike_guards", 0) == int(fires)
    assert guarded_lr_scale({"lr_scale": 0.06}, 0.05, 1.0, SPIKE_GUARD) >= math.exp(-3) - 1e-12  # never below 1/20
    assert guarded_momentum(0.9, 0.2) == pytest.approx(1 / (1 + math.exp(-(math.log(9) - 0.5))))
    assert guarded_momentum(0.9, 0.91) == pytest.approx(0.91)
    assert MAX_MOVE == pytest.approx(math.log(1.5))


def _asks_for_the_most(kind: str) -> PolicyWeights:
    w = default_weights(kind)
    w = w.with_flat(torch.zeros(w.n_params))
    w.tensors["head.bias"].fill_(100.0)  # the largest lr (and, for Opt2Vec, momentum) at once
    return w


@pytest.mark.parametrize("kind", ["opt2vec", "controller"])
def test_opt2vec_and_the_controller_move_their_lr_a_bounded_amount(kind):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    w = _asks_for_the_most(kind)
    opt = (Opt2Vec(model.parameters(), 1e-3, weights=w, observe_every=2) if kind == "opt2vec"
           else LRController(torch.optim.Adam(model.parameters(), lr=1e-3), weights=w, observe_every=2))  # fmt: skip
    x = torch.randn(8, 3)
    lrs = []
    for _ in range(4):
        _steps(model, opt, x, 2)
        lrs.append(opt.param_groups[0]["effective_lr"])
    ratios = [b / a for a, b in zip([1e-3, *lrs], lrs)]
    assert max(ratios) <= 1.5 * (1 + 1e-9) and lrs[-1] >= 1e-3 * 1.5**3 * (1 - 1e-9), ratios  # not 20x at once
    if kind == "opt2vec":
        assert opt.param_groups[0]["effective_momentum"] < 0.99


@pytest.mark.parametrize("kind", ["opt2vec", "controller"])
@pytest.mark.parametrize("factor, guard, fires", [(10.0, {}, True), (2.5, {}, True), (2.5, {"spike_guard": 3.0}, False)])
def test_opt2vec_and_the_controller_halve_their_lr_on_a_loss_spike(kind, factor, guard, fires):
    """A window ``factor`` times its best halves the scale under the default 2x guard; the
    3x guard of meta-training lets a 2.5x window pass."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    w = default_weights(kind)
    w = w.with_flat(torch.zeros(w.n_params))  # untrained: the scale stays 1 until the spike
    opt = (Opt2Vec(model.parameters(), 1e-3, weights=w, observe_every=2, **guard) if kind == "opt2vec"
           else LRController(torch.optim.Adam(model.parameters(), lr=1e-3), weights=w, observe_every=2, **guard))  # fmt: skip
    x = torch.randn(8, 3)
    _steps(model, opt, x, 4)
    for _ in range(2):  # a window whose loss is `factor` times its best
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step(loss=loss.detach() * factor)
    state = opt.state["opt2vec"] if kind == "opt2vec" else opt.ctrl_state
    assert state["spike_guards"] == int(fires)
    assert state["lr_scale"] == pytest.approx(0.5 if fires else 1.0)
    _steps(model, opt, x, 1)  # the next step applies it, and the group records it for the probe
    assert opt.param_groups[0]["effective_lr"] == pytest.approx(opt.param_groups[0]["lr"] * (0.5 if fires else 1.0))


@pytest.mark.parametrize("guard", [1.0, 0.5, math.nan, "two", None])
def test_a_spike_guard_that_is_not_a_factor_above_one_is_refused(guard):
    from metalearner.errors import ConfigError

    model = nn.Linear(3, 2)
    with pytest.raises(ConfigError, match="spike_guard must be > 1"):
        Opt2Vec(model.parameters(), spike_guard=guard)
    with pytest.raises(ConfigError, match="spike_guard must be > 1"):
        LRController(torch.optim.Adam(model.parameters()), spike_guard=guard)
    assert Opt2Vec(model.parameters(), spike_guard="3").spike_guard == 3.0  # a spec's string is read as a number
    assert LRController(torch.optim.Adam(model.parameters()), spike_guard=math.inf).spike_guard == math.inf  # the guard off
