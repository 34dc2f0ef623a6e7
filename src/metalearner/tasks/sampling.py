"""Drawing values for a distribution of tasks or runs: the one sampling primitive.

A *value spec* is a plain value (always that value), a list or tuple (uniform over its
items), or a distribution table, one of :data:`DISTRIBUTIONS`: ``{"log_uniform": [lo, hi]}``,
``{"uniform": [lo, hi]}``, ``{"int_uniform": [lo, hi]}`` (inclusive) or
``{"int_log_uniform": [lo, hi]}``, optionally with ``"num": N`` for grids. The zoo's sweep
specs and :class:`~metalearner.tasks.task.TaskFamily` (used by meta-training) both draw
with :func:`draw`, from an explicit generator, so a distribution is reproducible from a seed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from metalearner.errors import ConfigError

DISTRIBUTIONS = ("log_uniform", "uniform", "int_uniform", "int_log_uniform")


def is_distribution(v: Any) -> bool:
    return isinstance(v, dict) and any(k in v for k in DISTRIBUTIONS)


def check_value(key: str, v: Any) -> None:
    """One-line errors for a malformed value spec named ``key``."""
    if isinstance(v, dict):
        dist = [k for k in v if k in DISTRIBUTIONS]
        extra = [k for k in v if k not in DISTRIBUTIONS and k != "num"]
        if len(dist) != 1 or extra:
            raise ConfigError(f"{key}: a distribution is one of {', '.join(DISTRIBUTIONS)} (plus optional num), got {sorted(v)}")
        bounds = v[dist[0]]
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds)):
            raise ConfigError(f"{key}.{dist[0]} must be [low, high], got {bounds!r}")
        lo, hi = bounds
        if lo > hi or ("log" in dist[0] and lo <= 0):
            raise ConfigError(f"{key}.{dist[0]} = {bounds}: need 0 < low <= high for log, low <= high otherwise")
        if "num" in v and not (isinstance(v["num"], int) and v["num"] >= 1):
            raise ConfigError(f"{key}.num must be a positive integer, got {v['num']!r}")
    elif isinstance(v, (list, tuple)) and not v:
        raise ConfigError(f"{key} is an empty list")


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def grid_values(v: Any) -> list[Any]:
    """The grid points of a value spec (a distribution needs ``num``)."""
    if is_distribution(v):
        (kind,) = [k for k in v if k in DISTRIBUTIONS]
        lo, hi = v[kind]
        n = v["num"]
        pts = np.geomspace(lo, hi, n) if "log" in kind else np.linspace(lo, hi, n)
        return [int(round(p)) for p in pts] if kind.startswith("int") else [_round(p) for p in pts]
    return list(v) if isinstance(v, (list, tuple)) else [v]


def draw(v: Any, rng: np.random.Generator) -> Any:
    """One value from a value spec; a plain value (or a one-item list) uses no randomness."""
    if is_distribution(v):
        (kind,) = [k for k in v if k in DISTRIBUTIONS]
        lo, hi = v[kind]
        if kind == "uniform":
            return _round(rng.uniform(lo, hi))
        if kind == "log_uniform":
            return _round(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        if kind == "int_uniform":
            return int(rng.integers(lo, hi + 1))
        return min(int(hi), int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))))
    if isinstance(v, (list, tuple)):
        return v[int(rng.integers(len(v)))]
    return v
