"""Hyperoptimizer towers: exact against torch.optim, exact hypergradients, bounded, plug-and-play."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

from metalearner.errors import ConfigError
from metalearner.meta.towers import Tower, make_tower, tower_hparams, update_caps
from metalearner.observe.probe import optimizer_hparams

# base -> the plain optimizer a zero-step tower must reproduce
PLAIN = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "momentum": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
    "sgd": lambda p: torch.optim.SGD(p, lr=1e-2),
}


def tiny(seed: int = 0, dtype: torch.dtype = torch.float32):
    """A 3-6-1 tanh regressor and its full-batch loss ``loss(model)``."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).to(dtype)
    x, y = torch.randn(32, 3, dtype=dtype), torch.randn(32, 1, dtype=dtype)
    return model, lambda m: ((m(x) - y) ** 2).mean()


def backward(model, loss) -> float:
    model.zero_grad(set_to_none=True)
    value = loss(model)
    value.backward()
    return float(value.detach())


@pytest.mark.parametrize("warmup", [0, 10])
@pytest.mark.parametrize("base", list(PLAIN))
def test_height_one_with_zero_hyper_lr_is_the_plain_optimizer_step_for_step(base, warmup):
    """With a warm-up, the plain optimizer under torch's ``LambdaLR`` with the same linear ramp
    (without the ceiling on each step, which no plain optimizer has)."""
    (m1, loss), (m2, _) = tiny(), tiny()
    plain, tower = PLAIN[base](m1.parameters()), Tower(m2.parameters(), lr=1e-2, base=base, learn="all", hyper_lr=0.0, warmup=warmup,
                                                       max_update_ratio=0.0)  # fmt: skip
    ramp = torch.optim.lr_scheduler.LambdaLR(plain, lambda e: min(1.0, (e + 1) / warmup) if warmup else 1.0)
    for _ in range(30):
        backward(m1, loss), backward(m2, loss)
        plain.step(), tower.step()
        ramp.step()
        for a, b in zip(m1.parameters(), m2.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert tower.param_groups[0]["lr"] == pytest.approx(1e-2, rel=1e-12)


def _perturbations(group, delta):
    """z-space moves of every learned value: log for rates, logit for betas/momentum."""
    out = {"lr": lambda g, s: g.update(lr=g["lr"] * math.exp(s * delta))}

    def logit_shift(p, s):
        return 1 / (1 + math.exp(-(math.log(p / (1 - p)) + s * delta)))

    if "betas" in group:
        out["beta1"] = lambda g, s: g.update(betas=(logit_shift(g["betas"][0], s), g["betas"][1]))
        out["beta2"] = lambda g, s: g.update(betas=(g["betas"][0], logit_shift(g["betas"][1], s)))
    if "momentum" in group:
        out["momentum"] = lambda g, s: g.update(momentum=logit_shift(g["momentum"], s))
    for k in range(len(group["hyper_lrs"]) - 1):  # the top level is fixed
        out[f"hyper_lr_{k + 1}"] = lambda g, s, k=k: g.update(
            hyper_lrs=tuple(r * math.exp(s * delta) if i == k else r for i, r in enumerate(g["hyper_lrs"]))
        )
    return out


@pytest.mark.parametrize("base, hyper, warmup", [("adam", "adam", 0), ("momentum", "adam", 0), ("sgd", "sgd", 0), ("adam", "sgd", 20)])
def test_hypergradients_of_every_level_match_finite_differences(base, hyper, warmup):
    """(With a warm-up the step differentiated through is inside it: the lr applied is a fraction of ``lr``. Without the
    ceiling on each step: where it holds a step, the levels read the step applied with its factor held fixed, which
    ``test_with_a_ceiling_the_lr_hypergradient_is_that_of_the_step_applied`` checks.)"""
    model, loss = tiny(dtype=torch.float64)
    opt = Tower(model.parameters(), lr=0.05, base=base, learn="all", height=3, hyper_lr=[0.05, 0.02, 0.01], hyper=hyper, trace_decay=0.0,
                hyper_every=1, warmup=warmup, max_update_ratio=0.0)  # fmt: skip
    for _ in range(6):
        backward(model, loss)
        opt.step()
    snapshot = (model, opt)  # we differentiate through its next step

    def loss_after_step(perturb=None, sign=0):
        m, o = copy.deepcopy(snapshot)
        backward(m, loss)
        if perturb is not None:
            perturb(o.param_groups[0], sign)
        o.step()
        return m, o

    # analytic: the step after reports dL(θ_new)/dz for the values this step used, every level
    m, o = loss_after_step()
    backward(m, loss)
    o.step()
    analytic = [g for level in o.param_groups[0]["tower_state"]["hypergrads"] for g in level]

    delta = 1e-5
    perturb = _perturbations(snapshot[1].param_groups[0], delta)
    numeric = [
        (float(loss(loss_after_step(f, +1)[0]).detach()) - float(loss(loss_after_step(f, -1)[0]).detach())) / (2 * delta)
        for f in perturb.values()
    ]
    assert len(analytic) == len(numeric) == {"adam": 5, "momentum": 4, "sgd": 3}[base]
    for name, a, n in zip(perturb, analytic, numeric):
        assert a == pytest.approx(n, rel=1e-4, abs=1e-10), name


def test_state_dict_round_trip_continues_identically():
    model, loss = tiny()
    opt = Tower(model.parameters(), lr=1e-2, learn="all", height=2)
    for _ in range(5):
        backward(model, loss)
        opt.step()
    twin = copy.deepcopy(model)
    twin_opt = Tower(twin.parameters(), lr=0.5, learn="all", height=2)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    _assert_continue_alike((model, opt), (twin, twin_opt), loss, 5)


def test_a_state_saved_mid_warm_up_resumes_its_ramp_and_one_saved_before_warm_ups_resumes_as_it_ran():
    model, loss = tiny()
    opt = Tower(model.parameters(), lr=1e-2, base="sgd", height=2, warmup=50)
    for _ in range(10):
        backward(model, loss)
        opt.step()
    twin = copy.deepcopy(model)
    twin_opt = Tower(twin.parameters(), lr=0.5, base="sgd", height=2, warmup=0)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    _assert_continue_alike((model, opt), (twin, twin_opt), loss, 10)
    assert twin_opt.param_groups[0]["effective_lr"] == pytest.approx(twin_opt.param_groups[0]["lr"] * 20 / 50, rel=1e-12)

    old = Tower(model.parameters(), lr=1e-2, base="sgd", height=2, warmup=0, hyper_betas=(0.9, 0.9))  # as the code before saved it
    saved = old.state_dict()
    for g in saved["param_groups"]:
        del g["warmup"], g["warmup_hold"], g["hyper_betas"]
    (m1, _), (m2, _) = tiny(), tiny()
    plain = Tower(m1.parameters(), lr=1e-2, base="sgd", height=2, warmup=0, hyper_betas=(0.9, 0.9))
    resumed = Tower(m2.parameters(), lr=1e-2, base="sgd", height=2, hyper_betas=(0.0, 0.5))
    resumed.load_state_dict(saved)
    _assert_continue_alike((m1, plain), (m2, resumed), loss, 10)


def _assert_continue_alike(run, twin, loss, steps: int) -> None:
    """Both (model, optimizer) pairs take ``steps`` more steps; their weights and every level's
    hyperparameters stay equal bit for bit."""
    for _ in range(steps):
        for m, o in (run, twin):
            backward(m, loss)
            o.step()
    assert tower_hparams(run[1]) == tower_hparams(twin[1])
    for a, b in zip(run[0].parameters(), twin[0].parameters()):
        assert torch.equal(a, b)


def test_loading_a_state_into_the_same_optimizer_mid_run_continues_from_the_loaded_state():
    """The step's cached bookkeeping (``Tower._plan``) points into the states a load replaces."""
    model, loss = tiny()
    opt = Tower(model.parameters(), lr=1e-2, base="momentum", learn="all", height=2, hyper_every=2)
    for _ in range(5):
        backward(model, loss)
        opt.step()
    saved, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    twin = copy.deepcopy(model)
    twin_opt = Tower(twin.parameters(), lr=0.5, base="momentum", learn="all", height=2, hyper_every=2)
    twin_opt.load_state_dict(copy.deepcopy(saved))
    for _ in range(3):  # moves the buffers the plan points into
        backward(model, loss)
        opt.step()
    model.load_state_dict(weights)
    opt.load_state_dict(saved)
    _assert_continue_alike((model, opt), (twin, twin_opt), loss, 6)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_stays_flat_over_thousands_of_steps():
    torch.manual_seed(0)
    params = [torch.zeros(128, 128, requires_grad=True)]  # 64 KiB: a graph kept per step would be > 80 MiB
    opt = Tower(params, lr=1e-3, base="adam", learn="all", height=3)
    target, noise = torch.randn(128, 128), torch.randn(8, 128, 128)
    rss = []
    for step in range(1500):
        params[0].grad = params[0].detach() - target + noise[step % 8]  # a noisy quadratic
        opt.step()
        if step in (200, 1499):
            rss.append(_rss_bytes())
    assert rss[1] - rss[0] < 8 * 2**20
    state = opt.state[params[0]]
    tensors = {id(t): t for v in state.values() for t in (v if isinstance(v, list) else [v]) if torch.is_tensor(t)}.values()
    assert len(tensors) == 2 + 5  # Adam's moments, the lr trace's anchor, and the one-step vectors the betas' hypergradients read: d and three more
    assert all(t.grad_fn is None and not t.requires_grad for t in tensors)


def test_hyperparameters_stay_valid_when_training_diverges():
    x = torch.ones(4, requires_grad=True)
    opt = Tower([x], lr=3.0, base="adam", learn="all", height=3, hyper_lr=1.0)
    for step in range(200):
        x.grad = torch.full_like(x, float("nan")) if step % 7 == 3 else 1e30 * torch.sign(torch.randn(4))
        opt.step()
        hp = tower_hparams(opt)
        assert all(math.isfinite(v) for v in hp.values())
        assert hp["lr"] > 0 and 0 < hp["beta1"] < 1 and 0 < hp["beta2"] < 1


@pytest.mark.parametrize("base", ["sgd", "momentum", "adam"])
def test_a_loss_unbounded_below_raises_the_lr_to_its_bound_not_to_an_overflow(base):
    """``−Σx`` gives every step the same gradient, so every hypergradient says "larger": the
    lr grows until its bound (it used to reach 1e38 and make a float32 step overflow), and
    there level 1 sees that its moves no longer move it (its step size stops growing)."""
    x = torch.zeros(10, requires_grad=True)
    opt = Tower([x], lr=1e-3, base=base, height=3, max_update_ratio=0.0)  # (with the ceiling the lr would not rise)
    for step in range(6000):
        x.grad = -torch.ones(10)
        opt.step()
        if step == 3999:
            held = opt.param_groups[0]["hyper_lrs"]
    assert opt.param_groups[0]["lr"] == pytest.approx(1e20)
    assert opt.param_groups[0]["hyper_lrs"] == pytest.approx(held, rel=1e-3) and all(math.isfinite(r) for r in held)


@pytest.mark.parametrize("start", [1e-3, 0.9])
def test_sgd_tower_moves_its_learning_rate_to_the_greedy_optimum_of_a_quadratic(start):
    """On ½·a·‖x‖² the one-step hypergradient −lr·g_t·g_{t−1} changes sign at lr = 1/a. (Hyper-Adam
    with β1 = β2: here the hypergradients shrink geometrically as x converges, and with the
    default's shorter β1 the steps shrink with them, stalling from 1e-3 at 0.105 once x is gone; and
    no ceiling on the step: at the optimum a step is half the weights.)"""
    a = 2.0
    x = torch.linspace(1, 2, 10, requires_grad=True)
    opt = Tower([x], lr=start, base="sgd", height=1, hyper_lr=0.1, trace_decay=0.0, hyper_every=1, warmup=0, hyper_betas=(0.9, 0.9),
                max_update_ratio=0.0)  # fmt: skip
    for _ in range(300):
        x.grad = a * x.detach()
        opt.step()
        if x.abs().max() < 1e-20:  # converged: nothing left to learn from
            break
    assert 0.5 / 1.5 < opt.param_groups[0]["lr"] < 0.5 * 1.5


@pytest.mark.parametrize("base, learn, gamma, steps", [("sgd", "lr", 0.9, 8), ("momentum", "lr", 0.9, 8), ("adam", "lr", 0.9, 8),
                                                      ("adam", "all", 0.9, 8), ("sgd", "lr", 0.5, 40), ("adam", "lr", 0.5, 40),
                                                      ("adam", "all", 0.5, 40), ("momentum", "all", 0.5, 40)])  # fmt: skip
def test_trace_hypergradient_is_the_gradient_against_the_decayed_sum_of_past_updates(base, learn, gamma, steps):
    """Level 1 reads ∂L/∂log lr = −g_t·e_t, e_t = Σ_k γ^k u_{t−1−k}, the updates taken from the
    weights (read through the anchor, an average of the weights: exact with a hyper step every step)."""
    model, loss = tiny(dtype=torch.float64)
    opt = Tower(model.parameters(), lr=0.05, base=base, learn=learn, height=2, trace_decay=gamma, hyper_every=1)
    updates = []
    for _ in range(steps):
        before = [p.detach().clone() for p in model.parameters()]
        backward(model, loss)
        opt.step()
        updates.append([b - p.detach() for b, p in zip(before, model.parameters())])
    backward(model, loss)
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    trace = [sum(gamma**k * u[i] for k, u in enumerate(reversed(updates))) for i in range(len(grads))]
    expected = -sum(float((g * e).sum()) for g, e in zip(grads, trace))
    assert opt.param_groups[0]["tower_state"]["hypergrads"][0][0] == pytest.approx(expected, rel=1e-9)


def test_the_trace_reads_a_group_of_several_dtypes_as_one_of_a_single_dtype():
    """Such a group has no common flat buffer for the trace's products (``_trace_dot``)."""
    torch.manual_seed(0)
    start = [torch.randn(5, dtype=torch.float64), torch.randn(4)]

    def hypergrads(params):
        opt = Tower(params, lr=0.05, base="sgd", height=2, trace_decay=0.5, hyper_every=1)
        out = []
        for _ in range(6):
            for p in params:
                p.grad = None
            ((params[0] ** 2).sum() + (params[1].double() ** 4).sum()).backward()
            opt.step()
            out.append(opt.param_groups[0]["tower_state"]["hypergrads"][0][0])
        return out

    mixed = hypergrads([t.clone().requires_grad_() for t in start])
    single = hypergrads([t.double().requires_grad_() for t in start])
    assert mixed[-1] != 0 and mixed == pytest.approx(single, rel=1e-4)


@pytest.mark.parametrize("base, learn, gamma", [("sgd", "lr", 0.9), ("adam", "all", 0.9), ("momentum", "lr", 0.0), ("adam", "all", 0.0)])
def test_with_a_hyper_step_every_k_steps_the_steps_between_are_the_plain_base_and_it_reads_the_right_vectors(base, learn, gamma):
    """``hyper_every=4``: the hyperparameters change on steps 5, 9, … only, and the lr's
    hypergradient there reads the anchor ``a ← γ⁴ a + (1 − γ⁴) θ`` (``a`` = the first
    weights) as ``g·(θ − a)/γ``, or (``γ = 0``) the update of the step just before, ``−g·u``."""
    k = 4
    model, loss = tiny(dtype=torch.float64)
    opt = Tower(model.parameters(), lr=0.05, base=base, learn=learn, height=2, trace_decay=gamma, hyper_every=k, max_update_ratio=0.0)
    anchor = [p.detach().clone() for p in model.parameters()]
    last_update = None

    def learned() -> dict[str, float]:  # the levels' values (the lr applied changes every step of the warm-up)
        return {k: v for k, v in tower_hparams(opt).items() if k != "effective_lr"}

    for t in range(1, 14):
        before, weights = learned(), [p.detach().clone() for p in model.parameters()]
        backward(model, loss)
        if t > 1 and (t - 1) % k == 0:
            if gamma:
                anchor = [gamma**k * a + (1 - gamma**k) * w for a, w in zip(anchor, weights)]
                expected = sum(float((p.grad * (w - a)).sum()) for p, w, a in zip(model.parameters(), weights, anchor)) / gamma
            else:
                expected = -sum(float((p.grad * u).sum()) for p, u in zip(model.parameters(), last_update))
        opt.step()
        last_update = [w - p.detach() for w, p in zip(weights, model.parameters())]
        changed = learned() != before
        assert changed == (t > 1 and (t - 1) % k == 0), t
        if changed:
            assert opt.param_groups[0]["tower_state"]["hypergrads"][0][0] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("every", [1, 4])
def test_a_hyper_step_moves_log_lr_by_every_times_its_step(every):
    """Plain hyper-SGD at height 1: Δ log lr = −k · hyper_lr · ∂L/∂log lr on each hyper step."""
    model, loss = tiny(dtype=torch.float64)
    opt = Tower(model.parameters(), lr=0.05, base="sgd", height=1, hyper="sgd", hyper_lr=0.3, hyper_every=every, max_update_ratio=0.0)
    moved = 0
    for _ in range(13):
        before = math.log(opt.param_groups[0]["lr"])
        backward(model, loss)
        opt.step()
        after = math.log(opt.param_groups[0]["lr"])
        if after != before:
            moved += 1
            assert after - before == pytest.approx(-every * 0.3 * opt.param_groups[0]["tower_state"]["hypergrads"][0][0], rel=1e-9)
    assert moved == 12 // every


def test_a_parameter_whose_first_gradient_comes_later_joins_the_trace():
    model, loss = tiny()
    head = list(model.parameters())[-1]
    opt = Tower(model.parameters(), lr=1e-2, base="sgd", height=2, hyper_every=1)
    for step in range(12):
        backward(model, loss)
        if step < 5:
            head.grad = None  # no gradient yet: skipped by the step, as torch.optim does
        opt.step()
    assert "anchor" in opt.state[head] and all(math.isfinite(v) for v in tower_hparams(opt).values())


def test_plugs_into_an_ordinary_loop_and_the_probe_reads_it():
    model, loss = tiny()
    opt = make_tower(model.parameters(), lr=1e-2, base="adam", height=2)
    first = backward(model, lambda m: loss(m))
    for _ in range(50):
        opt.step(lambda: backward(model, loss))
    assert float(loss(model).detach()) < first
    lr, beta1 = optimizer_hparams(opt)
    assert lr == opt.param_groups[0]["effective_lr"] and opt.param_groups[0]["lr"] != 1e-2 and beta1 == 0.9  # in the warm-up
    assert list(tower_hparams(opt)) == ["lr", "effective_lr", "beta1", "beta2", "hyper_lr_1", "hyper_lr_2"]


def test_during_a_warm_up_the_probe_reads_the_lr_applied_and_the_group_keeps_the_learned_one():
    model, loss = tiny()
    opt = make_tower(model.parameters(), lr=1e-2, base="sgd", height=2, warmup=100)
    for _ in range(50):
        opt.step(lambda: backward(model, loss))
    learned = opt.param_groups[0]["lr"]
    assert learned != 1e-2 and optimizer_hparams(opt)[0] == pytest.approx(learned * 50 / 100, rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), "learning rate must be a positive"),
        (dict(lr="1e-3"), "learning rate must be a positive"),
        (dict(base="rmsprop"), "unknown tower base 'rmsprop'; choose from sgd, momentum, adam"),
        (dict(hyper="lion"), "unknown hyper rule 'lion'"),
        (dict(learn="betas"), "unknown learn 'betas'"),
        (dict(height=0), "tower height must be an integer >= 1"),
        (dict(height=2, hyper_lr=[0.1]), "hyper_lr needs one value per level (2)"),
        (dict(hyper_lr=-0.1), "hyper_lr must be a non-negative"),
        (dict(betas=(0.9, 1.0)), "betas must be in (0, 1)"),
        (dict(base="momentum", momentum=0.0), "momentum must be in (0, 1)"),
        (dict(trace_decay=1.0), "trace_decay must be 0 (the one-step hypergradient) or in [0.01, 1)"),
        (dict(trace_decay=1e-3), "trace_decay must be 0 (the one-step hypergradient) or in [0.01, 1)"),
        (dict(hyper_every=0), "hyper_every must be an integer >= 1"),
        (dict(warmup=-1), "warmup must be an integer >= 0"),
        (dict(warmup=2.5), "warmup must be an integer >= 0"),
        (dict(hyper_betas=(0.9, 1.0)), "hyper_betas must be two numbers in [0, 1)"),
        (dict(hyper_betas=(0.9,)), "hyper_betas must be two numbers in [0, 1)"),
        (dict(max_update_ratio=-0.1), "max_update_ratio must be a non-negative finite number"),
        (dict(max_update_ratio=math.inf), "max_update_ratio must be a non-negative finite number"),
        (dict(params=[{"params": [torch.zeros(2, requires_grad=True)], "max_update_ratio": -1.0}]), "max_update_ratio must be a non-negative"),
    ],
)
def test_invalid_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=None) as err:
        kwargs = dict(kwargs)
        Tower(kwargs.pop("params", [torch.zeros(2, requires_grad=True)]), **kwargs)  # a group's own value too
    assert message in str(err.value) and "\n" not in str(err.value)


def test_with_warmup_hold_the_levels_only_lower_the_lr_during_the_warm_up():
    """A start far too low: the hypergradient says "raise" throughout; held during the ramp
    (and a held move is no move for the level above), raised after it."""
    model, loss = tiny()
    opt = Tower(model.parameters(), lr=1e-6, base="sgd", height=2, warmup=60, warmup_hold=True, hyper_every=1)
    lrs, hyper = [], []
    for _ in range(120):
        opt.step(lambda: backward(model, loss))
        lrs.append(opt.param_groups[0]["lr"]), hyper.append(opt.param_groups[0]["hyper_lrs"][0])
    assert max(lrs[:60]) == pytest.approx(1e-6, rel=1e-12) and hyper[:60] == pytest.approx([0.03] * 60, rel=1e-12)
    assert lrs[-1] > 3e-6 and hyper[-1] > 0.0301


def test_update_caps_are_the_largest_lr_within_the_ratio_and_none_for_zero_weights():
    params = [torch.full((4,), 2.0), torch.zeros(3), torch.ones(2, 2, dtype=torch.float64)]
    vecs = [torch.full((4,), 1.0), torch.ones(3), torch.zeros(2, 2, dtype=torch.float64)]
    lrs = update_caps(params, vecs, ratio=0.1)  # ‖w‖ = 4, ‖v‖ = 2: 0.1·4/2; zero weights; no step; two dtypes
    assert lrs == pytest.approx([0.2, math.inf, math.inf], rel=1e-6)
    assert update_caps(params[:1], vecs[:1], ratio=0.1) == pytest.approx([0.2], rel=1e-6)  # one dtype: one stack


@pytest.mark.parametrize("every", [1, 6])
@pytest.mark.parametrize("learn", ["lr", "all"])
@pytest.mark.parametrize("base", ["sgd", "momentum", "adam"])
def test_a_ceiling_keeps_each_tensors_step_within_its_ratio_of_the_weights_and_the_lr_from_winding_up(base, learn, every):
    """A start far too high: on the steps where the ceiling is measured (the first block's and every
    hyper step) every tensor's step is held to ``ratio·‖w‖`` (a tensor whose weights are 0 is not held,
    so it can move); nothing goes non-finite; and the levels, whose hypergradient here says
    "raise" (the held steps are small and useful), do not raise the lr: a held step would not
    grow with it (without that rule this lr wound up, e.g. to 14-83 in 60 steps)."""
    model, loss = tiny()
    torch.nn.init.zeros_(model[0].bias)
    opt = Tower(model.parameters(), lr=10.0, base=base, learn=learn, height=2, warmup=0, max_update_ratio=0.01, hyper_every=every)
    for t in range(1, 61):
        before = [p.detach().clone() for p in model.parameters()]
        opt.step(lambda: backward(model, loss))
        if t <= every or (t - 1) % every == 0:  # the steps where the ceiling is measured
            for b, p in zip(before, model.parameters()):
                if b.norm() > 0:
                    assert float((p.detach() - b).norm()) <= 0.01 * float(b.norm()) * (1 + 1e-5)
        if t == 1:
            assert model[0].bias.detach().norm() > 0  # zero weights: not held
        assert opt.param_groups[0]["lr"] <= 10.0 * (1 + 1e-12)
    assert all(math.isfinite(x) for p in model.parameters() for x in p.detach().flatten().tolist())


@pytest.mark.parametrize("learn", ["lr", "all"])
@pytest.mark.parametrize("base", ["sgd", "momentum", "adam"])
def test_with_a_ceiling_the_lr_hypergradient_is_that_of_the_step_applied(base, learn):
    """The one-step form: ``∂L/∂log lr = −g_t·u_{t−1}`` with ``u`` the capped step, read from the weights."""
    model, loss = tiny(dtype=torch.float64)
    opt = Tower(model.parameters(), lr=1.0, base=base, learn=learn, height=2, trace_decay=0.0, hyper_every=1, warmup=0,
                max_update_ratio=0.02)  # fmt: skip
    for _ in range(5):
        backward(model, loss)
        opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    backward(model, loss)
    opt.step()
    applied = [b - p.detach() for b, p in zip(before, model.parameters())]
    held = [float(u.norm()) == pytest.approx(0.02 * float(b.norm()), rel=1e-9) for u, b in zip(applied, before)]
    assert sum(held) >= 2  # the step differentiated through is a capped one
    backward(model, loss)
    expected = -sum(float((p.grad * u).sum()) for p, u in zip(model.parameters(), applied))
    opt.step()
    assert opt.param_groups[0]["tower_state"]["hypergrads"][0][0] == pytest.approx(expected, rel=1e-9)


def test_a_state_saved_before_the_ceiling_existed_resumes_without_one():
    (m1, loss), (m2, _) = tiny(), tiny()
    old = Tower(m1.parameters(), lr=10.0, base="adam", height=2, max_update_ratio=0.0)
    new = Tower(m2.parameters(), lr=10.0, base="adam", height=2, max_update_ratio=0.01)
    for _ in range(3):
        old.step(lambda: backward(m1, loss))
    m2.load_state_dict(m1.state_dict())
    saved = copy.deepcopy(old.state_dict())
    del saved["param_groups"][0]["max_update_ratio"]
    new.load_state_dict(saved)
    _assert_continue_alike((m1, old), (m2, new), loss, steps=10)


@pytest.mark.parametrize("save_at", [8, 12])
def test_the_ceilings_record_survives_a_state_dict_round_trip(save_at):
    """Each tensor's ceiling and whether it held the group since the last hyper step are part of
    the state: a run saved mid-block (8) or on the block's last step (12, whose hyper step reads
    ``ceiling_held``) continues alike."""
    model, loss = tiny()
    opt = Tower(model.parameters(), lr=10.0, base="adam", height=2, warmup=0, max_update_ratio=0.01)
    for _ in range(save_at):
        backward(model, loss)
        opt.step()
    assert opt.param_groups[0]["tower_state"]["ceiling_held"]
    assert all(0 < opt.state[p]["ceiling_lr"] < 10.0 for p in model.parameters())
    twin = copy.deepcopy(model)
    twin_opt = Tower(twin.parameters(), lr=1e-3, base="adam", height=2)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    _assert_continue_alike((model, opt), (twin, twin_opt), loss, 12)


def test_a_small_tensor_held_alone_does_not_stop_the_lr_rising():
    """A norm layer's zero-initialised bias is held on most blocks (its weights are tiny); it makes
    up a few of the group's elements, so the levels still raise a start far too low for the rest."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.LayerNorm(32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    opt = Tower(model.parameters(), lr=1e-5, base="adam", height=2, warmup=0, max_update_ratio=0.01)
    for _ in range(600):
        opt.step(lambda: backward(model, lambda m: ((m(x) - y) ** 2).mean()))
    lr = opt.param_groups[0]["lr"]
    assert opt.state[model[1].bias]["ceiling_lr"] < lr  # held
    assert lr > 1e-3


def test_a_tensor_gets_its_own_ceiling_when_the_set_with_gradients_changes():
    """Two heads used in turn (the same number of tensors with a gradient each time): each head's
    first step is measured against its own weights, not the other's."""
    torch.manual_seed(0)
    big, small = torch.nn.Parameter(torch.randn(50) * 10), torch.nn.Parameter(torch.randn(50) * 0.01)
    opt = Tower([big, small], lr=1.0, base="sgd", height=1, warmup=0, max_update_ratio=0.1, hyper_every=6)
    for t in range(1, 13):
        p = big if t % 2 else small
        before = p.detach().clone()
        big.grad, small.grad = (torch.ones(50), None) if p is big else (None, torch.ones(50))
        opt.step()
        if t <= 2:  # each one's first step: measured against its own weights
            assert float((p.detach() - before).norm()) <= 0.1 * float(before.norm()) * (1 + 1e-5)


@pytest.mark.parametrize("base", ["adam", "momentum"])
def test_with_a_ceiling_on_a_single_tensor_every_hypergradient_is_that_of_the_plain_step_at_the_lr_applied(base):
    """With one tensor the ceiling scales the whole step by one factor ``c``, so the capped step is
    the plain step at ``lr·c``, and every hypergradient (``learn="all"``: the betas' or the
    momentum's too) must be that of a tower without a ceiling whose lr is set to ``lr·c`` at each
    step (its levels frozen, ``hyper_lr=0``, so that only the set values count)."""
    torch.manual_seed(0)
    x, twin_x = (torch.nn.Parameter(torch.randn(20, dtype=torch.float64)) for _ in range(2))
    twin_x.data.copy_(x.data)
    target = torch.randn(20, dtype=torch.float64)
    kw = dict(base=base, learn="all", height=1, hyper_lr=0.0, trace_decay=0.0, hyper_every=1, warmup=0)
    opt, twin = Tower([x], lr=5.0, max_update_ratio=0.05, **kw), Tower([twin_x], lr=5.0, max_update_ratio=0.0, **kw)
    held = 0
    for _ in range(12):
        for p in (x, twin_x):
            p.grad = (p.detach() - target) * torch.linspace(0.5, 2.0, 20, dtype=torch.float64)
        opt.step()
        c = min(1.0, opt.state[x]["ceiling_lr"] / opt.param_groups[0]["lr"])
        held += c < 1
        twin.param_groups[0]["lr"] = 5.0 * c
        twin.step()
        twin.param_groups[0]["lr"] = 5.0  # as the user set it: read back at the next step
        torch.testing.assert_close(x.detach(), twin_x.detach(), rtol=1e-10, atol=1e-12)
        a, b = opt.param_groups[0]["tower_state"]["hypergrads"], twin.param_groups[0]["tower_state"]["hypergrads"]
        assert a[0] == pytest.approx(b[0], rel=1e-8, abs=1e-14)
    assert held >= 6


@pytest.mark.parametrize("base", list(PLAIN))
def test_hyper_grads_replace_the_gradient_in_the_hypergradient_only(base):
    """``step(hyper_grads=...)``: the weights follow ``.grad`` as always; the levels read the
    other gradient. Given ``.grad`` itself it is the plain step; given another loss's gradient,
    the lr's hypergradient is that loss's (here of the opposite sign: the lr moves the other way)."""
    runs = {}
    for mode in ("plain", "same", "negated"):
        model, loss = tiny(dtype=torch.float64)
        opt = Tower(model.parameters(), lr=0.05, base=base, height=2, trace_decay=0.0, hyper_every=1, warmup=0, max_update_ratio=0.0)
        lrs, hypergrads = [], []
        for _ in range(5):
            backward(model, loss)
            if mode == "plain":
                opt.step()
            else:
                sign = 1.0 if mode == "same" else -1.0
                opt.step(hyper_grads={p: sign * p.grad for p in model.parameters()})
            lrs.append(opt.param_groups[0]["lr"])
            hypergrads.append(copy.deepcopy(opt.param_groups[0]["tower_state"]["hypergrads"]))
        runs[mode] = (lrs, hypergrads, [p.detach().clone() for p in model.parameters()])
    assert runs["same"][:2] == runs["plain"][:2] and all(torch.equal(a, b) for a, b in zip(runs["same"][2], runs["plain"][2]))
    # the first hyper step (step 2) reads the same weights and vectors, so the lr's hypergradient is exactly negated
    assert runs["negated"][1][1][0][0] == -runs["plain"][1][1][0][0] != 0
    assert (runs["negated"][0][1] > 0.05) != (runs["plain"][0][1] > 0.05)  # and its move goes the other way
    model, loss = tiny()
    opt = Tower(model.parameters(), lr=0.05, base=base)
    backward(model, loss)
    before = [p.detach().clone() for p in model.parameters()]
    for bad in ({}, {p: torch.zeros(1) for p in model.parameters()}):
        with pytest.raises(ConfigError, match="hyper_grads needs a tensor shaped like each parameter that has a gradient"):
            opt.step(hyper_grads=bad)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # refused before any weight moved


def test_a_scheduler_may_set_the_lr_to_zero():
    """A warm-up from 0 (or a cosine's end) steps by nothing; the tower goes on from the
    smallest lr it keeps, 1e-20, instead of failing on log(0)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = Tower(model.parameters(), lr=1e-2, height=2, warmup=0, hyper_every=1)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: t / 5)
    before = model.weight.detach().clone()
    x = torch.randn(8, 3)
    loss = model(x).pow(2).mean()
    loss.backward()
    opt.step()
    assert torch.equal(model.weight, before)
    for _ in range(6):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        schedule.step()
    assert torch.isfinite(model.weight).all() and not torch.equal(model.weight, before)
    fresh = Tower(model.parameters(), lr=1e-2, height=2, warmup=0, hyper_every=1)
    opt.param_groups[0]["lr"] = 0.0  # as a scheduler leaves it between hyper steps
    fresh.load_state_dict(opt.state_dict())  # a state saved at lr 0 loads


@pytest.mark.parametrize("group, message", [({"hyper_every": 0}, "hyper_every"), ({"base": "foo"}, "tower base"),
                                            ({"betas": (0.9, 1.5)}, "betas"), ({"lr": -1.0}, "learning rate")])  # fmt: skip
def test_a_groups_own_values_are_checked(group, message):
    with pytest.raises(ConfigError, match=message):
        Tower([{"params": [torch.nn.Parameter(torch.ones(2))], **group}])


def test_a_loss_given_to_step_is_a_one_line_error_before_any_change():
    w = torch.ones(3, requires_grad=True)
    tower = Tower([w], lr=0.1)
    (w**2).sum().backward()
    with pytest.raises(ConfigError, match="closure"):
        tower.step(torch.tensor(1.0))
    assert torch.equal(w, torch.ones(3)) and not tower.state
