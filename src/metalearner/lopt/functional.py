"""Functional, batched learned optimizers: the inner optimizer of the meta-training engine;
the ``torch.optim`` front :class:`~metalearner.lopt.learned.LearnedOptimizer` runs its
observation (:meth:`LearnedKernel.observe`) and the same base step per tensor.

Everything here is pure tensor math over a *population* of ``P`` inner problems that share
one architecture: the weights of member ``p`` are row ``p`` of a flat ``(P, N)`` buffer
(:class:`ParamLayout` maps it to named tensors), the optimizer state is a dataclass of
``(P, ...)`` tensors, and the meta-parameters are a ``(P, D)`` matrix (one row per member, so
perturbed copies of θ run side by side). No ``.item()``, no per-member Python.

:class:`LearnedKernel` is a base optimizer with a learned per-tensor learning-rate multiplier
``s_j``, the lr of tensor ``j`` being ``η_j = η · s_j``. Two bases:

- ``"adam"``: ``w_j ← w_j − η_j m̂_j / (√v̂_j + ε)``;
- ``"schedulefree"``: Schedule-Free AdamW (Defazio et al., 2024) per tensor, with the
  averaging weight following the *controlled* lr (``c_t = η_t² / Σ_{i≤t} η_i²``), as the
  analysis of schedules for Schedule-Free requires::

      d = g / (√v̂ + ε) (+ λ y),   y ← (1 − c) y + c z + η (β₁(1 − c) − 1) d,   z ← z − η d

  the weights hold ``y`` (where gradients are taken); :meth:`LearnedKernel.eval_params`
  gives the averaged point ``x`` at which to evaluate.

Every ``observe_every`` steps the policy (:func:`~metalearner.lopt.policy.policy_forward`,
run once per tensor) reads the history of tensor ``j``'s features (:data:`KERNEL_FEATURES`:
the member's loss trajectory over several time scales, the tensor's gradient norm and update
ratio, its current scale; none needs the horizon) and proposes a log scale
``3 tanh(o/3)``. Two guards make it safe by construction: the log scale moves at most
``MAX_MOVE`` per observation (a factor 1.5), and when the window's mean loss is more than
``spike_guard`` (default 3, as meta-training runs) times its best window (a loss spike, finite
or not) every scale of the member is halved instead (a window whose mean loss is 0 or below has
no logarithm: it is neither the best nor a spike, and the loss features read it as 0). Zero policy heads give ``s = 1``: the plain base optimizer (tested against
``torch.optim.Adam`` and ``schedulefree.AdamWScheduleFree``). ``scales="global"`` (an
ablation, not the default) gives every tensor of a network the mean of their targets: one
multiplier per network. ``fan_in_power = α > 0`` multiplies the lr of each tensor whose
fan-in exceeds the family's largest, ``FAN_IN_REF``, by the fixed ``(FAN_IN_REF/fan_in)^α``
(:meth:`ParamLayout.fan_in_factor`; not learned, 1 on every meta-training tensor);
``fan_in_scope="input"`` gives it to the input layer only.

    lopt = LearnedKernel(LearnedKernel.policy_config(), base="schedulefree")
    theta = lopt.init_theta(seed=0)                  # (D,) the meta-parameters
    state = lopt.init_state(P, layout)               # all zeros
    params, state = lopt.update(theta.expand(P, -1), state, layout, params, grads, losses, base_lr, observe=True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Mapping, Sequence

import torch
from torch import nn

from metalearner.errors import ConfigError
from metalearner.lopt.policy import CLIP, FAN_IN_SCOPES, MAX_LOG_SCALE, MAX_MOVE, META_SPIKE_GUARD, ONLINE, PolicyConfig, PolicyWeights, check_fan_in_scope, check_spike_guard, policy_forward

# per-member loss trajectory first, then per-tensor physics; names from policy.py's vocabulary
KERNEL_FEATURES_V1: tuple[str, ...] = ("log_loss_rel", "log_loss_delta", "loss_vs_min", "loss_vs_ema",
                                       "log_grad_norm", "log_update_ratio", "update_ratio_level", "log_lr_scale")
KERNEL_FEATURES: tuple[str, ...] = (*KERNEL_FEATURES_V1, "motion_cos")  # what new policies read
KERNEL_FEATURES_FAN_IN: tuple[str, ...] = (*KERNEL_FEATURES, "log10_fan_in")  # an experiment (docs/meta_training.md)
PRIORS = ("none", "integrator")  # where meta-training starts (LearnedKernel.init_theta)
INTEGRATOR_GAIN = 10.0  # the integrator prior: a near-sign rule (near scale 1, the full MAX_MOVE once |motion_cos| > 0.04)
FEATURE_SETS: tuple[tuple[str, ...], ...] = (KERNEL_FEATURES, KERNEL_FEATURES_V1, KERNEL_FEATURES_FAN_IN)  # V1: weights trained before motion_cos
FAN_IN_REF = 128  # the meta-training family's largest fan-in: the fan-in factor is 1 up to it (fan_in_factor)


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

    def log10_fan_in(self) -> torch.Tensor:
        """``(J,)``: ``log₁₀`` of each tensor's fan-in (its size over its first dimension; 0 for
        vectors; a convolution kernel ``(out, in, k…)``: ``in·k…``; what is not laid out as
        ``(out, …)`` reads as if it were), what the ``log10_fan_in`` feature reads."""
        return torch.tensor([math.log10(max(math.prod(s[1:]), 1)) for s in self.shapes])

    def input_tensors(self, inputs: Sequence[int] | None = None) -> list[int]:
        """The indices of the tensors read as the input layer: those of ``inputs`` that have two
        or more dimensions, or without ``inputs`` a guess, the first tensor of two or more
        dimensions whose first dimension is not 1, failing that the first of two or more (none:
        empty). A ``(1, …)`` tensor is passed over because it is a learned class token or
        position table, not a layer: a model that registers one on itself (a vision
        transformer's ``cls_token``) lists it before every submodule's tensors."""
        matrices = [j for j, s in enumerate(self.shapes) if len(s) >= 2]
        if inputs is not None:
            chosen = set(inputs)
            return [j for j in matrices if j in chosen]
        return (self.layers() or matrices)[:1]

    def layers(self) -> list[int]:
        """The indices of the tensors of two or more dimensions whose first is not 1: layers'
        weights, not ``(1, …)`` class tokens or position tables."""
        return [j for j, s in enumerate(self.shapes) if len(s) >= 2 and s[0] != 1]

    def fan_in_factor(self, power: float, scope: str = "all", inputs: Sequence[int] | None = None) -> torch.Tensor:
        """``(J,)``: the fixed lr factor ``min(1, (FAN_IN_REF / fan_in)^power)`` of each tensor of
        two or more dimensions (fan-in as in :meth:`log10_fan_in`), 1 for vectors: beyond the
        fan-ins a policy was trained on, the lr shrinks as Adam-like updates need it to when a
        layer's fan-in grows (after the width transfer of μP, loosely: the input layer is scaled
        by its data's dimension too, and a tensor not laid out ``(out, in, …)``, an embedding
        or a transposed convolution, reads a fan-in it does not have); ``power = 0``: all ones.
        ``scope="input"``: only the input layer (its fan-in is the data's dimension),
        :meth:`input_tensors` of ``inputs``, gets it; every other tensor 1."""
        check_fan_in_scope(scope)
        matrices = [j for j, s in enumerate(self.shapes) if len(s) >= 2]
        scaled = set(self.input_tensors(inputs) if scope == "input" else matrices) if power else set()
        return torch.tensor([min(1.0, (FAN_IN_REF / max(math.prod(s[1:]), 1)) ** power) if j in scaled else 1.0
                             for j, s in enumerate(self.shapes)], dtype=torch.float64)  # fmt: skip

    def per_tensor_sq_norms(self, flat: torch.Tensor) -> torch.Tensor:
        """``(P, N)`` -> ``(P, J)``: squared norm of each tensor of each member."""
        return torch.stack([t.square().sum(-1) for t in torch.split(flat, self.sizes, dim=-1)], dim=-1)

    def per_tensor_dots(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``(P, N)``, ``(P, N)`` -> ``(P, J)``: the inner product of each tensor's entries."""
        return torch.stack([(x * y).sum(-1) for x, y in zip(torch.split(a, self.sizes, dim=-1), torch.split(b, self.sizes, dim=-1))], dim=-1)


def motion_cos(dot: torch.Tensor, grad_sq: torch.Tensor, motion_sq: torch.Tensor) -> torch.Tensor:
    """The ``motion_cos`` feature from ``g·d``, ``‖g‖²``, ``‖d‖²`` (any shape): the cosine
    between a tensor's gradient ``g`` and the direction ``d`` its weights have been moving;
    0 where either is zero (the first step); each norm divides on its own, so that tiny ones
    do not underflow."""
    return (dot / grad_sq.sqrt().clamp_min(1e-30) / motion_sq.sqrt().clamp_min(1e-30)).clamp(-1.0, 1.0)


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
    x = torch.where(finite, raw, 0.0)
    upd = finite & online
    mean = torch.where(upd, decay * mean + (1 - decay) * x, mean)
    sq = torch.where(upd, decay * sq + (1 - decay) * x * x, sq)
    corr = 1 - decay ** n.to(raw.dtype)
    mu = mean / corr
    var = sq / corr - mu**2
    scaled = torch.where(online, (x - mu) / (var.clamp_min(0).sqrt() + 0.1), x)
    return torch.where(finite, scaled, 0.0).clamp(-CLIP, CLIP), mean, sq


BASES: tuple[str, ...] = ("adam", "schedulefree")
SCALES: tuple[str, ...] = ("per_tensor", "global")  # one multiplier per tensor, or one per network (an ablation)
LOSS_EMA = 0.8  # decay of the slow average of window losses (loss_vs_ema)


@dataclass
class KernelState:
    """Per-member state of :class:`LearnedKernel`; all zeros at the start of an episode."""

    m: torch.Tensor  # (P, N) Adam: first moment; Schedule-Free: z (the base sequence)
    v: torch.Tensor  # (P, N) second moment
    count: torch.Tensor  # (P,) steps taken
    log_scale: torch.Tensor  # (P, J) log lr multiplier per tensor
    weight_sum: torch.Tensor  # (P, J) Schedule-Free: Σ η_t² (the averaging weights so far)
    history: torch.Tensor  # (P, J, H, F) normalised feature rows, newest last
    feat_mean: torch.Tensor  # (P, J, F) online-normalisation EMAs
    feat_sq: torch.Tensor  # (P, J, F)
    n_obs: torch.Tensor  # (P,) observations made
    loss_sum: torch.Tensor  # (P,) training loss summed since the last observation
    loss_n: torch.Tensor  # (P,)
    first_loss: torch.Tensor  # (P,) mean loss of the first observation window
    prev_loss: torch.Tensor  # (P,) mean loss of the previous window
    min_loss: torch.Tensor  # (P,) best window mean so far
    ema_loss: torch.Tensor  # (P,) EMA of window means (not bias-corrected; see _observe)
    spikes: torch.Tensor  # (P,) loss-spike guards fired


def reset_rows(state, mask: torch.Tensor):
    """``state`` (a dataclass of ``(P, ...)`` tensors whose initial value is zero) with the
    rows of ``mask`` (``(P,)`` bool) back at zero."""
    def zero(t: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.view(-1, *[1] * (t.dim() - 1)), torch.zeros((), dtype=t.dtype), t)

    return replace(state, **{f.name: zero(getattr(state, f.name)) for f in fields(state)})


class LearnedKernel:
    """A base optimizer (Adam or Schedule-Free AdamW) with a learned per-tensor lr multiplier,
    as a batched functional kernel."""

    def __init__(self, config: PolicyConfig, base: str = "schedulefree", betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 spike_guard: float = META_SPIKE_GUARD, scales: str = "per_tensor", fan_in_power: float = 0.0,
                 fan_in_scope: str = "all"):  # fmt: skip
        if tuple(config.features) not in FEATURE_SETS or config.n_outputs != 1:
            raise ValueError(f"LearnedKernel needs a one-output policy over one of {FEATURE_SETS}; use LearnedKernel.policy_config()")
        if base not in BASES:
            raise ConfigError(f"unknown base {base!r}; choose from {', '.join(BASES)}")
        if scales not in SCALES:
            raise ConfigError(f"unknown scales {scales!r}; choose from {', '.join(SCALES)}")
        if not (math.isfinite(fan_in_power) and fan_in_power >= 0):
            raise ConfigError(f"fan_in_power must be a finite number >= 0, got {fan_in_power}")
        check_fan_in_scope(fan_in_scope)
        self.config, self.base, self.betas, self.eps, self.scales = config, base, betas, eps, scales
        self.fan_in_power, self.fan_in_scope = float(fan_in_power), fan_in_scope
        self._factors: dict[tuple, torch.Tensor] = {}  # (layout, dtype, device) -> its fan-in factors
        self.spike = math.log(check_spike_guard(spike_guard))
        self._online = torch.tensor([f in ONLINE for f in config.features])
        self.reads_motion = "motion_cos" in config.features
        self.reads_fan_in = "log10_fan_in" in config.features
        self._policy = partial(policy_forward, activation=config.activation)  # batched over members (P, ...)

    @staticmethod
    def policy_config(history_length: int = 8, hidden_dim: int = 16, embedding_dim: int = 16,
                      activation: str = "tanh", observe_every: int = 16,
                      features: tuple[str, ...] = KERNEL_FEATURES) -> PolicyConfig:  # fmt: skip
        return PolicyConfig(kind="learned", features=features, history_length=history_length, hidden_dim=hidden_dim,
                            embedding_dim=embedding_dim, activation=activation, observe_every=observe_every)  # fmt: skip

    def fan_in_factors(self, layout: ParamLayout, inputs: Sequence[int] | None = None) -> torch.Tensor:
        """``(J,)`` float64: this kernel's fixed lr factor of each tensor (:meth:`ParamLayout.fan_in_factor`;
        ``inputs``: the input layer's tensors, if not the layout's own guess)."""
        return layout.fan_in_factor(self.fan_in_power, self.fan_in_scope, inputs)

    def _fan_in_factor(self, layout: ParamLayout, like: torch.Tensor) -> torch.Tensor:
        """:meth:`fan_in_factors` in ``like``'s dtype and device, made once."""
        key = (layout, like.dtype, like.device)
        if key not in self._factors:
            self._factors[key] = self.fan_in_factors(layout).to(like)
        return self._factors[key]

    @property
    def observe_every(self) -> int:
        return self.config.observe_every

    def init_theta(self, seed: int = 0, prior: str = "none") -> torch.Tensor:
        """The meta-parameters ``(D,)`` that meta-training starts from: a random encoder and
        zero heads (``prior="none"``: the plain base optimizer), or the same plus the
        ``"integrator"`` skip: the policy's output ``= log s − INTEGRATOR_GAIN · motion_cos``,
        so every observation moves the log scale against the sign of the lr's hypergradient (up
        while the loss still falls along the path, down past the best lr), at most ``MAX_MOVE``.
        The target is that output squashed (``3 tanh(o/3)``), so at ``motion_cos ≈ 0`` the rule
        drifts back towards scale 1, the more the farther it is from it."""
        if prior not in PRIORS:
            raise ConfigError(f"unknown policy prior {prior!r}; choose from {', '.join(PRIORS)}")
        weights = PolicyWeights.init(self.config, seed=seed)
        if prior == "integrator":
            if not self.reads_motion:
                raise ConfigError("the integrator prior reads motion_cos; this policy's features do not include it")
            skip, names = weights.tensors["skip.weight"], self.config.features
            skip[0, names.index("log_lr_scale")] = 1.0
            skip[0, names.index("motion_cos")] = -INTEGRATOR_GAIN
        return weights.flat()

    def init_state(self, n_members: int, layout: ParamLayout, dtype: torch.dtype = torch.float32, device=None) -> KernelState:
        P, N, J, H, F = n_members, layout.n_params, len(layout.names), self.config.history_length, self.config.n_features
        z = partial(torch.zeros, dtype=dtype, device=device)
        return KernelState(m=z(P, N), v=z(P, N), count=z(P), log_scale=z(P, J), weight_sum=z(P, J), history=z(P, J, H, F),
                           feat_mean=z(P, J, F), feat_sq=z(P, J, F), n_obs=z(P), loss_sum=z(P), loss_n=z(P),
                           first_loss=z(P), prev_loss=z(P), min_loss=z(P), ema_loss=z(P), spikes=z(P))  # fmt: skip

    def lr_scale(self, state: KernelState) -> torch.Tensor:
        """``(P, J)``: the multiplier each tensor's lr gets now, in ``[1/20, 20]``."""
        return state.log_scale.exp()

    def eval_params(self, params: torch.Tensor, state: KernelState) -> torch.Tensor:
        """Where to evaluate: the weights (Adam) or Schedule-Free's average ``x``
        (``y`` moved towards ``z`` by ``1 − 1/β₁``; ``y`` itself before the first step)."""
        if self.base == "adam":
            return params
        x = torch.lerp(params, state.m, 1 - 1 / self.betas[0])
        return torch.where((state.count > 0)[:, None], x, params)

    def update(
        self,
        theta: torch.Tensor,
        state: KernelState,
        layout: ParamLayout,
        params: torch.Tensor,
        grad: torch.Tensor,
        loss: torch.Tensor | None,
        base_lr: torch.Tensor,
        *,
        observe: bool,
        weight_decay: torch.Tensor | float = 0.0,
    ) -> tuple[torch.Tensor, KernelState]:
        """One step for every member: ``theta (P, D)``, ``params``/``grad (P, N)``, ``loss (P,)``
        (``None``: this step's loss is unknown and does not enter the window), ``base_lr``
        ``(P,)`` or per tensor ``(P, J)``, ``weight_decay`` a float or likewise (Schedule-Free's
        form, added to the normalised gradient; Adam's L2 form, added to the gradient). With ``observe`` the step's physics is pushed into the
        history and the policy sets new scales (the window must have had a loss)."""
        b1, b2 = self.betas
        sizes = layout.sizes
        count = state.count + 1
        sq = layout.per_tensor_sq_norms
        grad_sq = sq(grad) if observe else None
        cos = None
        if observe and self.reads_motion:  # where the weights were heading before this step
            if self.base == "adam":
                motion = -state.m / (state.v.sqrt() + self.eps)
            else:
                motion = torch.where((state.count == 0)[:, None], 0.0, state.m - params)
            cos = motion_cos(layout.per_tensor_dots(grad, motion), grad_sq, sq(motion))
        lr = (base_lr if base_lr.dim() == 2 else base_lr[:, None]) * self.lr_scale(state)  # (P, J)
        if self.fan_in_power:
            lr = lr * self._fan_in_factor(layout, lr)
        wd_n = None  # (P, N) decay per entry, when there is any
        if isinstance(weight_decay, torch.Tensor) or weight_decay != 0:
            wd = torch.as_tensor(weight_decay, dtype=params.dtype, device=params.device)
            wd_n = _per_param(wd.reshape(-1, 1).expand(len(params), len(sizes)) if wd.dim() < 2 else wd, sizes)
        if self.base == "adam":
            g = grad if wd_n is None else grad + wd_n * params
            m = torch.lerp(state.m, g, 1 - b1)
            v = torch.lerp(state.v, g * g, 1 - b2)
            step = -(lr / (1 - b1**count)[:, None])  # (P, J): −η_j / (1 − β₁ᵗ)
            delta = m / (v.sqrt().div_((1 - b2**count).sqrt()[:, None]).add_(self.eps))
            delta.mul_(_per_param(step, sizes))
            new_params, weight_sum = params + delta, state.weight_sum
        else:
            # fewest (P, N) temporaries (memory and time of the batched populations): in-place
            # where a buffer is this step's own, per-tensor factors formed at (P, J) first; the
            # same floating-point operations, in the same order, as the plain formulas
            first = state.count == 0  # z starts at the initial weights (read on the host: a copy only when some member starts)
            z = torch.where(first[:, None], params, state.m) if bool(first.any()) else state.m
            v = torch.lerp(state.v, grad * grad, 1 - b2)
            d = grad / (v / (1 - b2**count)[:, None]).sqrt_().add_(self.eps)
            if wd_n is not None:
                d = d + wd_n * params
            weight_sum = state.weight_sum + lr * lr
            c = (lr * lr / weight_sum).nan_to_num(0.0)  # (P, J)
            coef = lr * (b1 * (1 - c) - 1)
            # y ← lerp(y, z, c) + η (β₁(1 − c) − 1) d ;  z ← z − η d, tensor by tensor: each factor a
            # (P, 1) column broadcast over the tensor's block, never spread out to (P, N)
            new_params = torch.empty_like(params)
            blocks = zip(*(torch.split(t, sizes, dim=1) for t in (params, z, d, new_params)))
            for j, (y_j, z_j, d_j, out_j) in enumerate(blocks):
                torch.lerp(y_j, z_j, c[:, j : j + 1], out=out_j).add_(coef[:, j : j + 1] * d_j)
                d_j.mul_(lr[:, j : j + 1])
            m = z.sub_(d) if z is not state.m else z - d  # the state's own buffer is never written
            delta = new_params - params if observe else None  # only an observation reads the update
        state = replace(state, m=m, v=v, count=count, weight_sum=weight_sum)
        if loss is not None:
            state = replace(state, loss_sum=state.loss_sum + loss, loss_n=state.loss_n + 1)
        if observe:
            fan_in = layout.log10_fan_in().to(params) if self.reads_fan_in else None
            state = self.observe(theta, state, grad_sq, sq(delta), sq(new_params), cos, fan_in)
        return new_params, state

    def observe(self, theta: torch.Tensor | Mapping[str, torch.Tensor], state: KernelState, grad_sq: torch.Tensor, update_sq: torch.Tensor,
                param_sq: torch.Tensor, motion: torch.Tensor | None = None, fan_in: torch.Tensor | None = None) -> KernelState:  # fmt: skip
        """The observation at the end of a window: from each tensor's squared gradient, update
        and weight norms (``(P, J)`` each, after the step), ``motion`` (``(P, J)``, the
        ``motion_cos`` feature, taken before the step) and ``fan_in`` (``(J,)``,
        :meth:`ParamLayout.log10_fan_in`), each needed when the policy reads it, push
        the features into the history and let the policy set the new scales (bounded, with the
        spike guard). ``update`` calls it; the per-tensor front computes the norms its own way
        and calls it directly, with ``theta`` split once by :func:`policy_tensors`."""
        if self.reads_motion and motion is None:
            raise ValueError("this policy reads motion_cos: pass observe(..., motion=...)")
        if self.reads_fan_in and fan_in is None:
            raise ValueError("this policy reads log10_fan_in: pass observe(..., fan_in=...)")
        mean_loss = state.loss_sum / state.loss_n
        log_l = mean_loss.log()
        first = state.n_obs == 0
        first_loss = torch.where(first | (state.first_loss <= 0), mean_loss, state.first_loss)  # until a loss > 0 is seen
        prev_loss = torch.where(first, mean_loss, state.prev_loss)
        ema_prev = torch.where(first, mean_loss, state.ema_loss)
        finite = torch.isfinite(mean_loss)
        usable = finite & (mean_loss > 0)  # a window whose loss is 0 or below has no log: it is not the best, nor a spike
        best = torch.where(first, math.inf, state.min_loss)
        min_loss = torch.where(usable, torch.minimum(best, mean_loss), best)
        P, J = state.log_scale.shape
        log_ratio = 0.5 * update_sq.log() - 0.5 * param_sq.log()
        vs_min = log_l - min_loss.log()
        member = {"log_loss_rel": log_l - first_loss.log(), "log_loss_delta": log_l - prev_loss.log(),
                  "loss_vs_min": vs_min, "loss_vs_ema": log_l - ema_prev.log()}  # fmt: skip
        columns = {**{k: v[:, None].expand(P, J) for k, v in member.items()}, "log_grad_norm": 0.5 * grad_sq.log(),
                   "log_update_ratio": log_ratio, "update_ratio_level": log_ratio / math.log(10) + 3,
                   "log_lr_scale": state.log_scale, "motion_cos": motion,
                   "log10_fan_in": None if fan_in is None else fan_in.expand(P, J)}  # fmt: skip
        raw = torch.stack([columns[f] for f in self.config.features], dim=-1)
        n_obs = state.n_obs + 1
        row, feat_mean, feat_sq = normalise_online(raw, self._online, state.feat_mean, state.feat_sq, n_obs[:, None, None])
        history = torch.cat([state.history[:, :, 1:], row[:, :, None]], dim=2)
        out, _ = self._policy(theta if isinstance(theta, Mapping) else policy_tensors(self.config, theta), history)  # (P, J, 1)
        target = MAX_LOG_SCALE * torch.tanh(torch.nan_to_num(out[..., 0], nan=0.0) / MAX_LOG_SCALE)
        if self.scales == "global":  # one multiplier per network: the tensors' targets averaged
            target = target.mean(-1, keepdim=True).expand(P, J)
        moved = state.log_scale + (target - state.log_scale).clamp(-MAX_MOVE, MAX_MOVE)
        spike = ~finite | (usable & (vs_min > self.spike))  # (P,)
        halved = (torch.minimum(moved, state.log_scale) - math.log(2)).clamp_min(-MAX_LOG_SCALE)
        log_scale = torch.where(spike[:, None], halved, moved)
        ema = LOSS_EMA * ema_prev + (1 - LOSS_EMA) * torch.where(usable, mean_loss, ema_prev)
        return replace(state, log_scale=log_scale, history=history, feat_mean=feat_mean, feat_sq=feat_sq, n_obs=n_obs,
                       loss_sum=torch.zeros_like(mean_loss), loss_n=torch.zeros_like(mean_loss), first_loss=first_loss,
                       prev_loss=torch.where(usable, mean_loss, prev_loss), min_loss=min_loss, ema_loss=ema,
                       spikes=state.spikes + spike.to(state.spikes.dtype))  # fmt: skip


def _per_param(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """``(P, J)`` per-tensor values -> ``(P, N)``, each repeated over its tensor's entries
    (one copy of broadcast columns: the values of ``repeat_interleave``, without its index)."""
    return torch.cat([x[:, j : j + 1].expand(len(x), n) for j, n in enumerate(sizes)], dim=1)


__all__ = ["BASES", "SCALES", "FAN_IN_SCOPES", "FEATURE_SETS", "PRIORS", "KERNEL_FEATURES", "KERNEL_FEATURES_FAN_IN", "KERNEL_FEATURES_V1", "motion_cos", "KernelState", "LearnedKernel", "ParamLayout", "normalise_online", "policy_tensors", "reset_rows"]
