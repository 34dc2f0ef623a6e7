"""The physics definitions checked against values computed by hand."""

import math

import pytest
import torch
from torch import nn

from metalearner.observe.physics import PhysicsTracker, layer_names
from metalearner.observe.schema import LAYERS


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

    assert math.isclose(float(phys["grad_norm"]), norm(grads), rel_tol=1e-5)
    assert math.isclose(float(phys["weight_norm"]), norm(weights), rel_tol=1e-5)
    # plain SGD moves every parameter by -lr * grad
    assert math.isclose(float(phys["update_norm"]), 0.1 * norm(grads), rel_tol=1e-5)
    layer_g = phys["grad_norm_layers"]
    assert torch.allclose(layer_g, torch.tensor([norm(grads[:2]), norm(grads[2:])]), rtol=1e-5)
    layer_w = phys["weight_norm_layers"]
    assert torch.allclose(layer_w, torch.tensor([norm(weights[:2]), norm(weights[2:])]), rtol=1e-5)
    assert phys.extended is None
    # global norm is the root of the summed squared layer norms
    for field, total in zip(LAYERS, (phys["grad_norm"], phys["weight_norm"], phys["update_norm"])):
        assert math.isclose(float(phys[field].square().sum().sqrt()), float(total), rel_tol=1e-5)


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


def test_cosine_is_torchs_cosine_similarity_to_the_float32_bit():
    """Learned optimizers were meta-trained on torch's cosine and read it in float32: ours
    (one dot product) must be torch's value up to float64 rounding, and the same float32."""
    from metalearner.observe.physics import cosine

    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        n = int(torch.randint(1, 50_000, (1,), generator=gen))
        a = torch.randn(n, dtype=torch.float64, generator=gen) * 10 ** float(torch.randint(-20, 20, (1,), generator=gen))
        b = (torch.randn(n, dtype=torch.float64, generator=gen) + 0.3 * a / a.abs().max()) * 1e-3
        if seed % 10 == 0:
            b = torch.zeros_like(b)
        for eps in (1e-30, 1e-8):
            ours, torchs = cosine(a, b, eps), torch.nn.functional.cosine_similarity(a, b, dim=0, eps=eps)
            assert float(ours) == pytest.approx(float(torchs), rel=1e-13, abs=1e-15)
            assert torch.equal(ours.float(), torchs.float())
            squares = (torch.dot(a, a), torch.dot(b, b))
            assert torch.equal(cosine(a, b, eps, squares=squares), ours)


def test_extended_set_reuses_its_buffers():
    """The float64 copies of the gradient and update go into the buffers the step before last
    used: after two steps no step allocates them again (and the values are unaffected, as the
    quadratic and remember_step tests check)."""
    model = nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = PhysicsTracker(model.named_parameters(), extended=True)
    pointers = []
    for t in range(6):
        opt.zero_grad()
        model(torch.randn(4, 5, generator=torch.Generator().manual_seed(t))).square().sum().backward()
        tracker.before_step()
        opt.step()
        tracker.after_step(batch_size=4)
        pointers.append((tracker._prev_grad.data_ptr(), tracker._prev_update.data_ptr()))
    assert pointers[2:] == pointers[:2] * 2
    assert pointers[0] != pointers[1]


def test_remember_step_advances_the_extended_memory_as_after_step_does():
    """A step that only primes (``before_step(measure=False)`` + ``remember_step``) leaves the
    next step's extended values (cosine, curvature, noise) exactly as a measured step would."""
    gen = torch.Generator().manual_seed(0)
    trackers = []
    for measured in (True, False):
        torch.manual_seed(0)
        model = nn.Linear(6, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        tracker = PhysicsTracker(model.named_parameters(), extended=True)
        gen.manual_seed(0)
        values = []
        for t in range(6):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            prime = t % 2 == 0 and not measured
            tracker.before_step(measure=not prime)
            opt.step()
            if prime:
                tracker.remember_step()
            elif t % 2 == 1:
                values.append(tracker.after_step(batch_size=4).values)
            else:
                tracker.after_step(batch_size=4)
        trackers.append(values)
    bits = [[v.view(torch.int32) for v in run] for run in trackers]  # the sign of a zero counts too
    assert len(bits[0]) == 3 and all(torch.equal(a, b) for a, b in zip(*bits))
    assert torch.isfinite(trackers[0][-1]).all()


def test_an_unmeasured_step_cannot_be_read_as_a_measured_one():
    model = nn.Linear(3, 2)
    tracker = PhysicsTracker(model.named_parameters(), extended=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    tracker.before_step(measure=False)
    with pytest.raises(RuntimeError, match="not measured"):
        tracker.after_step()


def test_curvature_keeps_the_sign_of_a_zero():
    """A zero previous update (an lr warm-up from 0) gives curvature +0.0, as ``g − g'`` does."""
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    tracker = PhysicsTracker(model.named_parameters(), extended=True)
    for t in range(2):
        for p in model.parameters():
            p.grad = torch.full_like(p, -1.0 - t)
        tracker.before_step()
        opt.step()
        curvature = tracker.after_step(batch_size=1).extended[1]
    assert curvature == 0 and not torch.signbit(curvature)
