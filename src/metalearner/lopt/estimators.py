"""Gradient estimators for meta-training: antithetic ES over full episodes, and PES.

An estimator turns meta-parameters θ into an estimate of ∇θ of the expected meta-loss by
running a :class:`~metalearner.lopt.truncation.TruncatedStep`; it never looks inside the
inner problem. The protocol is two calls::

    state = estimator.init(theta, key)                   # e.g. PES's population + accumulators
    est = estimator.estimate(theta, state, key)          # est.grad (D,), est.state, ...

Both estimators perturb θ with ``N`` antithetic pairs ``θ ± δ_i``, ``δ_i = σ ε_i``,
``ε_i ~ N(0, I)``; the two members of a pair train the same task from the same weights on
the same batches (common random numbers), so only the perturbation differs. Each returns
the mean over pairs of a per-pair estimate ``ĝ_i`` (also returned, for error bars).

**Antithetic ES** (full unroll): a fresh population, one horizon ``T`` for all, unrolled to
the end; with ``J`` the episode meta-loss,

.. math:: \\hat g_i = \\frac{J(θ+δ_i) - J(θ-δ_i)}{2σ^2}\\, δ_i .

**PES** (Persistent Evolution Strategies, Vicol et al., ICML 2021): the population persists
across calls and each call unrolls only ``K`` steps (a truncation) under a new ``δ_{i,k}``.
The losses of truncation ``k`` depend on every perturbation applied since the episode
began, so the estimate weights them by the accumulated perturbation ``Σ_{j≤k} δ_{i,j}``:

.. math:: \\hat g_{i,k} = \\frac{L_k(+) - L_k(-)}{2σ^2} \\sum_{j \\le k} δ_{i,j}

where ``L_k(±)`` sums the meta-loss terms of truncation ``k``. Summed over the truncations
of an episode this is unbiased for the gradient of the full-horizon meta-loss (of its
Gaussian smoothing; exactly the gradient when the meta-loss is quadratic in θ), at the cost
of ``K`` steps per call instead of ``T``. When an episode ends inside a truncation, the
terms after the reset depend on ``δ_{i,k}`` alone and are weighted by it, and the
accumulator restarts at ``δ_{i,k}``. ``persistent=False`` drops the accumulator: truncated ES,
cheaper in variance but biased towards short-horizon behaviour (kept to show the bias).

Each episode's terms sum to its meta-loss, so every sampled episode counts once in the
long-run expectation, whatever its horizon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from metalearner.errors import ConfigError
from metalearner.lopt.truncation import TruncatedStep


@dataclass
class Estimate:
    """One gradient estimate and what produced it."""

    grad: torch.Tensor  # (D,) mean of per_pair
    per_pair: torch.Tensor  # (N, D) one estimate per antithetic pair
    loss: float  # mean meta-loss over both members of every pair (ES: per episode; PES: this truncation's terms)
    state: Any  # the estimator's state to pass to the next call


class GradientEstimator(Protocol):
    def init(self, theta: torch.Tensor, key: int) -> Any: ...

    def estimate(self, theta: torch.Tensor, state: Any, key: int) -> Estimate: ...


def _perturbations(pairs: int, dim: int, sigma: float, key: int) -> torch.Tensor:
    return sigma * torch.randn(pairs, dim, generator=torch.Generator().manual_seed(key))


def _pair_slots(pairs: int) -> torch.Tensor:
    """Members ``i`` (θ + δ_i) and ``pairs + i`` (θ − δ_i) share slot ``i``: the same task."""
    return torch.arange(pairs).repeat(2)


class AntitheticES:
    """Antithetic ES over full episodes; stateless between calls."""

    def __init__(self, step: TruncatedStep, *, pairs: int, sigma: float):
        if pairs < 1 or sigma <= 0:
            raise ConfigError(f"pairs >= 1 and sigma > 0 are required, got pairs={pairs}, sigma={sigma}")
        self.step, self.pairs, self.sigma = step, pairs, sigma

    def init(self, theta: torch.Tensor, key: int) -> None:
        return None

    def estimate(self, theta: torch.Tensor, state: None, key: int) -> Estimate:
        N = self.pairs
        delta = _perturbations(N, len(theta), self.sigma, key)
        horizon = self.step.sample_horizon(np.random.default_rng(key))
        inner = self.step.init_step_state(_pair_slots(N), key, horizon=horizon)
        _, out = self.step.unroll_step(torch.cat([theta + delta, theta - delta]), inner, horizon)
        J = out.loss.sum(1)
        per_pair = ((J[:N] - J[N:]) / (2 * self.sigma**2))[:, None] * delta
        return Estimate(per_pair.mean(0), per_pair, float(J.mean()), None)


@dataclass
class PESState:
    unroll: Any  # the truncated step's state: both halves of the population
    accumulator: torch.Tensor  # (N, D) perturbations summed since each pair's episode began


class PES:
    """Persistent ES over truncations of ``truncation`` steps."""

    def __init__(self, step: TruncatedStep, *, pairs: int, sigma: float, truncation: int, persistent: bool = True):
        if pairs < 1 or sigma <= 0 or truncation < 1:
            raise ConfigError(f"pairs >= 1, sigma > 0 and truncation >= 1 are required, got {pairs}, {sigma}, {truncation}")
        self.step, self.pairs, self.sigma, self.truncation, self.persistent = step, pairs, sigma, truncation, persistent

    def init(self, theta: torch.Tensor, key: int) -> PESState:
        return PESState(self.step.init_step_state(_pair_slots(self.pairs), key), torch.zeros(self.pairs, len(theta)))

    def estimate(self, theta: torch.Tensor, state: PESState, key: int) -> Estimate:
        N = self.pairs
        delta = _perturbations(N, len(theta), self.sigma, key)
        unroll, out = self.step.unroll_step(torch.cat([theta + delta, theta - delta]), state.unroll, self.truncation)
        diff = out.loss[:N] - out.loss[N:]  # (N, K)
        done = out.done[:N]
        after_reset = (done.cumsum(1) - done.long()) > 0  # steps of an episode that began in this truncation
        before = torch.where(after_reset, 0.0, diff).sum(1)
        after = torch.where(after_reset, diff, 0.0).sum(1)
        carried = state.accumulator + delta if self.persistent else delta
        per_pair = (before[:, None] * carried + after[:, None] * delta) / (2 * self.sigma**2)
        restarted = done.any(1, keepdim=True)
        accumulator = torch.where(restarted, delta, carried) if self.persistent else state.accumulator
        return Estimate(per_pair.mean(0), per_pair, float(out.loss.sum(1).mean()), PESState(unroll, accumulator))
