"""Opt2Vec: an Adam-style optimizer whose learning rate and momentum a small network sets
from an embedding of the recent training physics.

Every ``observe_every`` steps the optimizer measures the step's physics with
:class:`~metalearner.observe.physics.PhysicsTracker` (the same definition the probe logs),
turns it into one feature row (:mod:`metalearner.lopt.policy`), normalises it online and
appends it to a history of the last ``history_length`` rows. The network encodes the history
into an embedding ``e`` and two outputs ``z``; until the next observation every step is

.. math::

    m_t &= β_1 m_{t-1} + (1-β_1) g_t,\\qquad v_t = β_2 v_{t-1} + (1-β_2) g_t^2 \\\\
    θ_{t+1} &= θ_t - η_t \\frac{m_t / (1 - \\prod_s β_{1,s})}{\\sqrt{v_t / (1-β_2^t)} + ε},
    \\qquad η_t = \\text{lr}\\cdot e^{3\\tanh(z_0/3)} \\cdot \\text{backoff},
    \\quad β_1 = σ(\\text{logit}(0.9) + z_1)

so ``z = 0`` (untrained weights, ``weights=None``) is exactly Adam with ``lr`` and β₁ = 0.9,
with one difference: ``t`` counts the optimizer's steps, not each parameter's, so a tensor that
gets its first gradient late (a layer unfrozen after a thousand steps) takes a first step of
about ``(1−β₁)/√(1−β₂)`` ≈ 3.2 times torch Adam's, which restarts the count for it.
The learned factor applies at step time: ``param_groups[i]["lr"]`` stays the user's (a
torch LR scheduler on it composes with the learned scale), and the group records what was
applied in ``effective_lr`` and ``effective_momentum``, which a probe logs. The momentum is
the policy's: of ``betas`` in the groups only β₂ is read (β₁ is there for code that expects
Adam's pair; a scheduler that cycles it, as ``OneCycleLR`` does by default, changes nothing).

No step reads a device value except the observations (every ``observe_every`` steps): the
loss is summed on the device and looked at only there. Safety without per-step checks: the
optimizer snapshots weights and moments at the start of each observation window; if the
window's losses or the observed step's physics are not finite, it rolls back to that
snapshot (forgetting the extended set's memory), counts the window's steps in
``skipped_steps`` and halves ``backoff``, which then recovers by 5% a step. So no NaN/Inf
stays in the weights or the state. Bounded motion: the learned lr scale moves at most 1.5x
and the momentum at most 0.5 in logit per observation, and a finite loss spike (a window
``spike_guard`` times its best window's loss: 2x, meta-training 3x) halves the scale (:func:`~metalearner.lopt.policy.guarded_lr_scale`,
counted in ``spike_guards``). The snapshot is not part of ``state_dict``: a run resumed in the
middle of a window that then goes non-finite rolls back to where it was resumed, not to the
window's start. The physics cover the parameters given at construction that require a
gradient; a group added later is stepped but not observed.

Example::

    opt = Opt2Vec(model.parameters(), lr=1e-3, budget=steps)   # shipped weights; they read steps taken / budget
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step(loss=loss)      # or opt.step(closure)
    opt.embedding                                              # the latest embedding
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from typing import Any, Callable, Iterable

import torch

from metalearner.errors import ConfigError, MetalearnerWarning
from metalearner.kernels import adam_moments_, check_dense_grads, check_state_fits
from metalearner.lopt.policy import (
    SPIKE_GUARD,
    BASE_FEATURES,
    EXTENDED_FEATURES,
    PolicyConfig,
    PolicyWeights,
    check_count,
    check_loss,
    lr_scale_from,
    optimizer_getstate,
    momentum_from,
    close_window,
    check_spike_guard,
    guarded_lr_scale,
    guarded_momentum,
    new_stats,
    policy_forward,
    push_observation,
    resolve_weights,
)
from metalearner.methods import check_lr, check_weight_decay
from metalearner.observe.physics import PhysicsTracker

_GLOBAL = "opt2vec"  # key of the optimizer-wide state in ``self.state``
MIN_BACKOFF = 2.0**-10


def adam_direction_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    bias_correction1: float,
    bias_correction2: float,
) -> None:
    """The base update, in place: decoupled weight decay, then an Adam step with ``beta1``."""
    if weight_decay:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    denom = adam_moments_(grads, exp_avgs, exp_avg_sqs, beta1=beta1, beta2=beta2, bias_correction2=bias_correction2, eps=eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, value=-lr / bias_correction1)


def policy_step(
    theta: PolicyWeights, history: torch.Tensor
) -> tuple[float, float, torch.Tensor]:
    """The learned part as a pure function: history ``(H, F)`` -> (lr scale, momentum, embedding)."""
    with torch.no_grad():
        out, emb = policy_forward(theta.tensors, history, theta.config.activation)
    z = out.tolist()
    return lr_scale_from(z[0]), momentum_from(z[1]), emb


def _check_hyperparameters(lr: float, betas: Any, eps: float, weight_decay: float, *, zero_lr_ok: bool = False) -> None:
    """One-line errors for values Adam's update cannot use (β₁ is the policy's: only β₂ is read;
    ``zero_lr_ok``: a param group's own lr may be 0, as torch allows)."""
    check_lr(lr, zero_ok=zero_lr_ok)
    check_weight_decay(weight_decay)
    if not (len(betas) == 2 and 0.0 <= betas[1] < 1.0):
        raise ConfigError(f"beta2 must be in [0, 1), got {betas}")
    if not (eps >= 0.0 and math.isfinite(eps)):
        raise ConfigError(f"eps must be a finite number >= 0, got {eps}")


class Opt2Vec(torch.optim.Optimizer):
    """Learned learning-rate scale and momentum on top of Adam (see the module docstring).

    Args:
        params: parameters or param groups (each group may set its own ``lr``).
        lr: the learning rate the learned scale multiplies.
        embedding_dim, history_length, activation: shape of the network; ``None`` takes
            them from the weights (64, 16, "gelu" for the shipped and the untrained ones).
        use_extended_features: also feed weight norm, update ratio, gradient cosine,
            curvature and budget fraction (needs weights trained with them).
        observe_every: steps between observations; ``None`` takes the weights' value.
        budget: total number of steps planned, for the ``budget_fraction`` feature (weights
            that read it, the shipped ones among them, warn without it: they then read 0).
        spike_guard: a window whose mean loss is this many times its best window's halves
            the lr scale (2; meta-training runs with 3; ``math.inf`` turns the guard off).
            A construction argument, like ``observe_every``: ``state_dict`` does not carry it.
        weights: ``"default"`` (shipped pretrained), a safetensors path, a
            :class:`PolicyWeights`, or ``None`` for the untrained policy (= Adam).
    """

    takes_loss = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        *,
        embedding_dim: int | None = None,
        history_length: int | None = None,
        activation: str | None = None,
        use_extended_features: bool = True,
        observe_every: int | None = None,
        budget: int | None = None,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        weights: PolicyWeights | str | os.PathLike | None = "default",
        spike_guard: float = SPIKE_GUARD,
    ) -> None:
        _check_hyperparameters(lr, (0.9, beta2), eps, weight_decay)
        if budget is not None and budget < 1:
            raise ConfigError(f"budget must be >= 1 step, got {budget}")
        spike_guard = check_spike_guard(spike_guard)
        features = (*BASE_FEATURES, *EXTENDED_FEATURES) if use_extended_features else BASE_FEATURES
        untrained = PolicyConfig(
            kind="opt2vec",
            features=features,
            history_length=history_length or 16,
            embedding_dim=embedding_dim or 64,
            activation=activation or "gelu",
            observe_every=16 if observe_every is None else observe_every,
        )
        theta = resolve_weights(weights, "opt2vec", untrained)
        cfg = theta.config
        asked = {"embedding_dim": embedding_dim, "history_length": history_length, "activation": activation, "features": features}
        for name, value in asked.items():
            if value is not None and getattr(cfg, name) != value:
                raise ConfigError(f"the weights have {name}={getattr(cfg, name)!r}, not {value!r}")
        self.theta = theta
        if budget is None and weights is not None and "budget_fraction" in cfg.features:
            warnings.warn("these Opt2Vec weights read the budget fraction (steps taken / budget); without budget= they read 0 "
                          "at every step, as if the run had just begun: pass budget=<total steps>", MetalearnerWarning, stacklevel=2)  # fmt: skip
        self.observe_every = check_count("observe_every", cfg.observe_every if observe_every is None else observe_every)
        self.budget = budget
        self.spike_guard = spike_guard  # a construction argument, like observe_every: not in state_dict
        defaults = dict(lr=lr, betas=(0.9, beta2), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        named = [(f"group{i}.{j}", p) for i, g in enumerate(self.param_groups) for j, p in enumerate(g["params"])]
        self._extended = use_extended_features
        self.tracker = PhysicsTracker(named, extended=use_extended_features)
        self.state[_GLOBAL] = self._fresh_global()
        self._snapshot: tuple[list[torch.Tensor], list[torch.Tensor], dict[str, Any]] | None = None
        self._set_groups(self.state[_GLOBAL])

    def _fresh_global(self) -> dict[str, Any]:
        cfg = self.theta.config
        return {
            "step": 0,  # successful steps
            "skipped_steps": 0,
            "spike_guards": 0,
            "min_loss": math.inf,
            "backoff": 1.0,
            "lr_scale": 1.0,
            "momentum": 0.9,
            "beta1_prod": 1.0,
            "loss_sum": torch.zeros((), dtype=torch.float64),  # on the device, read at observations
            "loss_count": 0,
            "first_loss": math.nan,
            "prev_loss": math.nan,
            "history": torch.zeros(cfg.history_length, cfg.n_features),
            "stats": new_stats(cfg.n_features),
            "embedding": None,
            "tracker": None,
        }

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, then the group's own values checked. A group added after construction is
        stepped but not observed: the policy's physics cover the parameters it was built with."""
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        _check_hyperparameters(g["lr"], g["betas"], g["eps"], g["weight_decay"], zero_lr_ok=True)

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy and pickle keep the policy and its tracker
        return optimizer_getstate(self)

    # -- public read-outs -----------------------------------------------------------------
    @property
    def embedding(self) -> torch.Tensor | None:
        """Embedding of the latest observation (``None`` before the first)."""
        return self.state[_GLOBAL]["embedding"]

    @property
    def skipped_steps(self) -> int:
        return self.state[_GLOBAL]["skipped_steps"]

    # -- state_dict -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        g = copy.deepcopy(self.state[_GLOBAL])
        if self._mid_observation(g["step"]):  # the extended set needs the first step's gradient
            g["tracker"] = self.tracker.state_dict()
        sd["state"][_GLOBAL] = g
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        g = state_dict.get("state", {}).get(_GLOBAL)
        cfg = self.theta.config
        if g is None or not torch.is_tensor(g.get("history")) or tuple(g["history"].shape) != (cfg.history_length, cfg.n_features):
            raise ConfigError("this is not the state of an Opt2Vec with this policy (history length "
                              f"{cfg.history_length}, {cfg.n_features} features)")  # fmt: skip
        if not all({"betas", "eps", "weight_decay"} <= set(group) for group in state_dict["param_groups"]):
            raise ConfigError("this is not the state of an Opt2Vec (its groups lack betas, eps or weight_decay)")
        check_state_fits(self, state_dict)
        super().load_state_dict(state_dict)
        g = self.state[_GLOBAL] = copy.deepcopy(self.state[_GLOBAL])
        if g.get("tracker"):
            self.tracker.load_state_dict(g["tracker"])
            g["tracker"] = None
        if not torch.is_tensor(g["loss_sum"]):
            g["loss_sum"] = torch.tensor(float(g["loss_sum"]), dtype=torch.float64)
        self._snapshot = None
        self._set_groups(self.state[_GLOBAL])

    # -- stepping -------------------------------------------------------------------------
    def _mid_observation(self, t: int) -> bool:
        k = self.observe_every
        return self._extended and k >= 2 and t % k == k - 1

    def _tracked(self, t: int) -> tuple[bool, bool]:
        """(measure this step, it ends an observation)."""
        k = self.observe_every
        ends = t % k == k - 1
        primes = self._extended and k >= 2 and t % k == k - 2
        return ends or primes, ends

    def _set_groups(self, g: dict[str, Any]) -> None:
        """Record the learning rate and momentum this step applies (``lr`` stays the user's)."""
        for group in self.param_groups:
            group["effective_lr"] = group["lr"] * g["lr_scale"] * g["backoff"]
            group["effective_momentum"] = g["momentum"]

    def _window_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        params = [p for group in self.param_groups for p in group["params"]]
        moments = [self.state[p][k] for p in params if self.state.get(p) for k in ("exp_avg", "exp_avg_sq")]
        return params, moments

    def _take_snapshot(self, g: dict[str, Any]) -> None:
        """Weights, moments and counters at the start of an observation window (buffers reused)."""
        old = self._snapshot
        copies = []
        for i, tensors in enumerate(self._window_tensors()):
            reuse = old is not None and len(old[i]) == len(tensors)
            buffers = old[i] if reuse else [torch.empty_like(x) for x in tensors]
            if tensors:
                torch._foreach_copy_(buffers, tensors)
            copies.append(buffers)
        self._snapshot = (copies[0], copies[1], {k: g[k] for k in ("step", "beta1_prod")})

    def _roll_back(self, g: dict[str, Any]) -> None:
        """A non-finite window: back to its start, lr halved, the lost steps counted; the
        extended set's memory starts afresh."""
        params_then, moments_then, counters = self._snapshot
        params, moments = self._window_tensors()
        torch._foreach_copy_(params, params_then)
        if len(moments) == len(moments_then):
            if moments:
                torch._foreach_copy_(moments, moments_then)
        else:  # the moments were created inside the window: start them again
            for p in params:
                self.state.pop(p, None)
        g["skipped_steps"] += g["step"] - counters["step"]
        g["step"], g["beta1_prod"] = counters["step"], counters["beta1_prod"]
        self.tracker.forget()  # its previous gradient may hold the window's NaN/Inf
        g["backoff"] = max(MIN_BACKOFF, g["backoff"] * 0.5)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | torch.Tensor | float | None = None, *, loss: Any = None) -> Any:
        """One update. Give the loss (``step(loss=loss)``, ``step(loss)``) or a closure that
        recomputes it (``step(closure)``); a step without one updates as usual and leaves the
        loss features to the steps that have one."""
        if closure is not None and not callable(closure):
            closure, loss = None, closure
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        loss = check_loss(loss, self)
        check_dense_grads([p for group in self.param_groups for p in group["params"]], "Opt2Vec")
        g = self.state[_GLOBAL]
        self._set_groups(g)
        t = g["step"]
        track, ends = self._tracked(t)
        if t % self.observe_every == 0 or self._snapshot is None:
            self._take_snapshot(g)
        if loss is not None:
            g["loss_sum"] = g["loss_sum"] + torch.as_tensor(loss).detach().double()
            g["loss_count"] += 1
        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            groups.append((group, params, [p.grad for p in params]))
        if track:  # the step before an observation only primes the extended set's memory
            self.tracker.before_step(measure=ends)
        # 1. the base update with the current learned lr and momentum
        beta1 = g["momentum"]
        g["beta1_prod"] *= beta1
        for group, params, grads in groups:
            if not params:
                continue
            exp_avgs, exp_avg_sqs = [], []
            for p in params:
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
            beta2 = group["betas"][1]
            adam_direction_(
                params, grads, exp_avgs, exp_avg_sqs,
                lr=group["effective_lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                bias_correction1=1 - g["beta1_prod"], bias_correction2=1 - beta2 ** (t + 1),
            )  # fmt: skip
        g["step"] = t + 1
        g["backoff"] = min(1.0, g["backoff"] * 1.05)
        # 2. at the end of an observation: features -> history -> new lr scale and momentum
        if ends:
            self._observe(g, self.tracker.after_step())
        elif track:
            self.tracker.remember_step()
        return loss

    def _observe(self, g: dict[str, Any], physics: Any) -> None:
        """The window's one device read: its loss and this step's physics. A non-finite
        window rolls back; otherwise features -> history -> new lr scale and momentum."""
        finite, count, mean_loss, phys = close_window(g, physics)
        if not finite:
            self._roll_back(g)
            return
        if count == 0:  # no loss given in this window: keep the current lr and momentum
            return
        fraction = min(1.0, g["step"] / self.budget) if self.budget else 0.0
        history = push_observation(g, self.theta.config, mean_loss=mean_loss, physics=phys, budget_fraction=fraction)
        lr_scale, momentum, g["embedding"] = policy_step(self.theta, history)
        g["lr_scale"] = guarded_lr_scale(g, lr_scale, mean_loss, self.spike_guard)  # bounded motion, spike guard
        g["momentum"] = guarded_momentum(g["momentum"], momentum)
