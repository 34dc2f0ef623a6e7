"""Parametric learning-curve extrapolation of validation accuracy (a baseline and a feature).

From the evaluations ``(s_j, a_j)`` seen so far of a run with a budget of ``T`` steps:
``persistence`` (the last ``a_j``), ``linear`` (least-squares line through the last half of
the evaluations, at ``T``), ``power_law`` ``a(s) = a∞ − b s^{−c}`` and ``exponential``
``a(s) = a∞ − b e^{−c s / T}`` fitted by bounded least squares and evaluated at ``T`` (the
families of Domhan et al. 2015), clipped to [0, 1]. A failed fit falls back to the last value.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

CURVE_COLUMNS = {"persistence": "val_acc_last", "linear": "acc_fit_linear", "power_law": "acc_fit_power",
                 "exponential": "acc_fit_exp"}  # fmt: skip


def _fit(f: Callable[..., np.ndarray], s: np.ndarray, a: np.ndarray, p0: list[float], bounds: tuple, at: float) -> float:
    from scipy.optimize import curve_fit

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, _ = curve_fit(f, s, a, p0=p0, bounds=bounds, maxfev=2000)
        v = float(f(np.array([at]), *p)[0])
    except (RuntimeError, ValueError):
        return float(a[-1])
    return float(np.clip(v, 0.0, 1.0)) if np.isfinite(v) else float(a[-1])


def curve_baselines(s: np.ndarray, a: np.ndarray, total: float) -> dict[str, float]:
    """Extrapolate the accuracy curve ``(s, a)`` to step ``total`` (see the module docstring)."""
    if len(a) == 0:
        return {"persistence": np.nan, "linear": np.nan, "power_law": np.nan, "exponential": np.nan}
    last = float(a[-1])
    out = {"persistence": last}
    if len(a) < 3:
        return {**out, "linear": last, "power_law": last, "exponential": last}
    h = s[len(s) // 2 :], a[len(a) // 2 :]
    slope, icpt = np.polyfit(h[0], h[1], 1) if len(h[0]) >= 2 else (0.0, last)
    out["linear"] = float(np.clip(icpt + slope * total, 0.0, 1.0))
    s1 = np.maximum(s.astype(np.float64), 1.0)
    out["power_law"] = _fit(lambda x, ai, b, c: ai - b * x ** (-c), s1, a, [min(last + 0.02, 1), 1.0, 0.5],
                            ([0, 0, 1e-3], [1, 1e3, 3]), total)  # fmt: skip
    out["exponential"] = _fit(lambda x, ai, b, c: ai - b * np.exp(-c * x / total), s1, a, [min(last + 0.02, 1), 0.5, 3.0],
                              ([0, -1, 1e-2], [1, 2, 1e3]), total)  # fmt: skip
    return out


def curve_features(steps: np.ndarray, val_acc: np.ndarray, total: float, start: int = 0) -> dict[str, np.ndarray]:
    """Per step, the extrapolations from the evaluations up to it (``val_acc`` NaN between
    evaluations; forward filled, NaN before the first). Only steps from index ``start`` on
    are filled (a live caller needs the last window only)."""
    n = len(steps)
    out = {c: np.full(n, np.nan) for c in ("acc_fit_linear", "acc_fit_power", "acc_fit_exp")}
    ev = np.flatnonzero(np.isfinite(val_acc))
    for j, i in enumerate(ev):
        end = ev[j + 1] if j + 1 < len(ev) else n
        if end <= start:
            continue
        fits = curve_baselines(steps[ev[: j + 1]].astype(float) + 1, val_acc[ev[: j + 1]], total)
        for name, col in CURVE_COLUMNS.items():
            if col in out:
                out[col][i:end] = fits[name]
    return out
