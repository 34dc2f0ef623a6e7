"""Synthetic classification tasks whose input distribution can be shifted in controlled ways.

A :class:`SyntheticSpec` fixes the *concept* (class cluster centres, within-cluster
covariance and the random directions any shift uses) through ``spec.seed``; a :class:`Shift`
transforms the input distribution; ``sample_seed`` draws the examples. So "train on task A,
evaluate on shifted task B" is one call::

    a, b = shift_pair(SyntheticSpec(), Shift(mean=1.0, rotation=0.3))

Data are standardised with the fixed statistics of the *unshifted* concept, so a shift
stays visible after standardisation, and all shifts act in that standardised space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch

from metalearner.errors import ConfigError
from metalearner.tasks.data import Splits


def _coerce(obj: object, name: str, kind: type) -> None:
    """Convert field ``name`` to ``kind`` in place (frozen dataclass), or raise ConfigError."""
    value = getattr(obj, name)
    try:
        converted = kind(value)
        if isinstance(value, bool) or not math.isfinite(converted) or (kind is int and converted != float(value)):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{type(obj).__name__}.{name} must be a finite {kind.__name__}, got {value!r}") from None
    object.__setattr__(obj, name, converted)


@dataclass(frozen=True)
class Shift:
    """A controlled change of the input distribution; the default changes nothing.

    ``mean``: length of a translation along a seeded random unit direction, in units of the
    data std. ``rotation``: angle (radians) of a rotation in seeded random planes, which turns
    the class clusters and their covariance. ``scale``: factor on the covariance (inputs are
    multiplied by ``sqrt(scale)`` about the concept mean). ``noise``: std of added isotropic
    Gaussian noise. ``imbalance``: class priors proportional to ``exp(-imbalance * class)``.
    """

    mean: float = 0.0
    rotation: float = 0.0
    scale: float = 1.0
    noise: float = 0.0
    imbalance: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            _coerce(self, f.name, float)
        if self.noise < 0:
            raise ConfigError(f"shift noise must be >= 0, got {self.noise}")
        if self.imbalance < 0:
            raise ConfigError(f"shift imbalance must be >= 0, got {self.imbalance}")
        if self.scale <= 0:
            raise ConfigError(f"shift scale must be > 0, got {self.scale}")

    def describe(self) -> str:
        """The non-default fields as ``name=value`` pairs ("" for no shift)."""
        return ",".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self) if getattr(self, f.name) != f.default)


@dataclass(frozen=True)
class SyntheticSpec:
    """The concept: ``seed`` fixes cluster centres, covariance and shift directions.

    Each class is a mixture of ``clusters_per_class`` Gaussian clusters, about unit std each.
    Two cluster centres are typically ``2 * separation`` apart (as in scikit-learn's
    ``make_classification``, where ``class_sep`` is half the distance between adjacent
    centres), whatever ``n_features`` is; the default gives a learnable but not trivial task.
    """

    n_features: int = 20
    n_classes: int = 4
    n_samples: int = 4000
    clusters_per_class: int = 2
    separation: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            _coerce(self, f.name, float if f.name == "separation" else int)
        for name, low in (("n_features", 1), ("n_classes", 2), ("n_samples", 1), ("clusters_per_class", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"synthetic {name} must be >= {low}, got {getattr(self, name)}")
        if self.separation < 0:
            raise ConfigError(f"synthetic separation must be >= 0, got {self.separation}")


class _Concept(NamedTuple):
    centres: np.ndarray  # (classes, clusters, features)
    mixing: np.ndarray  # within-cluster x = centre + z @ mixing.T, z ~ N(0, I)
    mean: np.ndarray  # mean and std of the unshifted, balanced distribution
    std: np.ndarray
    direction: np.ndarray  # unit vector of the mean shift
    planes: np.ndarray  # orthogonal basis; consecutive column pairs span the rotation planes


def _orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _concept(spec: SyntheticSpec) -> _Concept:
    rng = np.random.default_rng(spec.seed)
    d = spec.n_features
    # Entries with std separation * sqrt(2/d) put two centres about 2 * separation apart.
    centres = rng.standard_normal((spec.n_classes, spec.clusters_per_class, d)) * spec.separation * math.sqrt(2 / d)
    mixing = _orthogonal(rng, d) * np.exp(rng.uniform(-0.5, 0.5, d))
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    planes = _orthogonal(rng, d)
    flat = centres.reshape(-1, d)
    std = np.sqrt(flat.var(axis=0) + (mixing**2).sum(axis=1))
    return _Concept(centres, mixing, flat.mean(axis=0), std, direction, planes)


def _rotation(planes: np.ndarray, angle: float) -> np.ndarray:
    """Rotation by ``angle`` in every plane spanned by consecutive column pairs of ``planes``."""
    d = len(planes)
    block = np.eye(d)
    c, s = math.cos(angle), math.sin(angle)
    for i in range(0, d - 1, 2):
        block[i : i + 2, i : i + 2] = [[c, -s], [s, c]]
    return planes @ block @ planes.T


def _sample(spec: SyntheticSpec, shift: Shift, sample_seed: int) -> tuple[np.ndarray, np.ndarray]:
    concept = _concept(spec)
    rng = np.random.default_rng(sample_seed)
    n, d = spec.n_samples, spec.n_features
    priors = np.exp(-shift.imbalance * np.arange(spec.n_classes))
    cdf = np.cumsum(priors / priors.sum())
    y = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), spec.n_classes - 1)
    cluster = rng.integers(spec.clusters_per_class, size=n)
    x = concept.centres[y, cluster] + rng.standard_normal((n, d)) @ concept.mixing.T
    x = (x - concept.mean) / concept.std
    if shift.rotation:
        x = x @ _rotation(concept.planes, shift.rotation).T
    x = x * math.sqrt(shift.scale) + shift.mean * concept.direction
    if shift.noise:
        x = x + shift.noise * rng.standard_normal((n, d))
    return x, y


def make_synthetic(
    spec: SyntheticSpec,
    shift: Shift = Shift(),
    *,
    sample_seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> Splits:
    """Draw ``spec.n_samples`` examples of the (shifted) concept and split them.

    The concept comes from ``spec.seed``, the examples from ``sample_seed``; the same
    arguments always give identical tensors. Both fractions are of ``spec.n_samples``.
    """
    if shift.rotation and spec.n_features < 2:
        raise ConfigError("a rotation shift needs n_features >= 2")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    n = spec.n_samples
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n - n_val - n_test < 1:
        raise ConfigError(f"no training examples left from {n} samples with val_fraction={val_fraction} and test_fraction={test_fraction}")
    x, y = _sample(spec, shift, sample_seed)
    x_t = torch.from_numpy(x.astype(np.float32))
    y_t = torch.from_numpy(y.astype(np.int64))
    a, b = n - n_val - n_test, n - n_test  # examples are i.i.d., so contiguous slices are random splits
    described = shift.describe()
    return Splits(
        name=f"synthetic[{described}]" if described else "synthetic",
        x_train=x_t[:a],
        y_train=y_t[:a],
        x_val=x_t[a:b],
        y_val=y_t[a:b],
        x_test=x_t[b:],
        y_test=y_t[b:],
        n_classes=spec.n_classes,
        input_shape=(spec.n_features,),
    )


def shift_pair(
    spec: SyntheticSpec,
    shift: Shift,
    *,
    sample_seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> tuple[Splits, Splits]:
    """(task A unshifted, task B shifted): same concept and same underlying draws.

    B's examples are A's examples with the shift applied (paired; with ``imbalance`` the
    labels are redrawn), so any difference between them is due to the shift.
    """
    kwargs = dict(sample_seed=sample_seed, val_fraction=val_fraction, test_fraction=test_fraction)
    return make_synthetic(spec, Shift(), **kwargs), make_synthetic(spec, shift, **kwargs)
