"""Hyperoptimizer towers: optimizers whose hyperparameters are learned by gradient descent.

After "Gradient Descent: The Ultimate Optimizer" (Chandra et al., NeurIPS 2022). A base
optimizer (SGD, SGD with momentum, or Adam) moves the weights; level 1 of the tower moves the
base's hyperparameters, level 2 moves level 1's step size, and so on up to the height ``h``;
the top step size is fixed. Every level lives in an unconstrained space, so every value is
valid by construction (the learning rate also stays within [1e-20, 1e20], so that a step
stays finite in float32)::

    z_0 = (log lr, logit momentum)             SGD (momentum > 0; plain SGD learns lr only)
    z_0 = (log lr, logit beta1, logit beta2)   Adam
    z_k = log hyper_lr_k                       level k = 1 .. h

The math (one-step hypergradients). The base made ``θ_t = θ_{t-1} − u_{t-1}(z_0)``, so the
new loss depends on ``z_0`` through that last update only:

    ∂L(θ_t)/∂z_0 = −g_t · ∂u_{t-1}/∂z_0,          ∂u/∂log lr = u,

i.e. ``−lr g_t·g_{t-1}`` for plain SGD and ``−g_t·u_{t-1}`` for Adam. Level ``k`` moved
``z_{k-1}`` by ``u^k = rule(∂L/∂z_{k-1}; step e^{z_k})``, so by the same chain rule

    ∂L/∂z_k = −∂L/∂z_{k-1} · u^k_{t-1}.

Adam's betas, holding last step's moments fixed (``c_i = 1 − β_i^t``, ``k_i = tβ_i^{t-1}/c_i``,
``r = g/(√v̂ + ε)``, and an ε inside the root so nothing is NaN at ``v̂ = 0``)::

    ∂u/∂logit β1 = (1−β1)(1 + k1β1) u − (1−β1)(lr/c1) r
    ∂u/∂logit β2 = −(1−β2)/(2c2) · u/((√v̂ + ε)√(v̂ + ε²)) · ((1 + k2β2) v − g²)
    ∂u/∂logit μ  = (1−μ) u − lr(1−μ) g                          (SGD with momentum)

so each is a combination of a few stored vectors (the "basis") with scalar coefficients.
With ``trace_decay = γ > 0`` (the default, 0.999) the learning rate's hypergradient reads a
decaying trace of past updates instead of the last one, ``∂L/∂log lr ≈ −g_t·e_t``,
``e_t = γ e_{t−1} + u_{t−1}``: the derivative of the new loss with respect to a log-lr
change applied to the last ~1/(1−γ) steps, holding the trajectory's Jacobian at the
identity. The one-step form (``γ = 0``) is exact but greedy: it settles far below the best
fixed rate (the short-horizon bias; ``docs/meta.md`` measures both). The trace costs no pass
of its own: since ``θ_t = θ_{t−1} − u_{t−1}``, an average of the weights ``a_t = γ a_{t−1} +
(1−γ) θ_t`` (the *anchor*, ``a_0 = θ_0``) gives ``e_t = −(θ_t − a_t)/γ`` exactly. (``θ − a``
is ``γ e``, read against weights of size ``θ``: in float32 a decay below ``MIN_TRACE_DECAY``
would lose it to rounding, so the trace is 0 or at least that.)

The hyper levels step every ``hyper_every = k`` base steps (default 6), each move ``k`` times
its step size, so level 1 moves the lr as fast per base step as with ``k = 1`` (with
``hyper="sgd"`` the levels above move faster: their hypergradients read level 1's larger
moves; hyper-Adam's steps do not depend on that scale); in between, a step is the plain base
step. The anchor is then updated on hyper steps only, ``a ← γ^k a + (1−γ^k) θ`` (exact for
``k = 1``; for ``k > 1`` every update of the latest block counts with the weight of its oldest,
``γ^{k−1}``: at ``γ = 0.999``, ``k = 6``, 0.5% short), and the one-step vectors the other
hyperparameters need are kept only on the step before a hyper step. That is what makes a level cheap: the dot products and the anchor's pass happen
once per ``k`` steps (``docs/meta.md`` measures the cost and the accuracy for ``k`` = 1, 4, 5, 6, 8).

The base warms up: at step ``t`` it applies ``lr · min(1, t/warmup)`` (default ``warmup`` 300;
the levels learn ``lr`` itself, and ``∂u/∂log lr = u`` holds for the lr applied). Level 1 moves
log lr by at most its step, 0.03, per step, so without one a start far too high (SGD at 1, Adam
at 0.1) wrecks the network in its first few steps, before the levels can lower it; the warm-up
gives them those steps (``docs/meta.md``: chosen on ``tower_dev.py``'s cell; the lr applied is in ``effective_lr``, which
the probe reads).

Each tensor's step is also held to ``max_update_ratio`` times its weights' norm (default per
base, ``MAX_UPDATE_RATIO``), as a ceiling on that tensor's lr measured on the first block's
steps and at every hyper step (:class:`Ceiling`): Adam moves every weight by about ±lr whatever
the gradient, so from a start of 1 even the warm-up's first steps cost the network points it
never recovers. The levels read the step applied, and after a block in which the ceiling held
most of the group's elements they may lower the lr but not raise it (a held step does not grow
with the lr: raising it would wind it up without effect).

Each hyper step computes the hypergradients bottom-up from those and the levels' last moves, then
moves the levels top-down (level h first, the weights last), as the paper's recursive step
does. All of it is closed form under ``no_grad``: no autograd graph survives a step (the
published ``create_graph`` version leaks), memory is O(parameters), and the hyper levels are
O(1) scalar work. A host read or two per hyper step (the trace's dot product, summed in one
buffer, and the one-step vectors' few dot products, one ``tolist``) buys that: the levels are then Python arithmetic on a handful of floats, which
measured far cheaper than the dozens of tiny tensor ops (kernel launches) they would be.

Use it like any optimizer::

    opt = Tower(model.parameters(), lr=1e-3, base="adam", height=2, learn="all")
    loss.backward(); opt.step()
    opt.param_groups[0]["lr"], opt.param_groups[0]["hyper_lrs"]   # the learned values

Hyperparameters in ``param_groups`` are plain floats, as in ``torch.optim``. ``learn="lr"``
(the default, cheapest) learns the base's learning rate only; ``learn="all"`` also its
momentum or betas. ``hyper_lrs[k-1]`` is level k's step size; the last one is the fixed top.
A scheduler or user that overwrites a value is respected: the tower continues from the value
it finds (so a scheduler resets rather than scales it; an lr of 0, a warm-up's start, steps by
nothing and the tower goes on from 1e-20). A group shares one step counter. A group may set
any of the constructor's options; each group's values are checked as the constructor's are.
A non-finite gradient is not guarded against, as in ``torch.optim`` (the levels count a
non-finite hypergradient as zero, but the weights take the step).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import torch
from torch import Tensor

from metalearner.errors import ConfigError
from metalearner.kernels import adam_moments_, check_dense_grads, check_state_fits
from metalearner.methods import check_rate

# base -> the hyperparameters that learn="all" learns, in the order of z_0
LEARNABLE = {"sgd": ("lr",), "momentum": ("lr", "momentum"), "adam": ("lr", "beta1", "beta2")}
BUFFERS = {"sgd": (), "momentum": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq")}  # each parameter's, per base
BASES = tuple(LEARNABLE)
HYPERS = ("adam", "sgd")
HYPER_BETAS = (0.5, 0.9)  # the hyper levels' Adam: a short memory (docs/meta.md: beta1 chosen on tower_dev.py's cell)
SAVED_HYPER_BETAS = (0.9, 0.9)  # what a state dict saved before hyper_betas existed ran with
HYPER_EPS = 1e-12
LOGIT_BOUND = 30.0  # sigmoid(30) = 1 − 9e-14: still below 1 in float64
LOG_LR_BOUND = math.log(1e20)  # lr in [1e-20, 1e20]: lr times a float32 gradient stays finite
LEVEL_RATIO = 0.1  # a single hyper_lr gives level k the step hyper_lr · 0.1^(k-1): higher levels move slower
HYPER_EVERY = 6  # base steps per hyper step (docs/meta.md: chosen on tower_dev.py's cell)
WARMUP = 300  # base steps of linear lr warm-up (docs/meta.md: chosen on tower_dev.py's cell)
# per base (Tower's max_update_ratio; 0: off): chosen per base on tower_dev.py's cell, momentum takes SGD's (docs/meta.md)
MAX_UPDATE_RATIO = {"sgd": 0.01, "momentum": 0.01, "adam": 0.01}  # the same, chosen apart
MIN_TRACE_DECAY = 0.01  # below it θ − a = γe drowns in float32 rounding of θ (1e-3: 1% error, 1e-5: all of it)
SAVED_WITHOUT = {"trace_decay": 0.0, "hyper_every": 1, "warmup": 0, "max_update_ratio": 0.0}  # what a state saved before each ran with
Levels = list[list[float]]  # one list per level: z_0 (its learned hyperparameters), z_1, …, z_h

# ------------------------------------------------------------------------- functional kernel
# A base kernel moves the weights itself (θ −= u, one fused op, as torch.optim does). With
# ``basis`` (the next step is a hyper step and reads one-step vectors) it also returns
# (basis, coef): vectors to keep for the next step's hypergradient (basis[0] written into a
# buffer the caller keeps, so no step allocates it) and coef (len z_0 × len basis) with
# ∂u/∂z_0[j] = Σ_b coef[j][b] basis[b]; without, ([], []).


def adam_update(
    params: list[Tensor], grads: list[Tensor], m: list[Tensor], v: list[Tensor], direction: list[Tensor], lr: float,
    beta1: float, beta2: float, eps: float, step: int, *, basis: bool = True, learn_betas: bool = False,
    ceiling: Ceiling | None = None,
) -> tuple[list[list[Tensor]], Levels]:  # fmt: skip
    """Adam, ``u = lr m̂/(√v̂ + ε) = a·d`` with ``a = lr/c₁`` and ``d = m/(√v̂ + ε)`` (into
    ``direction`` with ``basis``); moves ``m, v`` and the weights in place. With a ``ceiling``
    each tensor's step is scaled by its factor (:class:`Ceiling`), and so is every basis vector
    (the factor held fixed: the hypergradients are those of the step applied)."""
    c1, c2 = 1 - beta1**step, 1 - beta2**step
    denom = adam_moments_(grads, m, v, beta1=beta1, beta2=beta2, bias_correction2=c2, eps=eps)
    a = lr / c1
    if basis:
        torch._foreach_copy_(direction, m)
        torch._foreach_div_(direction, denom)
    caps = None if ceiling is None else ceiling.factors(lr, params, lambda: direction if basis else torch._foreach_div(m, denom), 1 / c1)
    if not basis:
        torch._foreach_addcdiv_(params, m, denom, -a if caps is None else [-a * c for c in caps])
        return [], []
    if caps is not None:
        torch._foreach_mul_(direction, caps)
    torch._foreach_add_(params, direction, alpha=-a)
    if not learn_betas:
        return [direction], [[a]]
    r = torch._foreach_div(grads, denom)
    if caps is not None:
        torch._foreach_mul_(r, caps)
    w = torch._foreach_sqrt(torch._foreach_add(torch._foreach_div(v, c2), eps * eps))
    torch._foreach_mul_(w, denom)
    w = torch._foreach_div(direction, w)
    torch._foreach_mul_(w, a)  # u / ((√v̂ + ε)√(v̂ + ε²))
    k1, k2 = step * beta1 ** (step - 1) / c1, step * beta2 ** (step - 1) / c2
    coef = [
        [a, 0.0, 0.0, 0.0],
        [(1 - beta1) * (1 + k1 * beta1) * a, -(1 - beta1) * a, 0.0, 0.0],
        [0.0, 0.0, -(1 - beta2) * (1 + k2 * beta2) / (2 * c2), (1 - beta2) / (2 * c2)],
    ]
    return [direction, r, torch._foreach_mul(w, v), torch._foreach_mul(torch._foreach_mul(w, grads), grads)], coef


def sgd_update(
    params: list[Tensor], grads: list[Tensor], buf: list[Tensor] | None, direction: list[Tensor], lr: float,
    momentum: float = 0.0, *, basis: bool = True, learn_momentum: bool = False, ceiling: Ceiling | None = None,
) -> tuple[list[list[Tensor]], Levels]:  # fmt: skip
    """SGD, ``u = lr b`` with ``b = μ b + g`` (``b = g`` without ``buf``); moves ``buf`` and the
    weights in place. With ``basis``, ``direction`` receives a copy of ``g`` where the next
    step needs it (plain SGD, or the momentum's hypergradient); with ``buf`` the basis is
    ``buf`` itself, which the next step reads before it moves it. ``ceiling``: as in
    :func:`adam_update` (with ``buf``, the basis is then the capped step, a new list)."""
    if buf is None:
        caps = None if ceiling is None else ceiling.factors(lr, params, lambda: grads, 1.0)
        if basis:
            torch._foreach_copy_(direction, grads)
            if caps is not None:
                torch._foreach_mul_(direction, caps)
            torch._foreach_add_(params, direction, alpha=-lr)
            return [direction], [[lr]]
        if caps is None:
            torch._foreach_add_(params, grads, alpha=-lr)
        else:
            for p, g, c in zip(params, grads, caps):  # while the ceiling holds (foreach adds take one alpha)
                p.add_(g, alpha=-lr * c)
        return [], []
    torch._foreach_mul_(buf, momentum)
    torch._foreach_add_(buf, grads)
    caps = None if ceiling is None else ceiling.factors(lr, params, lambda: buf, 1.0)
    step = buf if caps is None else torch._foreach_mul(buf, caps)
    torch._foreach_add_(params, step, alpha=-lr)
    if not basis:
        return [], []
    if not learn_momentum:
        return [step], [[lr]]
    torch._foreach_copy_(direction, grads)
    if caps is not None:
        torch._foreach_mul_(direction, caps)
    return [step, direction], [[lr, 0.0], [(1 - momentum) * lr, -lr * (1 - momentum)]]


def update_caps(params: list[Tensor], vecs: list[Tensor], ratio: float) -> list[float]:
    """Per tensor the largest lr whose step ``lr·v`` stays within ``ratio`` of the weights' norm,
    ``ratio·‖w‖/‖v‖`` (the trust ratio of LARS and LAMB, used as a ceiling only), read to the
    host at once; ``inf`` where ``‖w‖ = 0`` (zero-initialised tensors must be able to move) or
    ``‖v‖ = 0``."""
    w, u = torch._foreach_norm(params), torch._foreach_norm(vecs)
    if len({(x.device, x.dtype) for x in w}) == 1:
        w, u = torch.stack(w).tolist(), torch.stack(u).tolist()
    else:
        w, u = [float(x) for x in w], [float(x) for x in u]
    return [ratio * wi / ui if wi > 0 and ui > 0 else math.inf for wi, ui in zip(w, u)]


class Ceiling:
    """A group's ceiling on each tensor's step (``Tower``'s ``max_update_ratio``), kept as a
    ceiling on each tensor's lr, ``ratio·‖w‖/‖d̂‖`` with ``d̂`` the step per unit lr (Adam:
    ``m̂/(√v̂ + ε)``; SGD: the gradient or the momentum buffer), measured on each of the first
    ``hyper_every`` steps and then at every hyper step (:func:`update_caps`: one host read, where
    the levels read theirs) and kept in each parameter's state (``ceiling_lr``). In between, a
    step's factors ``min(1, ceiling/lr)`` are host arithmetic, so a step the ceiling does not
    hold costs nothing more. ``ceiling_held`` (group state) records that it held tensors making
    up at least half of the group's elements since the last hyper step: a small tensor (a bias,
    a norm's scale) held alone does not stop the levels raising the lr of the rest."""

    def __init__(self, ratio: float, tower: dict[str, Any], states: list[dict[str, Any]], refresh: bool) -> None:
        self.ratio, self.tower, self.states, self.refresh = ratio, tower, states, refresh

    def factors(self, lr: float, params: list[Tensor], vecs: Callable[[], list[Tensor]], unit: float) -> list[float] | None:
        """Each tensor's factor for a step ``lr·unit·v`` (``unit·v`` is d̂), or ``None`` where none is below 1."""
        if self.refresh or any("ceiling_lr" not in s for s in self.states):
            for s, x in zip(self.states, update_caps(params, vecs(), self.ratio)):
                s["ceiling_lr"] = x / unit
        if lr <= 0:  # a zero step (a scheduler at 0) needs no ceiling
            return None
        caps = [min(1.0, s["ceiling_lr"] / lr) for s in self.states]
        if min(caps) >= 1.0:
            return None
        held = sum(p.numel() for p, c in zip(params, caps) if c < 1.0)
        if 2 * held >= sum(p.numel() for p in params):
            self.tower["ceiling_held"] = True
        return caps


def basis_dots(grads: list[Tensor], basis: list[list[Tensor]]) -> list[float]:
    """``[Σ_i ⟨g_i, b_i⟩ for each basis vector b]``, read to the host at once. (One ``dot`` per
    tensor, flattening only what is not flat: on a small network the step's cost is per-op.)"""
    flat = [g if g.dim() == 1 else g.reshape(-1) for g in grads]
    dots = torch.stack([torch.dot(g, b if b.dim() == 1 else b.reshape(-1)) for vecs in basis for g, b in zip(flat, vecs)])
    return dots.view(len(basis), len(grads)).sum(1).tolist()


def hypergradients(grad0: list[float], last_moves: Levels) -> Levels:
    """``[∂L/∂z_0, …, ∂L/∂z_{h-1}]``: ``∂L/∂z_k = −∂L/∂z_{k-1} · (level k's last move of
    z_{k-1})`` from ``grad0 = ∂L/∂z_0``; non-finite values (a diverged step) count as zero."""
    out = [grad0]
    for moves in last_moves[:-1]:
        out.append([-sum(g * u for g, u in zip(out[-1], moves))])
    return [[g if math.isfinite(g) else 0.0 for g in level] for level in out]


def hyper_directions(rule: str, grads: Levels, state: dict[str, Any], betas: tuple[float, float] = HYPER_BETAS) -> Levels:
    """The hyper levels' step directions: the hypergradient (SGD) or Adam's ``m̂/(√v̂ + ε)``."""
    if rule == "sgd":
        return grads
    state["hyper_step"] = t = state["hyper_step"] + 1
    b1, b2 = betas
    out = []
    for g, m, v in zip(grads, state["m"], state["v"]):
        m[:] = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v[:] = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        out.append([mi / (1 - b1**t) / (math.sqrt(vi / (1 - b2**t)) + HYPER_EPS) for mi, vi in zip(m, v)])
    return out


def climb(z: Levels, directions: Levels, every: int = 1) -> Levels:
    """Move the levels top-down in place: level k moves ``z_{k-1}`` by ``every · e^{z_k} ·
    direction`` (``every``: base steps per hyper step), its step size just moved by level k+1;
    returns the moves (the top ``z_h`` stays)."""
    moves: Levels = [[] for _ in directions]
    for k in range(len(directions), 0, -1):
        moves[k - 1] = [every * _exp(z[k][0]) * d for d in directions[k - 1]]
        z[k - 1] = [a - b for a, b in zip(z[k - 1], moves[k - 1])]
    return moves


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# ---------------------------------------------------------------------------- class front


def _check_group(group: dict[str, Any], *, lr_zero_ok: bool = False) -> None:
    """A group's values, as the constructor checks its arguments (a group may override any);
    ``max_update_ratio`` None becomes its base's default. ``lr_zero_ok``: a saved state's lr,
    which a scheduler may have set to 0."""
    for name, key, choices in (("tower base", "base", BASES), ("hyper rule", "hyper", HYPERS), ("learn", "learn", ("lr", "all"))):
        if group[key] not in choices:
            raise ConfigError(f"unknown {name} {group[key]!r}; choose from {', '.join(choices)}")
    check_rate("learning rate", group["lr"], zero_ok=lr_zero_ok)
    check_rate("eps", group["eps"])
    if not group["hyper_lrs"]:
        raise ConfigError("hyper_lrs needs one value per level (at least one)")
    for r in group["hyper_lrs"]:
        check_rate("hyper_lr", r, zero_ok=True)
    every, warmup, decay = group["hyper_every"], group["warmup"], group["trace_decay"]
    if not (isinstance(every, int) and every >= 1):
        raise ConfigError(f"hyper_every must be an integer >= 1, got {every}")
    if not (isinstance(warmup, int) and warmup >= 0):
        raise ConfigError(f"warmup must be an integer >= 0, got {warmup}")
    if not (decay == 0 or MIN_TRACE_DECAY <= decay < 1):
        raise ConfigError(f"trace_decay must be 0 (the one-step hypergradient) or in [{MIN_TRACE_DECAY}, 1), got {decay}")
    hyper_betas = tuple(group.get("hyper_betas", SAVED_HYPER_BETAS))
    if len(hyper_betas) != 2 or not all(0 <= b < 1 for b in hyper_betas):
        raise ConfigError(f"hyper_betas must be two numbers in [0, 1), got {hyper_betas}")
    if group["base"] == "adam" and not (len(group.get("betas", ())) == 2 and all(0 < b < 1 for b in group["betas"])):
        raise ConfigError(f"betas must be in (0, 1) (two numbers, for an Adam tower), got {group.get('betas')}")
    if group["base"] == "momentum" and not 0 < group.get("momentum", 0) < 1:
        raise ConfigError(f"momentum must be in (0, 1), got {group.get('momentum')}")
    ratio = MAX_UPDATE_RATIO[group["base"]] if group["max_update_ratio"] is None else group["max_update_ratio"]
    check_rate("max_update_ratio", ratio, zero_ok=True)
    group["max_update_ratio"] = float(ratio)
    for key in ("lr", "eps", "trace_decay"):  # plain floats, as torch.optim keeps them
        group[key] = float(group[key])
    group["hyper_betas"] = tuple(map(float, hyper_betas))
    if "betas" in group:
        group["betas"] = tuple(map(float, group["betas"]))
    if group["base"] == "momentum":
        group["momentum"] = float(group["momentum"])


class Tower(torch.optim.Optimizer):
    """A base optimizer whose hyperparameters a tower of ``height`` hyper levels learns.

    Args:
        params: parameters or param groups, as for any ``torch.optim`` optimizer.
        lr: the base learning rate (its start value; learned).
        base: ``"adam"``, ``"momentum"`` (SGD with momentum) or ``"sgd"``.
        betas, momentum, eps: the base's other hyperparameters (start values).
        learn: ``"lr"`` (the base's learning rate) or ``"all"`` (also its momentum or betas).
        height: number of hyper levels (>= 1); level k learns level k-1's hyperparameters.
        hyper_lr: the hyper levels' step sizes on the log/logit scale: level 1's, each level
            above 10x smaller (slower timescales up the tower), or a sequence, one per level.
            The top one stays fixed, the others are learned.
        hyper: the hyper levels' rule, ``"adam"`` (scale-free steps) or ``"sgd"``.
        hyper_betas: the hyper levels' Adam betas (``HYPER_BETAS``).
        trace_decay: level 1 reads the learning rate's hypergradient through a decaying trace
            of past updates, ``−g_t·e_t`` with ``e_t = γ e_{t−1} + u_{t−1}``, instead of
            the last update alone (``γ = 0``, the paper's one-step hypergradient, which
            settles far below the best fixed rate: the short-horizon bias). The default
            0.999 looks back about a thousand steps (see ``docs/meta.md``); 0 or at least
            ``MIN_TRACE_DECAY`` (0.01).
        hyper_every: base steps per hyper step (each move that many times its step size);
            the steps in between are the plain base step, which is what keeps a level cheap.
        warmup: the base applies ``lr · min(1, t/warmup)`` at its step ``t`` (0: off). The
            levels learn ``lr`` itself; a warm-up gives level 1, which moves log lr by at most
            its step size per step, time to lower a start that would wreck the network in its
            first few steps.
        warmup_hold: during the warm-up the levels may lower the lr but not raise it (tried on
            ``tower_dev.py``'s cell and not adopted: off; ``docs/meta.md``).
        max_update_ratio: a ceiling on each tensor's step relative to its weights,
            ``‖Δw‖ ≤ ratio·‖w‖``, kept as a ceiling on each tensor's lr measured on the first
            block's steps and then at every hyper step (:class:`Ceiling`; a tensor whose weights
            are all 0 when measured is not held). It acts from the first step, where the levels
            are too slow to save a start far too high. The levels see the step applied (the
            factor held fixed, as the warm-up's), and after a block of steps in which it held
            at least half of the group's elements they may lower the lr but not raise it: a held
            step does not grow with the lr, so raising it would only wind it up. ``None``: the
            base's default, ``MAX_UPDATE_RATIO``; 0: off.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        *,
        base: str = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.9,
        eps: float = 1e-8,
        learn: str = "lr",
        height: int = 1,
        hyper_lr: float | Sequence[float] = 0.03,
        hyper: str = "adam",
        trace_decay: float = 0.999,
        hyper_every: int = HYPER_EVERY,
        warmup: int = WARMUP,
        warmup_hold: bool = False,
        hyper_betas: tuple[float, float] = HYPER_BETAS,
        max_update_ratio: float | None = None,
    ) -> None:
        if not (isinstance(height, int) and height >= 1):
            raise ConfigError(f"tower height must be an integer >= 1, got {height}")
        if isinstance(hyper_lr, (int, float)):
            rates = [float(hyper_lr) * LEVEL_RATIO**k for k in range(height)]
        else:
            rates = [float(r) for r in hyper_lr]
        if len(rates) != height:
            raise ConfigError(f"hyper_lr needs one value per level ({height}), got {len(rates)}")
        # every value is checked per group by _check_group (add_param_group), the defaults' and a group's own alike
        defaults: dict[str, Any] = dict(lr=lr, eps=eps, base=base, learn=learn, hyper=hyper, hyper_lrs=tuple(rates),
                                        trace_decay=trace_decay, hyper_every=hyper_every, warmup=warmup,
                                        warmup_hold=bool(warmup_hold), hyper_betas=tuple(hyper_betas), max_update_ratio=max_update_ratio)  # fmt: skip
        if base == "adam":
            defaults["betas"] = tuple(betas)
        elif base == "momentum":
            defaults["momentum"] = momentum
        self._plans: dict[int, _Plan] = {}  # id(group) -> its plan (Tower._plan)
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's (the saved groups' values replace the current ones, as for any optimizer),
        refusing in one line a state that is not a tower's or does not fit the parameters."""
        groups = state_dict.get("param_groups", []) if isinstance(state_dict, dict) else []
        if not groups or not all({"base", "learn", "hyper_lrs"} <= set(g) for g in groups):
            raise ConfigError("this is not the state of a Tower (its groups lack base, learn or hyper_lrs)")
        check_state_fits(self, state_dict)
        for group in state_dict["param_groups"]:  # a state saved before an option existed ran without it
            _check_group({**SAVED_WITHOUT, **group}, lr_zero_ok=True)
        super().load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, then the group's own values checked (a group may set any of the constructor's options)."""
        super().add_param_group(param_group)
        _check_group(self.param_groups[-1])

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, hyper_grads: dict[Tensor, Tensor] | None = None) -> Tensor | None:
        """One step per group: hypergradients, the hyper levels top-down, then the weights.

        ``hyper_grads`` (parameter -> tensor shaped like it; every parameter that has a
        ``.grad``): the gradient of another loss at the current weights, for example of a
        held-out batch, for the levels' hypergradients in place of ``.grad``, so that the
        levels tune the hyperparameters for that loss while the weights follow ``.grad``."""
        loss = None
        if closure is not None and not callable(closure):
            raise ConfigError("Tower.step takes a closure that returns the loss, or nothing; it does not read a loss (step() is enough)")
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
        check_dense_grads([p for _, params in groups for p in params], "Tower")
        if hyper_grads is not None:  # checked whole before any group steps
            for p in (p for _, params in groups for p in params):
                if p not in hyper_grads or hyper_grads[p].shape != p.shape:
                    raise ConfigError("hyper_grads needs a tensor shaped like each parameter that has a gradient")
        for group, params in groups:
            if params:
                self._group_step(group, params, None if hyper_grads is None else [hyper_grads[p] for p in params])
        return loss

    def __setstate__(self, state: dict[str, Any]) -> None:  # unpickling, copying and load_state_dict
        super().__setstate__(state)
        self._plans = {}  # torch.optim keeps only defaults, state and param_groups (plans point into the states)

    def _plan(self, group: dict[str, Any], params: list[Tensor], t: int) -> _Plan:
        """The group's bookkeeping for this set of parameters, made once per set (a parameter
        that gets its first gradient, or a loaded state, makes a new one): the states, the
        base's buffers (made on first use) and, with a trace, the anchors of parameters seen
        for the first time (``a = θ`` at the step of their first gradient)."""
        decay = group.get("trace_decay", 0.0)  # state dicts saved before it existed
        key = (group["base"], group["learn"], decay, *map(id, params))
        plan = self._plans.get(id(group))
        if plan is not None and plan.key == key and plan.group is group:
            return plan
        states = [self.state[p] for p in params]
        names = _learned(group)
        one_step = len(names) > 1 or not decay  # some hypergradient reads the last step's vectors
        needs_direction = one_step and (group["base"] != "momentum" or len(names) > 1)
        buffers = BUFFERS[group["base"]] + (("direction",) if needs_direction else ())
        for s, p in zip(states, params):
            s.update({k: torch.zeros_like(p) for k in buffers if k not in s})
        if decay:
            fresh = [i for i, s in enumerate(states) if "anchor" not in s]
            if len(fresh) == len(states):  # the first step (or a state saved before the anchor)
                group["tower_state"]["anchored"] = t
            for i in fresh:
                states[i]["anchor"] = params[i].detach().clone()
        scratch = None
        if decay and len({(p.dtype, p.device) for p in params}) == 1:
            flat = params[0].new_empty(sum(p.numel() for p in params))
            scratch = (flat, [v.view_as(p) for v, p in zip(flat.split([p.numel() for p in params]), params)])
        plan = _Plan(key, group, states, names, one_step, decay, {k: [s[k] for s in states] for k in buffers}, scratch)
        self._plans[id(group)] = plan
        return plan

    def _group_step(self, group: dict[str, Any], params: list[Tensor], hyper_grads: list[Tensor] | None = None) -> None:
        grads = [p.grad for p in params]
        if "tower_state" not in group:
            group["tower_state"] = _new_tower_state(len(_learned(group)), len(group["hyper_lrs"]))
        tower = group["tower_state"]
        tower["step"] = t = tower["step"] + 1
        plan = self._plan(group, params, t)
        visible = _visible(group)
        if visible != tower["written"]:  # the first step, or someone set a value: start from it
            tower["z"] = _read_z(group, plan.names)
            tower["written"] = visible
        every = group.get("hyper_every", 1)  # state dicts saved before it existed
        if t > 1 and (t - 1) % every == 0 and (not plan.one_step or (tower["coef"] is not None and all("basis" in s for s in plan.states))):
            dots, coef = _hyper_basis(tower, plan, params, grads if hyper_grads is None else hyper_grads, t)
            grad0 = [-sum(c * d for c, d in zip(row, dots)) for row in coef]
            tower["hypergrads"] = hypergradients(grad0, tower["moves"])  # kept for logs and tests
            directions = hyper_directions(group["hyper"], tower["hypergrads"], tower, tuple(group.get("hyper_betas", SAVED_HYPER_BETAS)))
            before = list(tower["z"][0])
            tower["moves"] = climb(tower["z"], directions, every)
            unbounded = list(tower["z"][0])
            hold = group.get("warmup_hold") and t <= group.get("warmup", 0)  # during the warm-up the ramp raises the lr
            if (tower.pop("ceiling_held", False) or hold) and tower["z"][0][0] > before[0]:
                tower["z"][0][0] = before[0]  # the levels may lower the lr, not raise it (Tower: warmup_hold, max_update_ratio)
            _write_back(group, tower["z"], plan.names)
            # a value held at its bound moved less than level 1 asked: keep the move applied, so that the
            # levels above see no effect of a move that did not happen (and do not wind up their step sizes)
            tower["moves"][0] = [m if z == u else b - z for m, z, u, b in zip(tower["moves"][0], tower["z"][0], unbounded, before)]
            tower["written"] = _visible(group)
        keep = plan.one_step and t % every == 0  # the next step is a hyper step that reads this step's vectors
        basis, coef = _base_update(group, grads, plan, params, basis=keep)
        if keep:
            tower["coef"] = coef
            for i, s in enumerate(plan.states):
                s["basis"] = [b[i] for b in basis]


class _Plan(NamedTuple):
    """What a group's step needs that changes only with its set of parameters (``Tower._plan``)."""

    key: tuple[Any, ...]
    group: dict[str, Any]
    states: list[dict[str, Any]]
    names: tuple[str, ...]  # the base hyperparameters level 1 learns, in the order of z_0
    one_step: bool
    decay: float
    buffers: dict[str, list[Tensor]]  # the base's buffers (and the one-step "direction"), one list per name
    scratch: tuple[Tensor, list[Tensor]] | None  # with a trace: a flat buffer and its views shaped as the parameters


def _hyper_basis(tower: dict[str, Any], plan: _Plan, params: list[Tensor], grads: list[Tensor], t: int) -> tuple[list[float], Levels]:
    """``(dots, coef)`` with ``∂L/∂z_0[j] = −Σ_b coef[j][b] dots[b]``: the dot products of this
    step's gradient with the last step's vectors, and with a trace the lr's row replaced by
    ``g·(θ − a)/γ`` from the anchor, moved up to now first."""
    dots: list[float] = []
    coef: Levels = []
    if plan.one_step:
        dots = basis_dots(grads, [[s["basis"][b] for s in plan.states] for b in range(len(tower["coef"][0]))])
        coef = [list(row) for row in tower["coef"]]
    if plan.decay:
        dots = [_trace_dot(plan, params, grads, 1 - plan.decay ** (t - tower["anchored"])), *dots]  # g·(θ − a) = −γ g·e
        tower["anchored"] = t
        lr_row = [-1 / plan.decay] + [0.0] * (len(dots) - 1)
        coef = [lr_row, *([0.0, *row] for row in coef[1:])] if coef else [lr_row]
    return dots, coef


def _trace_dot(plan: _Plan, params: list[Tensor], grads: list[Tensor], weight: float) -> float:
    """``g·(θ − a)`` after moving the anchor, ``a ← a + weight (θ − a)``. The products go into
    one flat buffer and are summed at once: on a small network a hyper step's cost is mostly
    per-operation, and this takes 5 operations where a dot per tensor takes 15 or more."""
    anchor = [s["anchor"] for s in plan.states]
    torch._foreach_lerp_(anchor, params, weight)
    if plan.scratch is None:  # parameters of several dtypes or devices: no common buffer
        return sum(float(torch.sum((p - a) * g)) for p, a, g in zip(params, anchor, grads))
    flat, views = plan.scratch
    torch._foreach_copy_(views, params)
    torch._foreach_sub_(views, anchor)
    torch._foreach_mul_(views, grads)
    return float(flat.sum())


def _base_update(
    group: dict[str, Any], grads: list[Tensor], plan: _Plan, params: list[Tensor], *, basis: bool
) -> tuple[list[list[Tensor]], Levels]:
    """The base kernel on the group's current hyperparameters, on the plan's buffers."""
    bufs, learn_more = plan.buffers, len(plan.names) > 1
    direction = bufs.get("direction", [])
    t, warmup = group["tower_state"]["step"], group.get("warmup", 0)  # state dicts saved before it existed
    lr = group["effective_lr"] = float(group["lr"]) * (min(1.0, t / warmup) if warmup else 1.0)  # the lr applied, for the probe (a tensor lr too)
    ratio = group.get("max_update_ratio", 0.0)  # state dicts saved before it existed: off
    every = group.get("hyper_every", 1)
    refresh = t <= every or (t - 1) % every == 0  # the first block's steps (buffers still filling), then each hyper step
    cap = Ceiling(ratio, group["tower_state"], plan.states, refresh) if ratio else None
    if group["base"] == "adam":
        return adam_update(params, grads, bufs["exp_avg"], bufs["exp_avg_sq"], direction, lr, *group["betas"], group["eps"], t,
                           basis=basis, learn_betas=learn_more, ceiling=cap)  # fmt: skip
    if group["base"] == "momentum":
        return sgd_update(params, grads, bufs["momentum_buffer"], direction, lr, group["momentum"], basis=basis,
                          learn_momentum=learn_more, ceiling=cap)  # fmt: skip
    return sgd_update(params, grads, None, direction, lr, basis=basis, ceiling=cap)


def _learned(group: dict[str, Any]) -> tuple[str, ...]:
    """The base hyperparameters level 1 learns, in the order of ``z_0``."""
    return LEARNABLE[group["base"]] if group["learn"] == "all" else ("lr",)


def _visible(group: dict[str, Any]) -> tuple[Any, ...]:
    """The group's current hyperparameter values, to notice one that someone else changed."""
    return (group["lr"], *group.get("betas", ()), group.get("momentum"), *group["hyper_lrs"])


def _read_z(group: dict[str, Any], names: Sequence[str]) -> Levels:
    """``[z_0, z_1, …, z_h]`` from the group's current values."""
    betas = group.get("betas", (None, None))
    value = {"lr": group["lr"], "momentum": group.get("momentum"), "beta1": betas[0], "beta2": betas[1]}
    if not (value["lr"] >= 0 and math.isfinite(value["lr"])):
        raise ConfigError(f"a tower's learning rate must be a non-negative finite number, got {value['lr']}")
    # an lr set to 0 (by a scheduler's warm-up or its end) is the smallest the tower keeps, 1e-20
    z0 = [max(math.log(value[n]) if value[n] > 0 else -math.inf, -LOG_LR_BOUND) if n == "lr" else _logit(value[n]) for n in names]
    return [z0, *([math.log(r)] if r > 0 else [-math.inf] for r in group["hyper_lrs"])]


def _write_back(group: dict[str, Any], z: Levels, names: Sequence[str]) -> None:
    """Store the levels' new values in the group (the top step size stays as given); logits
    are kept within ±LOGIT_BOUND so a beta or momentum stays below 1 in floating point, the log
    lr within ±LOG_LR_BOUND (a loss unbounded below would otherwise raise it until a float32
    step overflows)."""
    bound = {"lr": LOG_LR_BOUND}
    z[0] = [max(-bound.get(n, LOGIT_BOUND), min(bound.get(n, LOGIT_BOUND), x)) for n, x in zip(names, z[0])]
    values = {n: _exp(x) if n == "lr" else _sigmoid(x) for n, x in zip(names, z[0])}
    group["lr"] = values["lr"]
    if "momentum" in values:
        group["momentum"] = values["momentum"]
    if "beta1" in values:
        group["betas"] = (values["beta1"], values["beta2"])
    group["hyper_lrs"] = (*(_exp(zk[0]) for zk in z[1:-1]), group["hyper_lrs"][-1])


def _new_tower_state(n0: int, height: int) -> dict[str, Any]:
    """Step counters, the levels ``z`` and their last moves, the hyper levels' Adam moments."""
    zeros = lambda: [[0.0] * n0] + [[0.0] for _ in range(height - 1)]  # noqa: E731
    return {"step": 0, "hyper_step": 0, "z": None, "written": None, "coef": None, "anchored": 0,
            "moves": zeros(), "m": zeros(), "v": zeros(), "hypergrads": zeros()}  # fmt: skip


def tower_hparams(optimizer: torch.optim.Optimizer, group: int = 0) -> dict[str, float]:
    """Every level's hyperparameters of one group, flat (for logs and plots)."""
    g = optimizer.param_groups[group]
    out = {"lr": float(g["lr"])}
    if "effective_lr" in g:  # the lr applied (below "lr" during a warm-up)
        out["effective_lr"] = float(g["effective_lr"])
    if "betas" in g:
        out["beta1"], out["beta2"] = (float(b) for b in g["betas"])
    if "momentum" in g:
        out["momentum"] = float(g["momentum"])
    for k, r in enumerate(g.get("hyper_lrs", ()), start=1):
        out[f"hyper_lr_{k}"] = float(r)
    return out


def make_tower(
    params: Iterable[Any], lr: float, *, base: str = "adam", height: int = 2, hyper_lr: float = 0.03, **kwargs: Any
) -> torch.optim.Optimizer:
    """Factory for a method registry: ``base`` whose hyperparameters a ``height``-tower learns."""
    return Tower(params, lr=lr, base=base, height=height, hyper_lr=hyper_lr, **kwargs)
