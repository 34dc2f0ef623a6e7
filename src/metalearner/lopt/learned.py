"""The engine-trained learned optimizer as a ``torch.optim`` optimizer.

:class:`LearnedOptimizer` runs :class:`~metalearner.lopt.functional.LearnedKernel`, the same
batched kernel that meta-training unrolls, with one member: weights trained by the engine
behave here exactly as they did in meta-training (tested ``allclose``). It is a base optimizer
(Schedule-Free AdamW by default, or Adam) whose per-tensor learning-rate multipliers are set
by the learned policy from per-tensor physics and the loss trajectory, every
``observe_every`` steps, with the motion of each multiplier bounded and a loss-spike guard
(see :mod:`~metalearner.lopt.functional`). A step whose gradient is not finite is skipped
(weights and moments unchanged; counted in ``skipped_steps``), decided on the device.

    opt = LearnedOptimizer(model.parameters())           # shipped weights, lr 2.5e-3
    for x, y in loader:
        opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward()
        opt.step(loss=loss)                               # or opt.step(); the loss feeds the policy
    opt.eval(); evaluate(model); opt.train()              # Schedule-Free: evaluate at the average

torch.optim conventions: ``lr`` and ``weight_decay`` live in ``param_groups`` and are read at
every step (so a user's LR scheduler composes with the learned multiplier); the multiplier
never overwrites ``group["lr"]``: the lr applied is recorded in ``group["effective_lr"]`` (the
size-weighted geometric mean over the group's tensors) and ``group["lr_scale"]``;
``state_dict`` round-trips. The only host reads happen at observations (one every
``observe_every`` steps): between them nothing synchronises with the device.
"""

from __future__ import annotations

import math
import os
from dataclasses import fields, replace
from typing import Any, Callable, Iterable

import torch

from metalearner.errors import ConfigError
from metalearner.lopt.functional import KernelState, LearnedKernel, ParamLayout
from metalearner.lopt.policy import PolicyWeights, resolve_weights
from metalearner.methods import check_lr

DEFAULT_LR = {"adam": 1e-3, "schedulefree": 2.5e-3}  # the bases' own defaults


class LearnedOptimizer(torch.optim.Optimizer):
    """A base optimizer with learned per-tensor lr multipliers (see the module docstring)."""

    takes_loss = True

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | None = None,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        weights: PolicyWeights | str | os.PathLike | None = "default",
        base: str | None = None,
    ) -> None:
        self.theta = resolve_weights(weights, "learned", LearnedKernel.policy_config())
        base = base or self.theta.metadata.get("base", "schedulefree")
        if not all(0 <= b < 1 for b in betas) or betas[0] == 0 and base == "schedulefree":
            raise ConfigError(f"betas must lie in [0, 1) (Schedule-Free: β₁ > 0), got {betas}")
        self.kernel = LearnedKernel(self.theta.config, base=base, betas=tuple(betas))
        lr = check_lr(DEFAULT_LR[base] if lr is None else lr)
        if weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, effective_lr=lr, lr_scale=1.0))
        self._params = [p for g in self.param_groups for p in g["params"]]
        self.layout = ParamLayout(tuple(str(i) for i in range(len(self._params))), tuple(tuple(p.shape) for p in self._params))
        self.kstate: KernelState | None = None  # created on the first step, on the parameters' device
        self.counters = {"steps": 0, "since_observation": 0, "window_losses": 0, "observations": 0, "spike_guards": 0,
                         "skipped_steps": 0}  # fmt: skip
        self.train_mode = True

    @property
    def base(self) -> str:
        return self.kernel.base

    @property
    def spike_guards(self) -> int:
        """How many times the loss-spike guard halved the learning rates (as of the last observation)."""
        return self.counters["spike_guards"]

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because their gradient was not finite (as of the last observation)."""
        return self.counters["skipped_steps"]

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
        if not self.train_mode:
            raise ConfigError("the optimizer is in eval mode: call optimizer.train() before optimizer.step()")
        params = self._params
        first = params[0]
        if self.kstate is None:
            self.kstate = self.kernel.init_state(1, self.layout, dtype=first.dtype, device=first.device)
            self._theta = self.theta.flat().to(device=first.device, dtype=first.dtype)[None]
            self._skipped = torch.zeros((), dtype=torch.int32, device=first.device)
        flat_p = torch.cat([p.reshape(1, -1) for p in params], dim=1)
        flat_g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(1, -1) for p in params], dim=1)
        per_tensor = [(g["lr"], g["weight_decay"]) for g in self.param_groups for _ in g["params"]]
        base_lr = torch.tensor([[lr for lr, _ in per_tensor]], dtype=first.dtype).to(first.device, non_blocking=True)
        decay: float | torch.Tensor = 0.0
        if any(wd for _, wd in per_tensor):
            decay = torch.tensor([[wd for _, wd in per_tensor]], dtype=first.dtype).to(first.device, non_blocking=True)
        c = self.counters
        c["steps"] += 1
        c["since_observation"] += 1
        loss_t = None
        if loss is not None:
            loss_t = torch.as_tensor(loss).detach().to(device=first.device, dtype=first.dtype).reshape(1)
            c["window_losses"] += 1
        observe = c["since_observation"] >= self.kernel.observe_every and c["window_losses"] > 0
        old = self.kstate
        new, kstate = self.kernel.update(self._theta, old, self.layout, flat_p, flat_g, loss_t, base_lr,
                                         observe=observe, weight_decay=decay)  # fmt: skip
        # a non-finite gradient skips the step (weights and moments unchanged) without reading the device
        ok = torch.isfinite(flat_g.sum())
        new = torch.where(ok, new, flat_p)
        keep = {"loss_sum", "loss_n", "history", "feat_mean", "feat_sq", "n_obs", "first_loss", "prev_loss", "min_loss",
                "ema_loss", "spikes", "log_scale"}  # the observation's own bookkeeping stands  # fmt: skip
        self.kstate = replace(kstate, **{f.name: torch.where(ok, getattr(kstate, f.name), getattr(old, f.name))
                                         for f in fields(kstate) if f.name not in keep})  # fmt: skip
        self._skipped = self._skipped + (~ok).to(torch.int32)
        torch._foreach_copy_(params, [t.view_as(p) for t, p in zip(new[0].split(self.layout.sizes), params)])
        if observe:
            c.update(since_observation=0, window_losses=0, observations=c["observations"] + 1)
            self._read_scales()
        self._set_groups()
        return loss

    def _read_scales(self) -> None:
        """The one host read of an observation: each group's size-weighted mean log scale."""
        log_scale = self.kstate.log_scale[0].detach().cpu()
        self.counters["spike_guards"] = int(self.kstate.spikes[0])
        self.counters["skipped_steps"] = int(self._skipped)
        i = 0
        for group in self.param_groups:
            n = len(group["params"])
            sizes = torch.tensor(self.layout.sizes[i : i + n], dtype=torch.float64)
            group["lr_scale"] = float(math.exp(float((log_scale[i : i + n].double() * sizes).sum() / sizes.sum()))) if n else 1.0
            i += n

    def _set_groups(self) -> None:
        for group in self.param_groups:
            group["effective_lr"] = group["lr"] * group["lr_scale"]

    # -- Schedule-Free's train/eval modes ------------------------------------------------------

    @torch.no_grad()
    def _swap(self, weight: float) -> None:
        if self.base != "schedulefree" or self.kstate is None or int(self.kstate.count[0]) == 0:
            return
        z = self.kstate.m[0].split(self.layout.sizes)
        torch._foreach_lerp_(self._params, [t.view_as(p) for t, p in zip(z, self._params)], weight)

    def eval(self) -> None:
        """Put the averaged weights ``x`` into the parameters (Schedule-Free; Adam: nothing to do)."""
        if self.train_mode:
            self._swap(1 - 1 / self.kernel.betas[0])
            self.train_mode = False

    def train(self) -> None:
        """Back to the weights gradients are taken at (``y``), before the next ``step``."""
        if not self.train_mode:
            self._swap(1 - self.kernel.betas[0])
            self.train_mode = True

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["learned"] = {
            "base": self.base, "counters": dict(self.counters), "train_mode": self.train_mode,
            "skipped": None if self.kstate is None else self._skipped.clone(),
            "kernel": None if self.kstate is None else {f.name: getattr(self.kstate, f.name).clone() for f in fields(self.kstate)},
        }  # fmt: skip
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        learned = state_dict["learned"]
        if learned["base"] != self.base:
            raise ConfigError(f"this state is of a {learned['base']!r}-based learned optimizer, not {self.base!r}")
        super().load_state_dict({"state": state_dict["state"], "param_groups": state_dict["param_groups"]})
        self._params = [p for g in self.param_groups for p in g["params"]]
        self.counters, self.train_mode = dict(learned["counters"]), learned["train_mode"]
        if learned["kernel"] is None:
            self.kstate = None
        else:
            first = self._params[0]
            self.kstate = KernelState(**{k: v.to(first.device).clone() for k, v in learned["kernel"].items()})
            self._theta = self.theta.flat().to(device=first.device, dtype=first.dtype)[None]
            self._skipped = learned["skipped"].to(first.device).clone()
        self._set_groups()


__all__ = ["DEFAULT_LR", "LearnedOptimizer"]
