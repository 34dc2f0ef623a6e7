"""The meta-training engine: estimators, the batched population, the kernel, checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metalearner.errors import ConfigError, MetalearnerError
from metalearner.lopt.engine import EngineConfig, run
from metalearner.lopt.estimators import PES, AntitheticES
from metalearner.lopt.functional import KERNEL_FEATURES, LearnedKernel, ParamLayout
from metalearner.lopt.truncation import PopulationConfig, PopulationStep, UnrollOut, batched_forward, log_ratio
from metalearner.tasks.models import ModelConfig, build_model

torch.set_num_threads(1)

# -- a toy truncated step whose meta-gradient autograd knows ---------------------------------


@dataclass
class ToyState:
    s: torch.Tensor  # (P, 2)
    step: torch.Tensor  # (P,)


class LinearQuadratic:
    """``s ← A s + θ``, terms ``½‖s − c‖² / T``: the episode meta-loss is quadratic in θ, so
    antithetic estimates are exactly unbiased, and ``s`` carries θ across truncations."""

    A = torch.tensor([[0.8, -0.3], [0.3, 0.8]])
    c = torch.tensor([1.0, -1.0])

    def __init__(self, horizon: int):
        self.horizon = horizon

    def sample_horizon(self, rng: np.random.Generator) -> int:
        return self.horizon

    def init_step_state(self, slots: torch.Tensor, key: int, horizon: int | None = None) -> ToyState:
        return ToyState(torch.zeros(len(slots), 2), torch.zeros(len(slots), dtype=torch.int64))

    def unroll_step(self, theta: torch.Tensor, state: ToyState, n_steps: int) -> tuple[ToyState, UnrollOut]:
        terms, dones = [], []
        s, step = state.s, state.step
        for _ in range(n_steps):
            s, step = s @ self.A.T + theta, step + 1
            terms.append(0.5 * (s - self.c).square().sum(1) / self.horizon)
            done = step >= self.horizon
            dones.append(done)
            s, step = torch.where(done[:, None], 0.0, s), torch.where(done, 0, step)
        return ToyState(s, step), UnrollOut(torch.stack(terms, 1), torch.stack(dones, 1))


def exact_gradient(toy: LinearQuadratic, theta: torch.Tensor, n_steps: int) -> torch.Tensor:
    theta = theta.clone().requires_grad_(True)
    _, out = toy.unroll_step(theta[None], toy.init_step_state(torch.zeros(1), 0), n_steps)
    return torch.autograd.grad(out.loss.sum(), theta)[0]


def summed_estimate(estimator, theta: torch.Tensor, calls: int) -> torch.Tensor:
    """Per-pair estimates summed over ``calls`` consecutive calls (θ fixed): ``(N, D)``."""
    state, total = estimator.init(theta, 0), 0
    for k in range(calls):
        est = estimator.estimate(theta, state, 100 + k)
        state, total = est.state, total + est.per_pair
    return total


THETA = torch.tensor([0.1, 0.3])
# (estimator, calls, steps covered): the horizon is 5; PES's truncations of 3 end episodes mid-truncation
ESTIMATOR_CASES = {
    "es": (lambda toy: AntitheticES(toy, pairs=20000, sigma=0.1), 1, 5),
    "pes": (lambda toy: PES(toy, pairs=20000, sigma=0.1, truncation=3), 3, 9),
}


@pytest.mark.parametrize("name", ESTIMATOR_CASES)
def test_estimator_is_unbiased_on_a_quadratic(name):
    make, calls, steps = ESTIMATOR_CASES[name]
    toy = LinearQuadratic(horizon=5)
    per_pair = summed_estimate(make(toy), THETA, calls)
    mean, se = per_pair.mean(0), per_pair.std(0) / len(per_pair) ** 0.5
    target = exact_gradient(toy, THETA, steps)
    assert target.abs().min() > 10 * se.max()  # a gradient worth estimating
    assert ((mean - target).abs() < 5 * se).all(), (mean, target, se)


def test_truncated_es_without_the_accumulator_is_biased():
    toy = LinearQuadratic(horizon=5)
    per_pair = summed_estimate(PES(toy, pairs=20000, sigma=0.1, truncation=3, persistent=False), THETA, 3)
    mean, se = per_pair.mean(0), per_pair.std(0) / len(per_pair) ** 0.5
    assert ((mean - exact_gradient(toy, THETA, 9)).abs() > 10 * se).any()


# -- the batched population ------------------------------------------------------------------

LOPT = LearnedKernel(LearnedKernel.policy_config(history_length=2, hidden_dim=4, embedding_dim=4, observe_every=4), base="adam")
LOPT_SF = LearnedKernel(LOPT.config, base="schedulefree")
TINY_POP = dict(dataset="digits", n_train=256, depth=1, width=8, activation="tanh", batch_size=16,
                base_lrs=(1e-3, 1e-2), input_scales=(0.5, 1.0), eval_every=4, n_val=64)  # fmt: skip
FAMILIES = {
    "mlp": PopulationConfig(**TINY_POP, horizon_epochs=(0.25, 0.5)),
    "cnn": PopulationConfig(**{**TINY_POP, "family": "cnn", "depth": 1, "width": 4}, horizon_epochs=(0.25, 0.5)),
    "rnn": PopulationConfig(**{**TINY_POP, "dataset": "synthetic", "data_options": (("n_features", 8),), "family": "rnn",
                               "width": 4}, horizon_epochs=(0.25, 0.5)),
    "transformer": PopulationConfig(**{**TINY_POP, "family": "transformer", "width": 8, "activation": "gelu"}, horizon_epochs=(0.25, 0.5)),
}


@pytest.mark.parametrize("shape", [(12,), (2, 6), (1, 5, 4)])
@pytest.mark.parametrize("cfg", [ModelConfig(family="rnn", depth=1, width=6, activation="tanh"),
                                 ModelConfig(family="rnn", depth=2, width=6, activation="tanh"),
                                 ModelConfig(family="transformer", depth=2, width=8, activation="gelu"),  # one head
                                 ModelConfig(family="transformer", depth=2, width=32, activation="gelu")],  # two heads
                         ids=["gru1", "gru2", "transformer8", "transformer32"])  # fmt: skip
def test_batched_gru_and_transformer_are_the_modules_forward(shape, cfg):
    """Written out as batched products over members (no vmap): outputs and gradients of each member's module."""
    models = [build_model(cfg, shape, 3, seed=s) for s in range(3)]
    layout = ParamLayout.of(models[0])
    forward = batched_forward(cfg, layout, models[0])
    x = torch.randn(3, 5, *shape, generator=torch.Generator().manual_seed(0))
    expected = torch.stack([m(x[i]) for i, m in enumerate(models)])
    params = torch.stack([layout.flatten(m) for m in models]).requires_grad_(True)
    out = forward(params, x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    expected.square().sum().backward()  # gradients too
    torch.testing.assert_close(params.grad, torch.stack([torch.cat([p.grad.reshape(-1) for p in m.parameters()]) for m in models]),
                               rtol=1e-4, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_population_matches_members_one_by_one(family):
    step = PopulationStep(FAMILIES[family], LOPT)
    theta0 = LOPT.init_theta()
    gen = torch.Generator().manual_seed(0)
    thetas = theta0 + 0.5 * torch.randn(4, len(theta0), generator=gen)  # members differ in θ, task, batches
    state, out = step.unroll_step(thetas, step.init_step_state(torch.arange(4), key=7), 24)
    assert out.done.any(1).all()  # every member finished an episode and restarted inside the unroll
    for i in range(4):
        alone, out_i = step.unroll_step(thetas[i : i + 1], step.init_step_state(torch.tensor([i]), key=7), 24)
        torch.testing.assert_close(out_i.loss[0], out.loss[i], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(alone.params[0], state.params[i], rtol=1e-4, atol=1e-6)
        assert torch.equal(out_i.done[0], out.done[i])


def test_a_diverging_member_costs_the_maximum_and_leaves_the_others_alone():
    cfg = replace(FAMILIES["mlp"], base_lrs=(3e-3,), horizon_epochs=(1.0, 1.0))
    step = PopulationStep(cfg, LOPT)
    base_lr = torch.tensor([3e-3, 1e6])  # member 1 explodes
    calm = step.init_step_state(torch.tensor([0]), key=1)
    both = step.init_step_state(torch.tensor([0, 1]), key=1)
    _, out = step.unroll_step(LOPT.init_theta().expand(2, -1), replace(both, base_lr=base_lr), 16)
    _, alone = step.unroll_step(LOPT.init_theta()[None], calm, 16)
    assert torch.isfinite(out.loss).all()
    assert float(out.loss[1].sum()) > 1.0  # +2 per evaluation, at every evaluation after it blew up
    torch.testing.assert_close(out.loss[0], alone.loss[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", [*FAMILIES, "rnn-2x6"])
def test_member_initial_weights_are_build_models(family):
    config = FAMILIES[family] if family in FAMILIES else replace(FAMILIES["rnn"], depth=2, width=6)  # bound 1/√6, two layers
    step = PopulationStep(config, LOPT)
    state = step.init_step_state(torch.arange(3), key=5)
    for i in range(3):
        seed = step._task(5, i, 0)["init_seed"]
        model = build_model(config.model(), step.data.input_shape, step.data.n_classes, seed=seed)
        assert torch.equal(state.params[i], step.layout.flatten(model))


def test_weight_reparameterisation_scales_each_tensors_step_and_nothing_else():
    """With ``w = s w'`` per tensor, the model starts from the same weights, the task's other
    draws are unchanged, and the untrained kernel (Adam, scale-free in the gradient) moves
    each tensor as Adam with the learning rate ``s · lr`` would."""
    cfg = replace(FAMILIES["mlp"], weight_scales=(0.2, 5.0))
    plain, step = PopulationStep(FAMILIES["mlp"], LOPT), PopulationStep(cfg, LOPT)
    state = step.init_step_state(torch.arange(2), key=5)
    for i in range(2):
        task, task_off = step._task(5, i, 0), plain._task(5, i, 0)
        assert {k: v for k, v in task.items() if k != "weight_scale"} == task_off
        model = build_model(cfg.model(), step.data.input_shape, step.data.n_classes, seed=task["init_seed"])
        torch.testing.assert_close(state.params[i] * state.weight_scale[i], step.layout.flatten(model))
        scales = [t.unique() for t in torch.split(state.weight_scale[i], step.layout.sizes)]
        assert all(len(s) == 1 and 0.2 <= float(s) <= 5.0 for s in scales) and len({float(s) for s in scales}) > 1
    moved, _ = step.unroll_step(LOPT.init_theta()[None].expand(2, -1), state, 1)
    i, B = 1, cfg.batch_size
    model = build_model(cfg.model(), step.data.input_shape, step.data.n_classes, seed=step._task(5, i, 0)["init_seed"])
    lr = float(state.base_lr[i])
    adam = torch.optim.Adam([{"params": [p], "lr": lr * float(s)} for p, s in zip(model.parameters(), scales)])
    idx = state.perm[i, :B]
    F.cross_entropy(model(step.data.x_train[idx] * state.input_scale[i]), step.data.y_train[idx]).backward()
    adam.step()
    # (Adam's ε sees the scaled gradient: entries whose gradient is near ε differ by ~1e-5)
    torch.testing.assert_close(moved.params[i] * moved.weight_scale[i], step.layout.flatten(model), rtol=1e-5, atol=2e-5)


def test_weight_scales_must_be_an_increasing_positive_range():
    for bad in ((2.0, 1.0), (0.0, 1.0), (0.5, 1.0, 2.0)):
        with pytest.raises(ConfigError, match="weight_scales"):
            replace(FAMILIES["mlp"], weight_scales=bad)


def test_untrained_kernel_is_torch_adam():
    step = PopulationStep(FAMILIES["mlp"], LOPT)
    model = build_model(FAMILIES["mlp"].model(), step.data.input_shape, step.data.n_classes, seed=3)
    layout = ParamLayout.of(model)
    params, state = layout.flatten(model)[None], LOPT.init_state(1, layout)
    adam = torch.optim.Adam(model.parameters(), lr=3e-3)
    theta = LOPT.init_theta()[None]
    for t in range(12):
        x, y = step.data.x_train[16 * t : 16 * t + 16], step.data.y_train[16 * t : 16 * t + 16]
        w = params.detach().requires_grad_(True)
        loss = F.cross_entropy(step.forward(w, x[None])[0], y)
        (grad,) = torch.autograd.grad(loss, w)
        params, state = LOPT.update(theta, state, layout, params, grad, loss.detach()[None], torch.tensor([3e-3]),
                                    observe=(t + 1) % 4 == 0)  # fmt: skip
        adam.zero_grad()
        F.cross_entropy(model(x), y).backward()
        adam.step()
    torch.testing.assert_close(params[0], layout.flatten(model), rtol=1e-5, atol=1e-6)


class Projected:
    """θ₂ (2-D) -> ``base + U θ₂``: a truncated step over a 2-D slice of the policy."""

    def __init__(self, step, base, U):
        self.step, self.base, self.U = step, base, U

    def sample_horizon(self, rng):
        return self.step.sample_horizon(rng)

    def init_step_state(self, slots, key, horizon=None):
        return self.step.init_step_state(slots, key, horizon)

    def unroll_step(self, theta, state, n_steps):
        return self.step.unroll_step(self.base + theta @ self.U.T, state, n_steps)


def test_pes_over_truncations_matches_the_full_unroll_in_expectation():
    # every episode is one epoch: 256 examples in batches of 8, 32 steps
    cfg = PopulationConfig(**{**TINY_POP, "batch_size": 8, "base_lrs": (3e-3,)}, horizon_epochs=(1.0, 1.0))
    step = PopulationStep(cfg, LOPT)
    assert step.sample_horizon(np.random.default_rng(0)) == 32
    base = LOPT.init_theta()
    U = torch.zeros(len(base), 2)
    names = list(LOPT.config.shapes())
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in LOPT.config.shapes().values()])
    U[offsets[names.index("head.bias")], 0] = 1.0  # the log lr scale itself
    U[offsets[names.index("skip.weight")] + KERNEL_FEATURES.index("log_grad_norm"), 1] = 1.0  # its response to the gradient norm
    toy = Projected(step, base, U)
    theta = torch.zeros(2)
    es = summed_estimate(AntitheticES(toy, pairs=400, sigma=0.05), theta, 1)
    pes = summed_estimate(PES(toy, pairs=400, sigma=0.05, truncation=8), theta, 4)
    se = lambda g: g.std(0) / len(g) ** 0.5  # noqa: E731
    diff, tol = es.mean(0) - pes.mean(0), 4 * (se(es) ** 2 + se(pes) ** 2).sqrt()
    assert es.mean(0)[0].abs() > 5 * se(es)[0]  # a higher lr helps this short run: a real signal
    assert (diff.abs() < tol).all(), (es.mean(0), pes.mean(0), tol)


# -- the meta-objective ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, ref, expected",
    [(1.0, 1.0, 0.0), (0.5, 1.0, np.log(0.5)), (1e-9, 1.0, -10.0), (100.0, 1.0, 2.0), (float("nan"), 1.0, 2.0),
     (float("inf"), 1.0, 2.0)],
)  # fmt: skip
def test_log_ratio_terms_are_clipped_and_divergence_costs_the_maximum(x, ref, expected):
    assert float(log_ratio(torch.tensor(x), torch.tensor(ref))) == pytest.approx(expected, abs=1e-6)


# -- meta-training: improves, checkpoints, resumes ----------------------------------------------

# base lr 10x too small: the obvious improvement is a larger learned lr scale
TINY_RUN = EngineConfig(
    seed=0, outer_steps=16, pairs=8, sigma=0.1, truncation=16, outer_lr=0.1,
    populations=(PopulationConfig(**{**TINY_POP, "base_lrs": (3e-4,), "input_scales": (1.0,)}, horizon_epochs=(1.0, 2.0)),),
    history_length=2, hidden_dim=4, embedding_dim=4, observe_every=4, eval_members=4, eval_epochs=2.0,
)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine")
    theta, record = run(TINY_RUN, out)
    return out, theta, record


def test_tiny_meta_training_improves_the_meta_loss(trained):
    out, theta, record = trained
    ev = record.evaluation
    assert np.mean(ev["final"]) < np.mean(ev["initial"]) - 0.1, ev
    assert len(record.curve) == TINY_RUN.outer_steps and (out / "learned.safetensors").is_file()


def test_the_weights_name_their_base_and_scales_and_an_unknown_scales_is_refused(trained):
    from metalearner.lopt.engine import WEIGHTS, Engine
    from metalearner.lopt.learned import LearnedOptimizer
    from metalearner.lopt.policy import PolicyWeights

    out, _, _ = trained
    meta = PolicyWeights.load(out / WEIGHTS).metadata
    assert (meta["base"], meta["scales"]) == (TINY_RUN.base, "per_tensor")  # what LearnedOptimizer builds its kernel from
    in_memory = Engine(replace(TINY_RUN, base="adam", scales="global")).weights()  # weights never saved say it too
    assert LearnedOptimizer([torch.nn.Parameter(torch.ones(2))], weights=in_memory).kernel.scales == "global"
    assert LearnedOptimizer([torch.nn.Parameter(torch.ones(2))], weights=in_memory).base == "adam"
    with pytest.raises(ConfigError, match="unknown scales 'layer'; choose from per_tensor, global"):
        EngineConfig(scales="layer")
    meta = Engine(replace(TINY_RUN, fan_in_power=0.5, fan_in_scope="input")).weights().metadata  # and the fan-in factor's settings
    assert (meta["fan_in_power"], meta["fan_in_scope"]) == ("0.5", "input")
    assert "fan_in_scope" not in Engine(replace(TINY_RUN, fan_in_power=0.5, fan_in_scope="all")).weights().metadata  # the fingerprint it always had
    assert "fan_in_power" not in Engine(replace(TINY_RUN, fan_in_power=0.0)).weights().metadata
    with pytest.raises(ConfigError, match="unknown fan_in_scope 'hidden'"):
        EngineConfig(fan_in_scope="hidden")


def test_the_default_input_fan_in_factor_leaves_meta_training_as_it_was(tmp_path):
    """The default's factor acts only on input layers wider than the family's: it is 1 on every
    tensor of every default population, and θ is the one meta-training without it gives, bit
    for bit (a short run)."""
    from metalearner.lopt.engine import TASK_FAMILY
    from metalearner.lopt.truncation import load_splits

    default = EngineConfig()
    for pop in TASK_FAMILY:  # the input width does not depend on the number of examples
        data = load_splits(pop.dataset, pop.data_seed, 256, pop.data_options)
        layout = ParamLayout.of(build_model(pop.model(), data.input_shape, data.n_classes, seed=0))
        assert set(layout.fan_in_factor(default.fan_in_power, default.fan_in_scope).tolist()) == {1.0}, pop
    short = replace(TINY_RUN, outer_steps=3)
    assert (short.fan_in_power, short.fan_in_scope) == (0.5, "input")
    with_factor, _ = run(short, tmp_path / "a", evaluate=False)
    without, _ = run(replace(short, fan_in_power=0.0), tmp_path / "b", evaluate=False)
    assert torch.equal(with_factor, without)


def test_shipping_an_engine_run_replaces_the_weights_and_the_card_entry(trained, pretrained_copy):
    from metalearner.lopt.card import ship_learned
    from metalearner.lopt.engine import WEIGHTS
    from metalearner.lopt.policy import PolicyWeights

    out, theta, _ = trained
    tmp_path = pretrained_copy
    entry = ship_learned(out, pretrained=tmp_path)
    shipped, run_weights = PolicyWeights.load(tmp_path / "learned.safetensors"), PolicyWeights.load(out / WEIGHTS)
    assert torch.equal(shipped.flat(), theta.float()) and shipped.fingerprint() == run_weights.fingerprint() == entry["fingerprint"]
    assert entry["fan_in"] == {"power": 0.5, "scope": "input"}  # the run's own factor (TINY_RUN has the default's)
    assert entry["config"]["pairs"] == TINY_RUN.pairs and "fan_in_scope` input" in (tmp_path / "MODEL_CARD.md").read_text()
    entry = ship_learned(out, fan_in_power=0.0, pretrained=tmp_path)  # set at shipping: off
    assert "fan_in" not in entry and PolicyWeights.load(tmp_path / "learned.safetensors").fan_in_power() == 0.0


def test_checkpoint_resume_gives_the_same_trajectory(trained, tmp_path):
    _, theta, record = trained
    run(replace(TINY_RUN, outer_steps=3), tmp_path, evaluate=False)
    resumed, rec2 = run(TINY_RUN, tmp_path, evaluate=False)
    assert torch.equal(resumed, theta)
    assert [r["meta_loss"] for r in rec2.curve] == [r["meta_loss"] for r in record.curve]
    with pytest.raises(ConfigError, match="different config"):
        run(replace(TINY_RUN, sigma=0.2), tmp_path, evaluate=False)


def test_a_checkpoint_written_before_a_config_field_existed_resumes_with_its_default(trained, tmp_path):
    """``prior`` came after runs were checkpointed: a checkpoint without it is the default's."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from metalearner.lopt.engine import CHECKPOINT

    _, theta, _ = trained
    run(replace(TINY_RUN, outer_steps=3), tmp_path, evaluate=False)
    with safe_open(str(tmp_path / CHECKPOINT), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    state = json.loads(meta["state"])
    del state["config"]["prior"]
    save_file(tensors, str(tmp_path / CHECKPOINT), metadata={**meta, "state": json.dumps(state)})
    with pytest.raises(ConfigError, match="different config"):  # the missing field is the default's, not any value's
        run(replace(TINY_RUN, prior="integrator"), tmp_path, evaluate=False)
    resumed, _ = run(TINY_RUN, tmp_path, evaluate=False)
    assert torch.equal(resumed, theta)
    for field in ("fan_in_power", "fan_in_scope"):  # saved before they existed: no factor, as then
        del state["config"][field]
    save_file(tensors, str(tmp_path / CHECKPOINT), metadata={**meta, "state": json.dumps(state)})
    with pytest.raises(ConfigError, match="different config"):
        run(TINY_RUN, tmp_path, evaluate=False)
    assert torch.equal(run(replace(TINY_RUN, fan_in_power=0.0, fan_in_scope="all"), tmp_path, evaluate=False)[0], theta)
    assert EngineConfig.from_dict({"fan_in_power": 0.5}).fan_in_scope == "all"  # the nineteenth's runs: every tensor
    state["config"]["retired_field"] = 1  # a field this version does not know: the same one-line refusal
    save_file(tensors, str(tmp_path / CHECKPOINT), metadata={**meta, "state": json.dumps(state)})
    with pytest.raises(ConfigError, match="different config"):
        run(TINY_RUN, tmp_path, evaluate=False)


def test_populations_on_workers_follow_the_same_trajectory(tmp_path):
    from metalearner.parallel import InlineExecutor, LocalExecutor

    two = replace(TINY_RUN, outer_steps=3, populations=(TINY_RUN.populations[0], replace(FAMILIES["cnn"], base_lrs=(3e-4,))))
    here, rec = run(two, tmp_path / "here", evaluate=False)
    with InlineExecutor() as executor:
        inline, rec2 = run(two, tmp_path / "inline", evaluate=False, executor=executor)
    assert torch.equal(inline, here)
    assert [r["meta_loss"] for r in rec2.curve] == [r["meta_loss"] for r in rec.curve]
    with LocalExecutor(2) as executor:  # one thread per worker: equal up to the summation order of a BLAS (bit for bit here)
        there, rec3 = run(two, tmp_path / "processes", evaluate=False, executor=executor)
    assert torch.allclose(there, here, rtol=0, atol=1e-6)
    assert np.allclose([r["meta_loss"] for r in rec3.curve], [r["meta_loss"] for r in rec.curve], rtol=1e-6)


def test_a_population_that_fails_on_a_worker_names_itself(tmp_path, monkeypatch):
    import metalearner.lopt.engine as engine
    from metalearner.parallel import InlineExecutor

    def broken(item):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine, "_estimate_item", broken)
    with pytest.raises(MetalearnerError, match="population 0 \\(digits\\) failed on a worker: RuntimeError\\('out of memory'\\)"):
        run(replace(TINY_RUN, outer_steps=1), tmp_path, evaluate=False, executor=InlineExecutor())


def test_population_data_options_reach_the_data_set_and_survive_json():
    cfg = PopulationConfig(**{**TINY_POP, "dataset": "synthetic", "data_options": [["n_features", 12], ["n_classes", 3]]})
    assert cfg.data_options == (("n_features", 12), ("n_classes", 3))
    step = PopulationStep(cfg, LOPT)
    assert step.data.input_shape == (12,) and step.data.n_classes == 3
    again = EngineConfig.from_dict(json.loads(json.dumps(asdict(replace(TINY_RUN, populations=(cfg,))))))
    assert again.populations[0] == cfg


def test_data_preloaded_in_a_child_process_are_the_same_tensors(monkeypatch):
    """``preload_splits`` makes the data sets in a child (so a meta-training process never
    imports the generators' libraries); what it hands over is what loading here gives."""
    from metalearner.lopt import truncation

    monkeypatch.setattr(truncation, "_PRELOADED", {})
    monkeypatch.setattr(truncation, "_HEAVY", {"digits": "a_module_not_loaded_here"})  # as if sklearn were not imported
    pops = [PopulationConfig(dataset="digits", n_train=300), PopulationConfig(dataset="synthetic", n_train=200, data_options=(("n_features", 12),))]
    truncation.preload_splits(pops)
    assert len(truncation._PRELOADED) == 2
    for p in pops:
        got, here = truncation.load_splits(p.dataset, p.data_seed, p.n_train, p.data_options), truncation._load_splits(p.dataset, p.data_seed, p.n_train, p.data_options)
        assert got is not here and vars(got).keys() == vars(here).keys()
        for k, v in vars(here).items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(getattr(got, k), v) and getattr(got, k).dtype == v.dtype
            else:
                assert getattr(got, k) == v and type(getattr(got, k)) is type(v)
