"""The engine-trained learned optimizer as a ``torch.optim`` optimizer.

:class:`LearnedOptimizer` is a base optimizer (Schedule-Free AdamW by default, or Adam) whose
per-tensor learning-rate multipliers are set by the learned policy from per-tensor physics and
the loss trajectory, every ``observe_every`` steps, with the motion of each multiplier bounded
and a loss-spike guard. The observation is :meth:`LearnedKernel.observe
<metalearner.lopt.functional.LearnedKernel.observe>`, the kernel meta-training unrolls; the
base step is the kernel's, written per tensor with ``foreach`` ops and host scalars (as
``schedulefree`` does), so a step costs about what Schedule-Free's does, and weights trained by
the engine behave here as they did in meta-training (tested ``allclose`` against the kernel).

A window whose weights or moments go non-finite (a NaN or infinite gradient) is rolled back at
its observation to where it started (weights, moments, step count; counted in ``rollbacks``)
and every scale is halved. That snapshot costs three copies of the parameters (weights, ``z``,
``v``) besides Schedule-Free's own two, and an observation's working copy one more. ``fit`` ends a run at its first non-finite loss, so
there a NaN gradient usually ends the run before the rollback can act, as it would with Adam.
The snapshot is not part of ``state_dict``: a run resumed in the middle of a window that then
goes non-finite rolls back to where it was resumed.
A parameter without a gradient (frozen, or unused by this loss) is left as it is, as
``torch.optim`` does: its weights and moments do not move; the policy reads it as a tensor with
a zero gradient, as the kernel would. Its averaging weight's sum still counts the step, as
``schedulefree``'s group-wide sum does: a tensor unfrozen after a thousand steps then averages
as the others do, instead of taking its whole ``z`` step into the weights (ten times
Schedule-Free's first step before this was so). The bias correction counts the optimizer's
steps, not each tensor's, as ``schedulefree`` does: a tensor that gets its first gradient late
takes a larger first step than under torch's per-parameter count.

    opt = LearnedOptimizer(model.parameters())           # shipped weights, lr 2.5e-3
    for x, y in loader:
        opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward()
        opt.step(loss=loss)                               # or opt.step(); the loss feeds the policy
    opt.eval(); evaluate(model); opt.train()              # Schedule-Free: evaluate at the average

The loss-spike guard is stricter here than in meta-training: a window whose mean loss is
``spike_guard`` (2) times its best window's halves every scale (meta-training's kernel: 3x).
At 3x, a slow degradation at ten times the default lr went unnoticed (digits: validation
accuracy 9-13 points below its best; at 2x: 5-7); a user's run should err on the safe side.

torch.optim conventions: ``lr``, ``betas``, ``eps`` and ``weight_decay`` live in ``param_groups``
and are read at every step (so a user's LR scheduler composes with the learned multiplier, and
one that cycles momentum, as ``OneCycleLR`` does, cycles β₁); the multiplier
never overwrites ``group["lr"]``: the lr applied is recorded in ``group["effective_lr"]`` (the
size-weighted geometric mean over the group's tensors) and ``group["lr_scale"]``;
``state_dict`` round-trips. The only host reads happen at observations (one every
``observe_every`` steps): between them nothing synchronises with the device. Weights with a
fixed fan-in factor on the input layer (the shipped ones) read the input layer from the first
step's loss graph (the deepest weight, so a model that registers its head first is read right;
under ``torch.compile`` the first weight its one-node graph takes), else from the parameter order (:attr:`LearnedOptimizer.input_layer` says which tensor); a param
group marked ``input_layer=True`` names it instead. Once
any group carries the mark the marks decide, so groups all marked ``input_layer=False`` give no
tensor the factor (a token model, whose first tensor is an embedding: a row lookup has no fan-in).
"""

from __future__ import annotations

import math
import os
from dataclasses import fields
from typing import Any, Callable, Iterable

import torch

from metalearner.errors import ConfigError
from metalearner.lopt.functional import KernelState, LearnedKernel, ParamLayout, motion_cos, policy_tensors
from metalearner.kernels import check_dense_grads, check_state_fits
from metalearner.lopt.policy import SPIKE_GUARD, PolicyWeights, check_loss, optimizer_getstate, resolve_weights
from metalearner.methods import as_real, check_lr, check_rate, check_weight_decay

DEFAULT_LR = {"adam": 1e-3, "schedulefree": 2.5e-3}  # the bases' own defaults


def _check_betas(betas: Any, base: str) -> None:
    """A pair in ``[0, 1)`` (Schedule-Free's β₁ above 0: it divides by it), else a one-line error."""
    pair = [as_real(b) for b in betas] if isinstance(betas, (tuple, list)) else []
    if not (len(pair) == 2 and all(0 <= b < 1 for b in pair)) or pair[0] == 0 and base == "schedulefree":
        raise ConfigError(f"betas must be two numbers in [0, 1) (Schedule-Free: β₁ > 0), got {betas!r}")


def _flagged(groups: list[dict[str, Any]]) -> list[int] | None:
    """The positions (in parameter order) of the parameters of the groups marked
    ``input_layer=True`` once any group carries the mark, True or False (so marking every group
    False says there is no input layer: a token model, whose first tensor is an embedding, not a
    layer with a fan-in); None if no group does (of live groups or of a ``state_dict``'s, whose
    ``params`` are those positions)."""
    out, at = [], 0
    for g in groups:
        n = len(g["params"])
        out += range(at, at + n) if g.get("input_layer", False) else []
        at += n
    return out if any("input_layer" in g for g in groups) else None


def graph_depths(loss: torch.Tensor, params: list[torch.Tensor]) -> list[int | None]:
    """Each parameter's depth in ``loss``'s autograd graph: the most operations on a path from
    it to the loss (None where no path reaches it, or for all when ``loss`` has no graph). The
    graph's structure outlives ``backward`` (only its saved tensors are freed), so this reads a
    step's loss after its gradients were taken; the input layer is the deepest weight."""
    return _graph(loss, params)[0]


def _graph(loss: torch.Tensor, params: list[torch.Tensor]) -> tuple[list[int | None], list[tuple[int, int] | None]]:
    """:func:`graph_depths`, and where each parameter enters the graph: ``(node, position)``,
    the number of the first node (in the order the walk meets them) that takes it as an input
    and its place among that node's inputs (a compiled graph is one node whose inputs come in the
    order the forward first used them), None where the graph does not reach it."""
    root = getattr(loss, "grad_fn", None)
    if root is None:
        return [None] * len(params), [None] * len(params)
    children: dict[Any, list[Any]] = {}
    stack, parents = [root], {root: 0}
    while stack:  # every node the loss reaches, and how many edges enter each
        node = stack.pop()
        children[node] = [c for c, _ in node.next_functions if c is not None]
        for c in children[node]:
            if c not in parents:
                parents[c] = 0
                stack.append(c)
            parents[c] += 1
    depth, ready = {root: 0}, [root]
    while ready:  # Kahn's order: a node's depth is final once every edge into it was seen
        node = ready.pop()
        for c in children[node]:
            depth[c] = max(depth.get(c, 0), depth[node] + 1)
            parents[c] -= 1
            if parents[c] == 0:
                ready.append(c)
    entry: dict[int, tuple[int, int]] = {}
    for number, node in enumerate(children):
        for position, c in enumerate(children[node]):
            if hasattr(c, "variable"):
                entry.setdefault(id(c.variable), (number, position))
    at = {id(getattr(n, "variable", None)): d for n, d in depth.items() if hasattr(n, "variable")}
    return [at.get(id(p)) for p in params], [entry.get(id(p)) for p in params]


def _alike(values: list[float]) -> float | list[float]:
    """One number where every tensor's is the same (``foreach``'s scalar form is a little
    faster than its list form), else the list."""
    return values[0] if all(x == values[0] for x in values) else values


class LearnedOptimizer(torch.optim.Optimizer):
    """A base optimizer with learned per-tensor lr multipliers (see the module docstring)."""

    takes_loss = True

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | None = None,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        weights: PolicyWeights | str | os.PathLike | None = "default",
        base: str | None = None,
        spike_guard: float = SPIKE_GUARD,
    ) -> None:
        self.theta = resolve_weights(weights, "learned", LearnedKernel.policy_config())
        base = base or self.theta.metadata.get("base", "schedulefree")
        _check_betas(betas, base)
        check_rate("eps", eps)
        self.kernel = LearnedKernel(self.theta.config, base=base, betas=tuple(betas), eps=eps, spike_guard=spike_guard,
                                    scales=self.theta.metadata.get("scales", "per_tensor"),
                                    fan_in_power=self.theta.fan_in_power(), fan_in_scope=self.theta.fan_in_scope())  # fmt: skip
        lr = check_lr(DEFAULT_LR[base] if lr is None else lr)
        check_weight_decay(weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      effective_lr=lr, lr_scale=1.0))  # fmt: skip
        self._params = [p for g in self.param_groups for p in g["params"]]
        kinds = {(p.dtype, p.device) for p in self._params}
        if len(kinds) > 1:  # the per-tensor policy state is one tensor, in one dtype on one device
            raise ConfigError(f"LearnedOptimizer needs its parameters in one dtype on one device, got {sorted(map(str, kinds))}")
        self.layout = ParamLayout(tuple(str(i) for i in range(len(self._params))), tuple(tuple(p.shape) for p in self._params))
        self._inputs = _flagged(self.param_groups)  # the groups marked input_layer=True, if any group is marked
        self._graph_input: list[int] | None = None  # else the input layer read from the first step's loss graph
        self._set_fan_in()
        self._set_lr_scales(torch.zeros(len(self._params), dtype=torch.float64))  # the fan-in factors, before any observation
        self._set_groups()
        self.kstate: KernelState | None = None  # created on the first step, on the parameters' device
        self.counters = {"steps": 0, "since_observation": 0, "window_losses": 0, "observations": 0, "spike_guards": 0,
                         "rollbacks": 0}  # fmt: skip
        self.train_mode = True

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy and pickle keep the policy and its buffers
        return optimizer_getstate(self)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "layout"):  # the per-tensor state is laid out once, at construction
            raise ConfigError("LearnedOptimizer takes all its parameters at construction; make a new one to add a group")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_lr(group["lr"], zero_ok=True)
        check_weight_decay(group["weight_decay"])
        _check_betas(group["betas"], self.kernel.base)
        check_rate("eps", group["eps"])
        if not isinstance(group.get("input_layer", False), bool):
            raise ConfigError(f"a param group's input_layer must be True or False, got {group['input_layer']!r}")

    @property
    def base(self) -> str:
        return self.kernel.base

    @property
    def input_layer(self) -> list[torch.Tensor]:
        """The parameters read as the network's input layer, which the weights' fixed fan-in
        factor scales when its scope is ``"input"`` (the shipped weights'): the tensors of two or
        more dimensions of the groups marked ``input_layer=True`` (none if the groups are marked
        but none True), or with no group marked the deepest weight of the first step's loss graph
        where it is deeper than :meth:`ParamLayout.input_tensors <metalearner.lopt.functional.ParamLayout.input_tensors>`'
        guess, the first tensor in parameter order that is not a ``(1, …)`` token (that guess
        before the first step, or when the loss came as a number)."""
        return [self._params[j] for j in self.layout.input_tensors(self._input_positions())]

    @property
    def spike_guards(self) -> int:
        """How many times the loss-spike guard halved the learning rates (as of the last observation)."""
        return self.counters["spike_guards"]

    @property
    def rollbacks(self) -> int:
        """Windows rolled back because the weights went non-finite."""
        return self.counters["rollbacks"]

    def lr_scales(self) -> torch.Tensor:
        """``(n_tensors,)`` the learned multiplier of each parameter tensor now (reads the device)."""
        if self.kstate is None:
            return torch.ones(len(self._params))
        return self.kernel.lr_scale(self.kstate)[0].detach().cpu()

    # -- stepping ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | torch.Tensor | float | None = None, *, loss: Any = None) -> Any:
        """One step of every parameter (``step(loss=loss)``, ``step(loss)`` or ``step(closure)``;
        without a loss the step is taken and the observation waits for a step that has one)."""
        if closure is not None and not callable(closure):
            closure, loss = None, closure
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        loss = check_loss(loss, self)
        if not self.train_mode:
            raise ConfigError("the optimizer is in eval mode: call optimizer.train() before optimizer.step()")
        self._check_groups()
        params = self._params
        check_dense_grads(params, "LearnedOptimizer")
        if self.kstate is None:
            if self.counters["steps"] == 0:
                self._read_input_layer(loss)
            self._start()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        stepped = None if all(p.grad is not None for p in params) else [i for i, p in enumerate(params) if p.grad is not None]
        c, k = self.counters, self.kstate
        c["steps"] += 1
        c["since_observation"] += 1
        if self._snapshot_due:
            self._take_snapshot()
        if loss is not None:  # a tensor is added on its device, a number as a number: no host read
            k.loss_sum.add_(loss.reshape(1).to(k.loss_sum.dtype) if torch.is_tensor(loss) else float(loss))
            c["window_losses"] += 1  # the window's count, given to the kernel at the observation
        if not (c["since_observation"] >= self.kernel.observe_every and c["window_losses"] > 0):
            self._base_step(params, grads, stepped)
            self._set_groups()
            return loss
        grad_norm, motion = self._before_step(params, grads)
        old = self._scratch
        torch._foreach_copy_(old, params)
        self._base_step(params, grads, stepped)
        self._set_groups()  # the lr this step applied; the observation's scales are the next step's
        torch._foreach_sub_(old, params)  # minus this step's update: the same norm
        J = len(params)
        after = torch.stack(torch._foreach_norm([*old, *params, *self._v]))  # one pass: update, weight, second-moment norms
        if not bool(after[J:].sum().isfinite()):  # weights or moments went non-finite
            self._roll_back()
            k.loss_sum.fill_(math.nan)  # the kernel's guard then halves every scale
        k.loss_n.fill_(c["window_losses"])
        squares = grad_norm.square()[None], after[:J].square()[None], after[J : 2 * J].square()[None]
        self.kstate = self.kernel.observe(self._theta, k, *squares, motion, self._log10_fan_in)
        c.update(since_observation=0, window_losses=0, observations=c["observations"] + 1)
        self._read_scales()
        self._snapshot_due = True  # taken at the start of the next step
        return loss

    def _before_step(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """An observation's reads before its step: each gradient's norm ``(J,)`` and, if the
        policy reads it, the ``motion_cos`` feature ``(1, J)`` as the kernel computes it."""
        if not self.kernel.reads_motion:
            return torch.stack(torch._foreach_norm(grads)), None
        if self.base == "adam":
            denom = torch._foreach_add(torch._foreach_sqrt(self._v), [g["eps"] for g in self._groups])
            motion = torch._foreach_div(self._moments, denom)
            torch._foreach_neg_(motion)
        else:  # z − y in the scratch buffers (no fresh allocation on the hot path)
            motion = self._scratch
            for out, z, p in zip(motion, self._moments, params):
                torch.sub(z, p, out=out)
        norms = torch.stack(torch._foreach_norm([*grads, *motion]))  # one pass for both
        grad_norm, motion_norm = norms[: len(grads)], norms[len(grads) :]
        dots = torch.stack([torch.dot(d.reshape(-1), g.reshape(-1)) for d, g in zip(motion, grads)])  # g·d, read once
        return grad_norm, motion_cos(dots, grad_norm.square(), motion_norm.square())[None]

    def _base_step(self, params: list[torch.Tensor], grads: list[torch.Tensor], only: list[int] | None = None) -> None:
        """The kernel's base step (see :meth:`LearnedKernel.update`) per tensor with ``foreach``
        ops, in place, its per-tensor scalars on the host (they change only at observations and
        with the group's lr): the update ``g / (√v̂ + ε)`` is never materialised. ``only``: the
        indices of the tensors to step (those with a gradient), if not all."""
        if only is not None and not only:
            return
        h = self.host
        h["count"] += 1
        t = h["count"]
        groups, moments, v = self._groups, self._moments, self._v
        scales, fan_in = h["scales"], self._fan_in_host
        lrs = [float(g["lr"]) * s * f for g, s, f in zip(groups, scales, fan_in)]  # a tensor lr too (torch.optim allows it)
        if self.base == "schedulefree":  # every tensor's averaging weight counts the step, stepped or not (module docstring)
            h["weight_sum"] = [w + lr * lr for w, lr in zip(h["weight_sum"], lrs)]
        weight_sum = h["weight_sum"]
        if only is not None:
            params, grads, groups, moments, v, lrs, weight_sum = (
                [x[i] for i in only] for x in (params, grads, groups, moments, v, lrs, weight_sum))
        b1 = [float(g["betas"][0]) for g in groups]  # read at every step, as the lr: a scheduler may cycle β₁
        b2 = [float(g["betas"][1]) for g in groups]
        decay = [g["weight_decay"] for g in groups]
        if self.base == "adam" and any(decay):  # Adam's L2 form: added to the gradient
            grads = torch._foreach_add(grads, torch._foreach_mul(params, decay))
        torch._foreach_mul_(v, _alike(b2))
        torch._foreach_addcmul_(v, grads, grads, _alike([1 - b for b in b2]))
        # g / (√(v / (1 − β₂ᵗ)) + ε) = r g / (√v + r ε) with r = √(1 − β₂ᵗ): the bias correction
        # folded into ε and the step sizes saves a pass over the moments; r ε at least the dtype's
        # smallest positive number, so that it never rounds to 0 (float16: 0/0 where a gradient entry is 0)
        root = [math.sqrt(1 - b**t) for b in b2]
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, _alike([max(float(g["eps"]) * r, self._least) for g, r in zip(groups, root)]))
        if self.base == "adam":
            torch._foreach_lerp_(moments, grads, _alike([1 - b for b in b1]))
            torch._foreach_addcdiv_(params, moments, denom, [-lr * r / (1 - b**t) for lr, r, b in zip(lrs, root, b1)])
            return
        c = [lr * lr / w if w > 0 else 0.0 for lr, w in zip(lrs, weight_sum)]  # the averaging weight follows the controlled lr
        coef = [lr * (b * (1 - ci) - 1) for lr, ci, b in zip(lrs, c, b1)]
        neg_lrs = [-lr for lr in lrs]
        decayed = torch._foreach_mul(params, decay) if any(decay) else None  # Schedule-Free's form: λ y in the update
        torch._foreach_lerp_(params, moments, c)
        torch._foreach_addcdiv_(params, grads, denom, [x * r for x, r in zip(coef, root)])
        torch._foreach_addcdiv_(moments, grads, denom, [x * r for x, r in zip(neg_lrs, root)])
        if decayed is not None:
            torch._foreach_add_(params, torch._foreach_mul(decayed, coef))
            torch._foreach_add_(moments, torch._foreach_mul(decayed, neg_lrs))

    def _set_fan_in(self) -> None:
        """The fixed per-tensor lr factors of the input layer that the marks, the graph or the
        parameter order name (``(J,)``, and as the host floats each step multiplies by)."""
        self._fan_in = self.kernel.fan_in_factors(self.layout, self._input_positions())
        self._fan_in_host = self._fan_in.tolist()

    def _input_positions(self) -> list[int] | None:
        return self._inputs if self._inputs is not None else self._graph_input

    def _read_input_layer(self, loss: Any) -> None:
        """On the first step, unless the groups are marked: the input layer is the deepest
        weight of the loss's graph (so a model that registers its head first is read right), not
        the first in parameter order; where the deepest are all inputs of one node (a model under
        ``torch.compile``, whose graph, or each piece of it between graph breaks, is one node
        taking its weights in the order the forward first used them; ``weight_norm``'s direction
        and norm), the first it takes; nothing changes without a graph (a loss given as a
        number, or detached), where the order's guess is as deep otherwise, or where the graph
        does not reach the guess (a checkpointed block hides its tensors)."""
        if self._inputs is not None or not (self.kernel.fan_in_power and self.kernel.fan_in_scope == "input"):
            return
        depths, entries = _graph(loss, self._params)
        guess = self.layout.input_tensors()
        candidates = [j for j in self.layout.layers() if depths[j] is not None]
        if not guess or not candidates or depths[guess[0]] is None:  # the guess out of sight (reentrant checkpointing): keep it
            return
        top = max(depths[j] for j in candidates)
        tied = [j for j in candidates if depths[j] == top]
        if len(tied) > 1 and len({entries[j][0] for j in tied}) == 1:  # inputs of one node (torch.compile's): the first it takes
            deepest = min(tied, key=lambda j: entries[j][1])
        else:
            deepest = tied[0]  # the first of the deepest in parameter order
        if deepest != guess[0] and depths[deepest] >= depths[guess[0]]:
            self._graph_input = [deepest]
            self._set_fan_in()
            self._set_lr_scales(torch.zeros(len(self._params), dtype=torch.float64))

    def _start(self) -> None:
        """The state on the first step, on the parameters' device: the kernel's per-tensor
        policy state (its flat moment buffers stay empty: the moments live per tensor in
        ``self.state``, the step count and averaging weights on the host)."""
        first = self._params[0]
        kw = dict(dtype=first.dtype, device=first.device)
        self.kstate = self.kernel.init_state(1, ParamLayout(self.layout.names, ((0,),) * len(self._params)), **kw)
        self._set_policy(**kw)
        self.host = {"count": 0, "weight_sum": [0.0] * len(self._params), "scales": [1.0] * len(self._params)}
        for p in self._params:
            self.state[p] = {self._moment: p.detach().clone() if self.base == "schedulefree" else torch.zeros_like(p),
                             "exp_avg_sq": torch.zeros_like(p)}  # fmt: skip
        self._scratch = [torch.empty_like(p) for p in self._params]  # an observation's working copy
        self._snapshot_due = True
        self._bind()

    def _set_policy(self, **kw: Any) -> None:
        """The policy's weights and the fan-in feature on the parameters' device, made once
        (an observation reads them as they are), and the dtype's smallest positive number."""
        info = torch.finfo(kw["dtype"])
        self._least = info.tiny * info.eps  # the smallest subnormal
        self._theta = policy_tensors(self.theta.config, self.theta.flat().to(**kw)[None])
        self._log10_fan_in = self.layout.log10_fan_in().to(**kw) if self.kernel.reads_fan_in else None

    @property
    def _moment(self) -> str:
        return "z" if self.base == "schedulefree" else "exp_avg"

    def _bind(self) -> None:
        """Per-tensor lists the steps read (each tensor's group, first and second moments),
        made once the state exists and again when a state dict replaces it, not on every step."""
        self._groups = [g for g in self.param_groups for _ in g["params"]]
        self._moments = [self.state[p][self._moment] for p in self._params]
        self._v = [self.state[p]["exp_avg_sq"] for p in self._params]

    def _buffers(self) -> list[torch.Tensor]:
        return [*self._params, *self._moments, *self._v]

    def _take_snapshot(self) -> None:
        """Where a window that goes non-finite returns to: weights, moments, host scalars."""
        buffers = self._buffers()
        if getattr(self, "_snapshot", None) is None or len(self._snapshot) != len(buffers):
            self._snapshot = [t.clone() for t in buffers]
        else:
            torch._foreach_copy_(self._snapshot, buffers)
        self._snapshot_due = False
        self._snapshot_host = {"count": self.host["count"], "weight_sum": list(self.host["weight_sum"])}

    def _roll_back(self) -> None:
        torch._foreach_copy_(self._buffers(), self._snapshot)
        self.host.update(count=self._snapshot_host["count"], weight_sum=list(self._snapshot_host["weight_sum"]))
        self.counters["rollbacks"] += 1

    def _read_scales(self) -> None:
        """The host read of an observation: each tensor's scale, and each group's size-weighted
        mean of what multiplies its lr (``lr_scale``, the fan-in factors included;
        ``effective_lr`` = ``lr`` x ``lr_scale``)."""
        log_scale = self.kstate.log_scale[0].detach().double().cpu()
        self.host["scales"] = log_scale.exp().tolist()
        self.counters["spike_guards"] = int(self.kstate.spikes[0])
        self._set_lr_scales(log_scale)

    def _set_lr_scales(self, log_scale: torch.Tensor) -> None:
        """Each group's ``lr_scale`` from the next step on (:meth:`_set_groups` records it): the
        size-weighted geometric mean of its tensors' learned multipliers (``log_scale``, ``(J,)``)
        times their fan-in factors."""
        logs = [a + math.log(f) for a, f in zip(log_scale.tolist(), self._fan_in_host)]
        self._lr_scales, i = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            sizes = self.layout.sizes[i : i + n]
            weights = sizes if sum(sizes) else [1] * n  # a group of empty tensors: their plain mean
            self._lr_scales.append(math.exp(sum(a * w for a, w in zip(logs[i : i + n], weights)) / sum(weights)) if n else 1.0)
            i += n

    def _set_groups(self) -> None:
        """Record in each group the lr its tensors step with (after a step: the one it applied)."""
        for group, lr_scale in zip(self.param_groups, self._lr_scales):
            group["lr_scale"] = lr_scale
            group["effective_lr"] = float(group["lr"]) * lr_scale

    # -- Schedule-Free's train/eval modes ------------------------------------------------------

    def _check_groups(self) -> None:
        """The groups' betas as a scheduler (or a user) may have set them since, checked before
        anything moves: Schedule-Free divides by β₁."""
        for group in self.param_groups:
            _check_betas(group["betas"], self.base)

    @torch.no_grad()
    def _swap(self, weight: Callable[[float], float]) -> None:
        """Lerp each tensor towards its ``z`` by ``weight(β₁)`` of its group."""
        if self.base != "schedulefree" or self.kstate is None or self.host["count"] == 0:
            return
        self._check_groups()
        torch._foreach_lerp_(self._params, self._moments, [weight(float(g["betas"][0])) for g in self._groups])

    def eval(self) -> None:
        """Put the averaged weights ``x`` into the parameters (Schedule-Free; Adam: nothing to do)."""
        if self.train_mode:
            self._swap(lambda b1: 1 - 1 / b1)
            self.train_mode = False

    def train(self) -> None:
        """Back to the weights gradients are taken at (``y``), before the next ``step``."""
        if not self.train_mode:
            self._swap(lambda b1: 1 - b1)
            self.train_mode = True

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["learned"] = {
            "base": self.base, "scales": self.kernel.scales, "fan_in_power": self.kernel.fan_in_power, "fan_in_scope": self.kernel.fan_in_scope, "counters": dict(self.counters), "train_mode": self.train_mode,
            "graph_input": self._graph_input,
            "host": None if self.kstate is None else {"count": self.host["count"], "weight_sum": list(self.host["weight_sum"])},
            "kernel": None if self.kstate is None else {f.name: getattr(self.kstate, f.name).clone() for f in fields(self.kstate)},
        }  # fmt: skip
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        learned = state_dict.get("learned", {})
        if "host" not in learned:
            raise ConfigError("this is not the state of this version's LearnedOptimizer (no 'learned' part with 'host')")
        if learned["base"] != self.base:
            raise ConfigError(f"this state is of a {learned['base']!r}-based learned optimizer, not {self.base!r}")
        scales, power = learned.get("scales", "per_tensor"), learned.get("fan_in_power", 0.0)  # states saved before either existed
        if scales != self.kernel.scales:
            raise ConfigError(f"this state is of a learned optimizer with {scales!r} lr multipliers, not {self.kernel.scales!r}")
        if power != self.kernel.fan_in_power:
            raise ConfigError(f"this state is of a learned optimizer with fan_in_power {power}, not {self.kernel.fan_in_power}")
        if power and (scope := learned.get("fan_in_scope", "all")) != self.kernel.fan_in_scope:
            raise ConfigError(f"this state is of a learned optimizer with fan_in_scope {scope!r}, not {self.kernel.fan_in_scope!r}")
        check_state_fits(self, state_dict)
        if _flagged(state_dict["param_groups"]) != self._inputs:
            raise ConfigError("this state's param groups mark another input layer (input_layer=True) than this optimizer's")
        super().load_state_dict({"state": state_dict["state"], "param_groups": state_dict["param_groups"]})
        for group in self.param_groups:  # a state saved before betas and eps were in the groups ran with the constructor's
            group.setdefault("betas", self.defaults["betas"])
            group.setdefault("eps", self.defaults["eps"])
        self._params = [p for g in self.param_groups for p in g["params"]]
        for p in self._params:  # torch keeps the loaded tensors themselves: our moments are updated in place
            self.state[p] = {name: t.clone() for name, t in self.state[p].items()}
        self.counters, self.train_mode = dict(learned["counters"]), learned["train_mode"]
        graph_input = learned.get("graph_input")  # states saved before the graph was read: the order's guess
        if graph_input is not None and not (isinstance(graph_input, list) and len(graph_input) == 1 and graph_input[0] in range(len(self._params))):
            raise ConfigError(f"this state's graph_input {graph_input!r} is not one of this optimizer's {len(self._params)} tensors")
        self._graph_input = None if graph_input is None else [int(graph_input[0])]
        self._set_fan_in()
        if learned["kernel"] is None:  # saved before its first step: back to the multipliers of a new optimizer
            self.kstate = None
            self._set_lr_scales(torch.zeros(len(self._params), dtype=torch.float64))
        else:
            first = self._params[0]
            self.kstate = KernelState(**{k: v.to(first.device).clone() for k, v in learned["kernel"].items()})
            self._set_policy(device=first.device, dtype=first.dtype)
            self.host = {**learned["host"], "weight_sum": list(learned["host"]["weight_sum"]), "scales": [1.0] * len(self._params)}
            self._read_scales()
            self._snapshot, self._snapshot_due = None, True  # taken at the next step, in train mode, on the loaded weights
            self._scratch = [torch.empty_like(p) for p in self._params]
            self._bind()
        self._set_groups()


__all__ = ["DEFAULT_LR", "SPIKE_GUARD", "LearnedOptimizer"]
