"""Scoring: epochs to target, the budget rule, bootstrap intervals, performance profiles.

Pure functions on plain numbers, so they are tested on hand-made curves. ``inf`` means
"never reached the target" everywhere; it sorts last and a median of mostly-``inf`` is ``inf``.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

INF = math.inf


def epochs_to_target(curve: Sequence[Sequence[float]], target: float) -> float:
    """Epoch of the first evaluation whose accuracy reaches ``target``; ``curve`` holds
    ``(epoch, accuracy, ...)`` rows in time order. ``inf`` if it never does."""
    for row in curve:
        if row[1] >= target:
            return float(row[0])
    return INF


def budget_epochs_to_target(reached: Mapping[int, bool]) -> float:
    """The budget rule: the smallest budget whose run reached the target (``inf`` if none)."""
    hits = [b for b, ok in reached.items() if ok]
    return float(min(hits)) if hits else INF


def median(values: Iterable[float]) -> float:
    v = np.asarray(list(values), dtype=float)
    return float(np.median(v)) if len(v) else math.nan


def lower_median(values: Iterable[float]) -> float:
    """The median for an odd count; for an even count the lower of the two middle values, a
    value that half the runs reach (the mean of two seeds is reached by one of them). NaN if
    any value is (as ``np.median``)."""
    v = sorted(float(x) for x in values)
    return v[(len(v) - 1) // 2] if v and not any(math.isnan(x) for x in v) else math.nan


def bootstrap_median_ci(values: Sequence[float], *, level: float = 0.95, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median and a percentile-bootstrap interval; ``inf`` values are kept (no interpolation
    across them: the bounds are order statistics of the resampled medians)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    meds = np.sort(np.median(v[rng.integers(0, len(v), size=(n, len(v)))], axis=1))
    alpha = (1 - level) / 2
    lo = meds[int(math.floor(alpha * (n - 1)))]
    hi = meds[int(math.ceil((1 - alpha) * (n - 1)))]
    return float(np.median(v)), float(lo), float(hi)


def performance_ratios(times: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``times[method][problem]`` -> each method's time over the best method's on that problem
    (``inf`` where the method, or every method, never reached the target)."""
    problems = sorted({p for t in times.values() for p in t})
    best = {p: min((t.get(p, INF) for t in times.values()), default=INF) for p in problems}
    return {
        m: {p: (t.get(p, INF) / best[p] if math.isfinite(best[p]) and best[p] > 0 else INF) for p in problems}
        for m, t in times.items()
    }


def performance_profile(times: Mapping[str, Mapping[str, float]], taus: Sequence[float]) -> dict[str, list[float]]:
    """rho_m(tau): the fraction of problems on which method m is within a factor tau of the best."""
    ratios = performance_ratios(times)
    return {m: [float(np.mean([r <= tau for r in rs.values()])) if rs else 0.0 for tau in taus] for m, rs in ratios.items()}


def profile_score(times: Mapping[str, Mapping[str, float]], tau_max: float = 4.0) -> dict[str, float]:
    """AlgoPerf-style score: the integral of the performance profile from 1 to ``tau_max``,
    divided by ``tau_max - 1`` (1 = fastest on every problem, 0 = never within ``tau_max``).

    The profile is a step function, so the integral is exact: a problem solved at ratio r
    contributes ``max(0, tau_max - r) / (tau_max - 1)``.
    """
    ratios = performance_ratios(times)
    return {
        m: float(np.mean([max(0.0, tau_max - max(r, 1.0)) / (tau_max - 1) for r in rs.values()])) if rs else 0.0
        for m, rs in ratios.items()
    }
