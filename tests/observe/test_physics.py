"""The physics definitions checked against values computed by hand."""

import copy
import math

import torch
from torch import nn

from metalearner.observe.physics import LAYER_FIELDS, PhysicsTracker, layer_names


def tiny_model() -> nn.Sequential:
    m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        m[0].bias.copy_(torch.tensor([0.5, -0.5]))
        m[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
        m[2].bias.copy_(torch.tensor([0.25]))
    return m


def test_layer_names_group_weight_and_bias():
    names, assign = layer_names(tiny_model().named_parameters())
    assert names == ["0", "2"]
    assert assign == [0, 0, 1, 1]


def test_sgd_step_matches_hand_computation():
    m = tiny_model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    tracker = PhysicsTracker(m.named_parameters())
    x = torch.tensor([[1.0, 1.0]])
    loss = m(x).pow(2).sum()
    loss.backward()
    grads = [p.grad.clone() for p in m.parameters()]
    weights = [p.detach().clone() for p in m.parameters()]
    tracker.before_step()
    opt.step()
    phys = tracker.after_step()

    def norm(ts):
        return math.sqrt(sum(float((t**2).sum()) for t in ts))

    assert math.isclose(float(phys.grad_norm), norm(grads), rel_tol=1e-5)
    assert math.isclose(float(phys.weight_norm), norm(weights), rel_tol=1e-5)
    # plain SGD moves every parameter by -lr * grad
    assert math.isclose(float(phys.update_norm), 0.1 * norm(grads), rel_tol=1e-5)
    layer_g = phys.layers("grad_norm_layers")
    assert torch.allclose(layer_g, torch.tensor([norm(grads[:2]), norm(grads[2:])]), rtol=1e-5)
    layer_w = phys.layers("weight_norm_layers")
    assert torch.allclose(layer_w, torch.tensor([norm(weights[:2]), norm(weights[2:])]), rtol=1e-5)
    assert phys.extended is None
    # global norm is the root of the summed squared layer norms
    for field, total in zip(LAYER_FIELDS, (phys.grad_norm, phys.weight_norm, phys.update_norm)):
        assert math.isclose(float(phys.layers(field).square().sum().sqrt()), float(total), rel_tol=1e-5)


def test_missing_gradient_counts_as_zero():
    m = tiny_model()
    m[2].bias.requires_grad_(True)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    tracker = PhysicsTracker(m.named_parameters())
    m(torch.ones(1, 2)).sum().backward()
    m[2].bias.grad = None
    tracker.before_step()
    opt.step()
    assert torch.isfinite(tracker.after_step().values).all()


def test_extended_curvature_is_exact_on_a_quadratic():
    """On L = a/2 ‖θ‖², g = aθ, so (g_t − g_{t−1})·u / ‖u‖² = a exactly."""
    a = 3.0
    theta = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    model = nn.Module()
    model.theta = theta
    opt = torch.optim.SGD([theta], lr=0.05)
    tracker = PhysicsTracker(model.named_parameters(), extended=True)
    prev_grad = None
    for t in range(4):
        opt.zero_grad()
        (0.5 * a * theta.pow(2).sum()).backward()
        g = theta.grad.clone()
        tracker.before_step()
        opt.step()
        cos, curvature, _ = tracker.after_step(batch_size=1).extended.tolist()
        if t == 0:
            assert math.isnan(cos) and math.isnan(curvature)
        else:
            assert math.isclose(curvature, a, rel_tol=1e-4)
            assert math.isclose(cos, float(torch.cosine_similarity(g, prev_grad, dim=0)), rel_tol=1e-5)
        prev_grad = g


def test_noise_scale_recovers_a_known_value():
    """Gradients G + noise with per-example covariance σ²I at batch B: B_simple = σ² d / ‖G‖²."""
    d, batch, sigma = 50, 32, 2.0
    gen = torch.Generator().manual_seed(0)
    true_grad = torch.full((d,), 1.0)
    theta = nn.Parameter(torch.zeros(d))
    model = nn.Module()
    model.theta = theta
    opt = torch.optim.SGD([theta], lr=0.0)
    tracker = PhysicsTracker(model.named_parameters(), extended=True, noise_ema=0.99)
    for _ in range(3000):
        theta.grad = true_grad + sigma / math.sqrt(batch) * torch.randn(d, generator=gen)
        tracker.before_step()
        opt.step()
        noise = float(tracker.after_step(batch_size=batch).extended[2])
    expected = sigma**2 * d / float(true_grad.square().sum())
    assert abs(noise - expected) / expected < 0.3


class _Mixed(nn.Module):
    """Layers of different sizes, a root-level parameter, and a non-contiguous weight."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 3)
        self.fc2.weight = nn.Parameter(torch.randn(5, 3).t())  # non-contiguous
        self.scale = nn.Parameter(torch.tensor([1.5]))

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x))) * self.scale


def _reference_extended(grads, updates, beta, batch):
    """The extended set in float64, straight from the definitions (one value per step)."""
    out, prev_g, prev_u, m, s = [], None, None, None, 0.0
    for t, (g, u) in enumerate(zip(grads, updates), start=1):
        cos = curvature = noise = math.nan
        if prev_g is not None:
            cos = float(g @ prev_g / (g.norm() * prev_g.norm()))
            curvature = float((g - prev_g) @ prev_u / (prev_u @ prev_u))
        m = g * (1 - beta) if m is None else m * beta + (1 - beta) * g
        s = s * beta + (1 - beta) * float(g @ g)
        if t >= 2:
            corr = 1 - beta**t
            m2, sc, c = float(m @ m) / corr**2, s / corr, (1 - beta) / (1 + beta)
            var = (sc - m2) / (1 - c)
            noise = batch * var / (m2 - c * var)
        out.append((cos, curvature, noise))
        prev_g, prev_u = g, u
    return out


def _train(model, tracker, steps, batch=8, seed=1):
    """Adam steps; returns the tracker's values and float64 references for them."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    params = list(model.parameters())
    got, grads, updates, norms = [], [], [], []
    for _ in range(steps):
        x = torch.randn(batch, 6, generator=gen)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        g = [p.grad.double().reshape(-1) for p in params]
        w = [p.detach().double().reshape(-1) for p in params]
        tracker.before_step()
        opt.step()
        u = [p.detach().double().reshape(-1) - a for p, a in zip(params, w)]
        got.append(tracker.after_step(batch_size=batch))
        grads.append(torch.cat(g))
        updates.append(torch.cat(u))

        def layer_norms(ts):  # layers: scale (the root's own), fc1 (weight, bias), fc2
            layers = [ts[0:1], ts[1:3], ts[3:5]]
            return [float(torch.cat(ls).norm()) for ls in layers]

        norms.append([layer_norms(g), layer_norms(w), layer_norms(u)])
    return got, grads, updates, norms


def test_default_set_matches_float64_on_uneven_layers():
    model = _Mixed()
    tracker = PhysicsTracker(model.named_parameters())
    assert tracker.layer_names == ["scale", "fc1", "fc2"]
    got, _, _, norms = _train(model, tracker, 5)
    for phys, (g, w, u) in zip(got, norms):
        for field, layers, total in zip(LAYER_FIELDS, (g, w, u), (phys.grad_norm, phys.weight_norm, phys.update_norm)):
            assert torch.allclose(phys.layers(field).double(), torch.tensor(layers, dtype=torch.float64), rtol=1e-5)
            assert math.isclose(float(total), math.sqrt(sum(x * x for x in layers)), rel_tol=1e-5)


def test_extended_set_matches_float64_definitions():
    model = _Mixed()
    tracker = PhysicsTracker(model.named_parameters(), extended=True, noise_ema=0.9)
    got, grads, updates, _ = _train(model, tracker, 8)
    expected = _reference_extended(grads, updates, 0.9, batch=8)
    for phys, (cos, curvature, noise) in zip(got, expected):
        g_cos, g_curv, g_noise = phys.extended.tolist()
        for a, b, tol in ((g_cos, cos, 1e-5), (g_curv, curvature, 1e-4), (g_noise, noise, 1e-4)):
            assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=tol, abs_tol=1e-6), (a, b)


def test_state_dict_carries_the_extended_set_to_a_fresh_tracker():
    model = _Mixed()
    tracker = PhysicsTracker(model.named_parameters(), extended=True)
    _train(model, tracker, 3)
    state = tracker.state_dict()
    n = sum(p.numel() for p in model.parameters())
    assert state["_t"] == 3 and state["_prev_grad"].shape == (n,) and state["_prev_update"].dtype == torch.float64
    clone = copy.deepcopy(model)
    fresh = PhysicsTracker(clone.named_parameters(), extended=True)
    fresh.load_state_dict(state)
    a, _, _, _ = _train(model, tracker, 3, seed=2)
    b, _, _, _ = _train(clone, fresh, 3, seed=2)
    for x, y in zip(a, b):
        assert torch.allclose(x.values, y.values, rtol=1e-5, equal_nan=True)


def test_float64_and_mixed_dtype_parameters():
    model = _Mixed().double()
    model.scale.data = model.scale.data.float()
    tracker = PhysicsTracker(model.named_parameters(), extended=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        (model.fc2(torch.tanh(model.fc1(torch.randn(4, 6, dtype=torch.float64)))).sum() * model.scale).backward()
        tracker.before_step()
        opt.step()
        phys = tracker.after_step(batch_size=4)
    assert phys.values.dtype == torch.float32 and torch.isfinite(phys.values).all()


def test_extended_set_survives_zero_gradients():
    model = _Mixed()
    tracker = PhysicsTracker(model.named_parameters(), extended=True)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        tracker.before_step()
        phys = tracker.after_step(batch_size=4)
    cos, curvature, noise = phys.extended.tolist()
    assert cos == 0.0 and curvature == 0.0 and math.isnan(noise)
