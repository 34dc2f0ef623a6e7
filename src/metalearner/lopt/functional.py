"""Functional, batched learned optimizers: the inner optimizer of the meta-training engine.

Everything here is pure tensor math over a *population* of ``P`` inner problems that share
one architecture: the weights of member ``p`` are row ``p`` of a flat ``(P, N)`` buffer
(:class:`ParamLayout` maps it to named tensors), the optimizer state is a dataclass of
``(P, ...)`` tensors, and the meta-parameters are a ``(P, D)`` matrix (one row per member, so
perturbed copies of θ run side by side). No ``.item()``, no per-member Python.

:class:`LearnedAdam` is Adam with a learned per-tensor learning-rate multiplier:

.. math::

    m \\leftarrow β_1 m + (1-β_1) g, \\quad v \\leftarrow β_2 v + (1-β_2) g^2, \\quad
    w_j \\leftarrow w_j - η\\, e^{3\\tanh(z_j/3)}\\, \\frac{\\hat m_j}{\\sqrt{\\hat v_j} + ε}

for each tensor ``j`` of each member, where ``η`` is the member's base learning rate and
``z_j`` the output of the policy network (:func:`~metalearner.lopt.policy.policy_forward`,
run once per tensor) on the history of tensor ``j``'s features, refreshed every
``observe_every`` steps. The features (:data:`KERNEL_FEATURES`) are per-tensor physics
(gradient norm, update ratio, the tensor's own current scale) plus the member's loss
trajectory, none of which needs the horizon. Zero policy heads give ``z = 0``: plain Adam.

    lopt = LearnedAdam(LearnedAdam.policy_config())
    theta = lopt.init_theta(seed=0)                  # (D,) the meta-parameters
    state = lopt.init_state(P, layout)               # all zeros
    params, state = lopt.update(theta.expand(P, -1), state, layout, params, grads, losses, base_lr, observe=True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from functools import partial

import torch
from torch import nn

from metalearner.lopt.policy import CLIP, MAX_LOG_SCALE, ONLINE, PolicyConfig, PolicyWeights, policy_forward

# per-member loss trajectory first, then per-tensor physics; names from policy.py's vocabulary
KERNEL_FEATURES: tuple[str, ...] = ("log_loss_rel", "log_loss_delta", "log_grad_norm", "log_update_ratio", "log_lr_scale")


@dataclass(frozen=True)
class ParamLayout:
    """Where each named tensor of a model lives in a flat parameter row."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, model: nn.Module) -> "ParamLayout":
        named = list(model.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def n_params(self) -> int:
        return sum(self.sizes)

    def flatten(self, model: nn.Module) -> torch.Tensor:
        """One model's parameters as a flat ``(N,)`` row."""
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named ``(P, *shape)`` views of a ``(P, N)`` buffer (gradients flow to ``flat``)."""
        parts = torch.split(flat, self.sizes, dim=-1)
        return {n: t.reshape(*flat.shape[:-1], *s) for n, t, s in zip(self.names, parts, self.shapes)}

    def per_tensor_sq_norms(self, flat: torch.Tensor) -> torch.Tensor:
        """``(P, N)`` -> ``(P, J)``: squared norm of each tensor of each member."""
        return torch.stack([t.square().sum(-1) for t in torch.split(flat, self.sizes, dim=-1)], dim=-1)


def policy_tensors(config: PolicyConfig, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Batched :meth:`PolicyWeights.with_flat`: ``(P, D)`` -> named ``(P, *shape)`` tensors."""
    shapes = config.shapes()
    parts = torch.split(flat, [math.prod(s) for s in shapes.values()], dim=-1)
    return {n: t.reshape(*flat.shape[:-1], *s) for (n, s), t in zip(shapes.items(), parts)}


def normalise_online(
    raw: torch.Tensor, online: torch.Tensor, mean: torch.Tensor, sq: torch.Tensor, n: torch.Tensor, decay: float = 0.9
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tensor form of :func:`~metalearner.lopt.policy.normalise`.

    ``raw``, ``mean``, ``sq``: ``(..., F)``; ``online``: ``(F,)`` bool; ``n``: observation
    count including this one, broadcastable to ``raw``. Online features become
    ``(x − μ̂)/(σ̂ + 0.1)`` with bias-corrected EMAs ``μ̂, σ̂²`` (a non-finite ``x`` leaves
    them untouched); every feature is clipped to ``[−5, 5]``, NaN -> 0.
    Returns ``(row, mean, sq)``.
    """
    finite = torch.isfinite(raw)
    x = torch.where(finite, raw, torch.zeros_like(raw))
    upd = finite & online
    mean = torch.where(upd, decay * mean + (1 - decay) * x, mean)
    sq = torch.where(upd, decay * sq + (1 - decay) * x * x, sq)
    corr = 1 - decay ** n.to(raw.dtype)
    mu, var = mean / corr, sq / corr - (mean / corr) ** 2
    scaled = torch.where(online, (x - mu) / (var.clamp_min(0).sqrt() + 0.1), x)
    return torch.where(finite, scaled, torch.zeros_like(raw)).clamp(-CLIP, CLIP), mean, sq


@dataclass
class LearnedAdamState:
    """Per-member state of :class:`LearnedAdam`; all zeros at the start of an episode."""

    m: torch.Tensor  # (P, N) first moment
    v: torch.Tensor  # (P, N) second moment
    count: torch.Tensor  # (P,) steps taken
    z: torch.Tensor  # (P, J) policy output per tensor; scale = exp(3 tanh(z / 3))
    history: torch.Tensor  # (P, J, H, F) normalised feature rows, newest last
    feat_mean: torch.Tensor  # (P, J, F) online-normalisation EMAs
    feat_sq: torch.Tensor  # (P, J, F)
    n_obs: torch.Tensor  # (P,) observations made
    loss_sum: torch.Tensor  # (P,) training loss summed since the last observation
    loss_n: torch.Tensor  # (P,)
    first_loss: torch.Tensor  # (P,) mean loss of the first observation window
    prev_loss: torch.Tensor  # (P,) mean loss of the previous window


def reset_rows(state, mask: torch.Tensor):
    """``state`` (a dataclass of ``(P, ...)`` tensors whose initial value is zero) with the
    rows of ``mask`` (``(P,)`` bool) back at zero."""
    def zero(t: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.view(-1, *[1] * (t.dim() - 1)), torch.zeros((), dtype=t.dtype), t)

    return replace(state, **{f.name: zero(getattr(state, f.name)) for f in fields(state)})


class LearnedAdam:
    """Adam with a learned per-tensor lr multiplier, as a batched functional kernel."""

    def __init__(self, config: PolicyConfig, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if tuple(config.features) != KERNEL_FEATURES or config.n_outputs != 1:
            raise ValueError(f"LearnedAdam needs a one-output policy over {KERNEL_FEATURES}; use LearnedAdam.policy_config()")
        self.config, self.betas, self.eps = config, betas, eps
        self._online = torch.tensor([f in ONLINE for f in KERNEL_FEATURES])
        self._policy = torch.func.vmap(partial(policy_forward, activation=config.activation))

    @staticmethod
    def policy_config(history_length: int = 8, hidden_dim: int = 16, embedding_dim: int = 16,
                      activation: str = "tanh", observe_every: int = 16) -> PolicyConfig:  # fmt: skip
        return PolicyConfig(kind="controller", features=KERNEL_FEATURES, history_length=history_length, hidden_dim=hidden_dim,
                            embedding_dim=embedding_dim, activation=activation, observe_every=observe_every)  # fmt: skip

    @property
    def observe_every(self) -> int:
        return self.config.observe_every

    def init_theta(self, seed: int = 0) -> torch.Tensor:
        """The untrained meta-parameters ``(D,)`` (zero heads: plain Adam)."""
        return PolicyWeights.init(self.config, seed=seed).flat()

    def init_state(self, n_members: int, layout: ParamLayout, dtype: torch.dtype = torch.float32) -> LearnedAdamState:
        P, N, J, H, F = n_members, layout.n_params, len(layout.names), self.config.history_length, len(KERNEL_FEATURES)
        z = partial(torch.zeros, dtype=dtype)
        return LearnedAdamState(m=z(P, N), v=z(P, N), count=z(P), z=z(P, J), history=z(P, J, H, F), feat_mean=z(P, J, F),
                                feat_sq=z(P, J, F), n_obs=z(P), loss_sum=z(P), loss_n=z(P), first_loss=z(P), prev_loss=z(P))  # fmt: skip

    def lr_scale(self, state: LearnedAdamState) -> torch.Tensor:
        """``(P, J)``: the multiplier each tensor's lr gets now, in ``[1/20, 20]``."""
        return torch.exp(MAX_LOG_SCALE * torch.tanh(state.z / MAX_LOG_SCALE))

    def update(
        self,
        theta: torch.Tensor,
        state: LearnedAdamState,
        layout: ParamLayout,
        params: torch.Tensor,
        grad: torch.Tensor,
        loss: torch.Tensor,
        base_lr: torch.Tensor,
        *,
        observe: bool,
    ) -> tuple[torch.Tensor, LearnedAdamState]:
        """One step for every member: ``theta (P, D)``, ``params``/``grad (P, N)``, ``loss``
        and ``base_lr (P,)``. With ``observe`` (every ``observe_every`` steps of an episode)
        the step's physics is pushed into the history and the policy sets new scales."""
        b1, b2 = self.betas
        count = state.count + 1
        m = torch.lerp(state.m, grad, 1 - b1)
        v = torch.lerp(state.v, grad * grad, 1 - b2)
        scale = self.lr_scale(state)  # (P, J)
        step = -(base_lr / (1 - b1**count))[:, None] * scale  # (P, J): −η·s_j / (1 − β₁ᵗ)
        delta = m / (v.sqrt().div_((1 - b2**count).sqrt()[:, None]).add_(self.eps))
        for j, part in enumerate(delta.split(layout.sizes, dim=1)):  # in place, per tensor: no (P, N) gather
            part.mul_(step[:, j : j + 1])
        state = replace(state, m=m, v=v, count=count, loss_sum=state.loss_sum + loss, loss_n=state.loss_n + 1)
        if observe:
            state = self._observe(theta, state, layout, params, grad, delta, scale)
        return params + delta, state

    def _observe(self, theta, state, layout, params, grad, delta, scale) -> LearnedAdamState:
        mean_loss = state.loss_sum / state.loss_n
        first = state.n_obs == 0
        first_loss = torch.where(first, mean_loss, state.first_loss)
        prev_loss = torch.where(first, mean_loss, state.prev_loss)
        P, J = scale.shape
        log_w = 0.5 * layout.per_tensor_sq_norms(params + delta).log()
        per_member = torch.stack([mean_loss.log() - first_loss.log(), mean_loss.log() - prev_loss.log()], -1)  # (P, 2)
        raw = torch.cat([
            per_member[:, None, :].expand(P, J, 2),
            0.5 * layout.per_tensor_sq_norms(grad).log()[..., None],
            (0.5 * layout.per_tensor_sq_norms(delta).log() - log_w)[..., None],
            scale.log()[..., None],
        ], dim=-1)  # fmt: skip
        n_obs = state.n_obs + 1
        row, feat_mean, feat_sq = normalise_online(raw, self._online, state.feat_mean, state.feat_sq, n_obs[:, None, None])
        history = torch.cat([state.history[:, :, 1:], row[:, :, None]], dim=2)
        out, _ = self._policy(policy_tensors(self.config, theta), history)  # (P, J, 1)
        z = torch.nan_to_num(out[..., 0], nan=0.0)
        return replace(state, z=z, history=history, feat_mean=feat_mean, feat_sq=feat_sq, n_obs=n_obs,
                       loss_sum=torch.zeros_like(mean_loss), loss_n=torch.zeros_like(mean_loss),
                       first_loss=first_loss, prev_loss=prev_loss)  # fmt: skip


__all__ = ["KERNEL_FEATURES", "LearnedAdam", "LearnedAdamState", "ParamLayout", "normalise_online", "policy_tensors", "reset_rows"]
