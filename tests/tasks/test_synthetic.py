"""Synthetic tasks: determinism, and that each shift changes the distribution as documented."""

from __future__ import annotations

import math

import pytest
import torch

from metalearner.errors import ConfigError
from metalearner.tasks import Shift, SyntheticSpec, make_synthetic, shift_pair

SPEC = SyntheticSpec(n_features=12, n_classes=3, n_samples=3000)


def all_x(s) -> torch.Tensor:
    return torch.cat([s.x_train, s.x_val, s.x_test])


def all_y(s) -> torch.Tensor:
    return torch.cat([s.y_train, s.y_val, s.y_test])


def class_means(s) -> torch.Tensor:
    x, y = all_x(s), all_y(s)
    return torch.stack([x[y == c].mean(0) for c in range(s.n_classes)])


def test_deterministic():
    shift = Shift(mean=1.0, rotation=0.4, scale=1.5, noise=0.3, imbalance=0.5)
    a, b = make_synthetic(SPEC, shift, sample_seed=7), make_synthetic(SPEC, shift, sample_seed=7)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.x_train, make_synthetic(SPEC, shift, sample_seed=8).x_train)
    other_concept = SyntheticSpec(n_features=12, n_classes=3, n_samples=3000, seed=1)
    assert not torch.equal(a.x_train, make_synthetic(other_concept, shift, sample_seed=7).x_train)


def test_splits_and_types():
    s = make_synthetic(SPEC, val_fraction=0.1, test_fraction=0.3)
    assert (s.n_train, s.n_val, s.n_test) == (1800, 300, 900)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert s.input_shape == (12,) and s.n_classes == 3 and s.name == "synthetic"
    assert set(all_y(s).tolist()) == {0, 1, 2}


def test_unshifted_data_is_standardised():
    x = all_x(make_synthetic(SyntheticSpec(n_samples=20000)))
    assert x.mean(0).abs().max() < 0.05
    assert (x.std(0) - 1).abs().max() < 0.05


@pytest.mark.parametrize("size", [0.5, 2.0])
def test_mean_shift_moves_mean_by_requested_amount(size):
    a = make_synthetic(SPEC, sample_seed=0)
    b = make_synthetic(SPEC, Shift(mean=size), sample_seed=1)  # independent draws
    moved = float((all_x(b).mean(0) - all_x(a).mean(0)).norm())
    assert moved == pytest.approx(size, abs=0.25)


def test_rotation_preserves_norms_and_turns_by_the_angle():
    spec = SyntheticSpec(n_features=12, n_classes=3, n_samples=3000)
    a, b = shift_pair(spec, Shift(rotation=0.6))
    xa, xb = all_x(a), all_x(b)
    torch.testing.assert_close(xa.norm(dim=1), xb.norm(dim=1), rtol=1e-5, atol=1e-5)
    cos = torch.nn.functional.cosine_similarity(xa, xb, dim=1)
    torch.testing.assert_close(cos, torch.full_like(cos, math.cos(0.6)), rtol=0, atol=1e-4)
    assert (class_means(a) - class_means(b)).norm(dim=1).min() > 0.1  # orientation changed


def test_scale_multiplies_covariance():
    a, b = shift_pair(SPEC, Shift(scale=4.0))
    torch.testing.assert_close(all_x(b).var(0), 4 * all_x(a).var(0), rtol=1e-4, atol=1e-5)


def test_noise_adds_variance():
    a, b = shift_pair(SPEC, Shift(noise=0.5))
    added = all_x(b).var(0) - all_x(a).var(0)
    assert float((added - 0.25).abs().max()) < 0.05


@pytest.mark.parametrize("imbalance", [0.5, 1.0])
def test_imbalance_changes_class_frequencies(imbalance):
    a, b = shift_pair(SyntheticSpec(n_classes=4, n_samples=20000), Shift(imbalance=imbalance))
    freq_a = torch.bincount(all_y(a), minlength=4).double() / 20000
    freq_b = torch.bincount(all_y(b), minlength=4).double() / 20000
    assert (freq_a - 0.25).abs().max() < 0.02
    expected = torch.exp(-imbalance * torch.arange(4.0, dtype=torch.float64))
    torch.testing.assert_close(freq_b, expected / expected.sum(), rtol=0, atol=0.02)


def test_shift_pair_shares_the_concept():
    a, b = shift_pair(SPEC, Shift(mean=1.0))
    assert torch.equal(a.y_train, b.y_train)
    offset = b.x_train - a.x_train  # paired draws: the same translation for every example
    torch.testing.assert_close(offset, offset[:1].expand_as(offset), rtol=0, atol=1e-5)
    assert float(offset[0].norm()) == pytest.approx(1.0, abs=1e-5)
    _, noisy = shift_pair(SPEC, Shift(noise=0.5))
    assert float((class_means(a) - class_means(noisy)).norm(dim=1).max()) < 0.1
    other = make_synthetic(SyntheticSpec(n_features=12, n_classes=3, n_samples=3000, seed=5))
    assert float((class_means(a) - class_means(other)).norm(dim=1).max()) > 0.5
    assert a.name == "synthetic" and b.name == "synthetic[mean=1]"


def test_fields_are_coerced_from_strings():
    assert Shift(mean="1.5").mean == 1.5
    assert SyntheticSpec(n_features="8").n_features == 8


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Shift(noise=-0.1), "noise"),
        (lambda: Shift(imbalance=-1), "imbalance"),
        (lambda: Shift(scale=0), "scale"),
        (lambda: Shift(mean=float("nan")), "finite"),
        (lambda: Shift(rotation="abc"), "rotation"),
        (lambda: SyntheticSpec(n_classes=1), "n_classes"),
        (lambda: SyntheticSpec(n_features=2.5), "n_features"),
        (lambda: SyntheticSpec(separation=-1), "separation"),
        (lambda: make_synthetic(SyntheticSpec(n_features=1), Shift(rotation=0.1)), "rotation"),
        (lambda: make_synthetic(SPEC, val_fraction=0.5, test_fraction=0.5), "no training examples"),
        (lambda: make_synthetic(SPEC, test_fraction=1.5), "test_fraction"),
    ],
)
def test_invalid_configs(make, match):
    with pytest.raises(ConfigError, match=match):
        make()
