"""The LR controller: a small learned policy that scales the learning rate of any optimizer.

It wraps an existing ``torch.optim`` optimizer and is itself a ``torch.optim.Optimizer``
(it shares the wrapped optimizer's ``param_groups``), so torch's LR schedulers, probes and
anything checking ``isinstance(opt, Optimizer)`` accept it. Every ``observe_every`` steps it
measures the step's physics with :class:`~metalearner.observe.physics.PhysicsTracker`
(attached through the wrapped optimizer's step hooks, on those steps only), builds the
feature row of :data:`~metalearner.lopt.policy.CONTROLLER_FEATURES` (loss trajectory,
gradient norm, weight norm, update ratio, its own current scale), and from then on applies

.. math:: \\text{lr}_i = \\text{group}_i[\\text{lr}] \\cdot e^{3\\tanh(z/3)} \\cdot \\text{backoff}

at step time: for the wrapped optimizer's step each group's ``lr`` is multiplied, then put
back, so ``group["lr"]`` stays the user's (a scheduler on it composes with the learned scale)
and ``group["effective_lr"]`` records what was applied (the probe logs it). Untrained
(zero-head) weights give z = 0: the wrapped optimizer unchanged. Meta-training maximises a
reward of loss improvement (minimises the mean log-loss ratio of the unroll, see
:mod:`metalearner.lopt.meta_train`)::

    opt = LRController(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)   # composes
    ...; loss.backward(); opt.step(loss=loss); sched.step()

``step()`` without a loss steps with the current scale; the observation waits for a window
that had one. Only observations read device values: between them the loss is summed on the
device. A window whose losses or observed physics are not finite halves ``backoff`` (and
counts its steps in ``skipped_steps``) instead of updating the policy; the wrapped
optimizer's own update on such steps is its business, but the controller's state stays
finite and the lower lr is visible to a probe. The learned scale moves at most 1.5x per
observation and a window whose loss is ``spike_guard`` times its best window's (2x;
meta-training 3x) halves it (:func:`~metalearner.lopt.policy.guarded_lr_scale`, counted in
``spike_guards``). The physics cover the wrapped optimizer's parameters that require a
gradient when the controller is made; a group added later is stepped but not observed.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, Callable

import torch

from metalearner.errors import ConfigError
from metalearner.kernels import check_state_fits
from metalearner.lopt.policy import (
    CONTROLLER_FEATURES,
    SPIKE_GUARD,
    PolicyConfig,
    PolicyWeights,
    check_count,
    check_loss,
    lr_scale_from,
    optimizer_getstate,
    check_spike_guard,
    close_window,
    guarded_lr_scale,
    new_stats,
    policy_forward,
    push_observation,
    resolve_weights,
)
from metalearner.observe.physics import PhysicsTracker

MIN_BACKOFF = 2.0**-10


def controller_step(theta: PolicyWeights, history: torch.Tensor) -> tuple[float, torch.Tensor]:
    """History ``(H, F)`` -> (lr scale, embedding); pure."""
    with torch.no_grad():
        out, emb = policy_forward(theta.tensors, history, theta.config.activation)
    return lr_scale_from(out[0]), emb


# the per-parameter state that torch.optim's optimizers keep in the parameter's shape (others, such
# as Adafactor's row and column factors or LBFGS's flat buffers, are the wrapped optimizer's business)
PARAMETER_SHAPED = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "acc_delta", "sum", "prev",
                    "step_size", "grad_avg", "ax")  # fmt: skip


class LRController(torch.optim.Optimizer):
    """Learned lr scaling around ``optimizer`` (see the module docstring). Attributes it does
    not have (e.g. Schedule-Free's ``train``/``eval``) fall through to the wrapped optimizer."""

    takes_loss = True

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        weights: PolicyWeights | str | os.PathLike | None = "default",
        observe_every: int | None = None,
        spike_guard: float = SPIKE_GUARD,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"LRController wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.spike_guard = check_spike_guard(spike_guard)
        untrained = PolicyConfig(kind="controller", features=CONTROLLER_FEATURES, history_length=8, hidden_dim=16,
                                 embedding_dim=16, activation="tanh", observe_every=16 if observe_every is None else observe_every)  # fmt: skip
        self.theta = resolve_weights(weights, "controller", untrained)
        self.optimizer = optimizer
        self.observe_every = check_count("observe_every", self.theta.config.observe_every if observe_every is None else observe_every)
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.param_groups, self.state = optimizer.param_groups, optimizer.state  # shared, not copied
        named = [(f"group{i}.{j}", p) for i, g in enumerate(optimizer.param_groups) for j, p in enumerate(g["params"])]
        self.tracker = PhysicsTracker(named, extended=False)
        self._physics = None
        self._hooks = self._register_hooks()
        self.ctrl_state = self._fresh()
        self._set_groups()

    def _register_hooks(self) -> list[Any]:
        return [self.optimizer.register_step_pre_hook(self._pre_hook), self.optimizer.register_step_post_hook(self._post_hook)]

    def _pre_hook(self, *_: Any) -> None:
        self._before()

    def _post_hook(self, *_: Any) -> None:
        self._after()

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy and pickle: the copy gets its own hooks
        return optimizer_getstate(self, "_hooks")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._hooks = self._register_hooks()  # torch's copy of the wrapped optimizer comes without hooks

    def _fresh(self) -> dict[str, Any]:
        cfg = self.theta.config
        return {
            "step": 0, "skipped_steps": 0, "spike_guards": 0, "min_loss": math.inf, "backoff": 1.0, "lr_scale": 1.0,
            "loss_sum": torch.zeros((), dtype=torch.float64), "loss_count": 0,
            "first_loss": math.nan, "prev_loss": math.nan,
            "history": torch.zeros(cfg.history_length, cfg.n_features), "stats": new_stats(cfg.n_features),
            "embedding": None,
        }  # fmt: skip

    def __getattr__(self, name: str) -> Any:  # only called for attributes not found here
        if name in ("optimizer", "__setstate__") or name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def _ends(self) -> bool:
        return self.ctrl_state["step"] % self.observe_every == self.observe_every - 1

    def _before(self) -> None:
        if self._ends():
            self.tracker.before_step()

    def _after(self) -> None:
        if self._ends():
            self._physics = self.tracker.after_step()

    @property
    def embedding(self) -> torch.Tensor | None:
        return self.ctrl_state["embedding"]

    @property
    def skipped_steps(self) -> int:
        return self.ctrl_state["skipped_steps"]

    def step(self, closure: Callable[[], Any] | torch.Tensor | float | None = None, *, loss: Any = None) -> Any:
        """Step the wrapped optimizer with the learned scale applied, then observe the loss
        (``step(loss=loss)``, ``step(loss)`` or ``step(closure)``; none: no observation data)."""
        if closure is not None and not callable(closure):
            closure, loss = None, closure
        inner = None
        if closure is not None:  # before the wrapped step's hooks, so that they read this step's gradient
            with torch.enable_grad():
                out = closure()
            loss = out if loss is None else loss
            first = [out]  # an optimizer that calls the closure (LBFGS) gets this result first, then fresh ones
            inner = lambda: first.pop() if first else closure()  # noqa: E731
        loss = check_loss(loss, self)
        self._set_groups()
        users = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            group["lr"] = group["effective_lr"]
        try:
            self.optimizer.step() if inner is None else self.optimizer.step(inner)
        finally:
            for group, lr in zip(self.param_groups, users):
                group["lr"] = lr
        self._adapt(loss)
        return loss

    @torch.no_grad()
    def _adapt(self, loss: Any) -> None:
        """After each step: sum the loss; at an observation, update the learned scale."""
        s = self.ctrl_state
        physics, self._physics = self._physics, None
        if loss is not None:
            s["loss_sum"] = s["loss_sum"] + torch.as_tensor(loss).detach().double()
            s["loss_count"] += 1
        s["backoff"] = min(1.0, s["backoff"] * 1.05)
        if physics is not None:  # the observation: the window's one device read
            finite, count, mean_loss, phys = close_window(s, physics)
            if not finite:
                s["skipped_steps"] += count
                s["backoff"] = max(MIN_BACKOFF, s["backoff"] * 0.5)
            elif count:
                history = push_observation(s, self.theta.config, mean_loss=mean_loss, physics=phys, budget_fraction=0.0)
                lr_scale, s["embedding"] = controller_step(self.theta, history)
                s["lr_scale"] = guarded_lr_scale(s, lr_scale, mean_loss, self.spike_guard)  # bounded motion, spike guard
        s["step"] += 1

    def _set_groups(self) -> None:
        """Record the learning rate this step applies (``lr`` stays the user's)."""
        s = self.ctrl_state
        for group in self.param_groups:
            group["effective_lr"] = group["lr"] * s["lr_scale"] * s["backoff"]

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict (torch's ``state`` and ``param_groups``, so code that
        reads them works) with the controller's own state under ``"controller"``; around another
        controller, ``{"optimizer": its state, "controller": ...}``, so neither hides the other."""
        inner = self.optimizer.state_dict()
        mine = copy.deepcopy(self.ctrl_state)
        return {"optimizer": inner, "controller": mine} if "controller" in inner else {**inner, "controller": mine}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """This form, or the earlier ``{"optimizer": ..., "controller": ...}``."""
        cfg, sd = self.theta.config, state_dict if isinstance(state_dict, dict) else {}
        ctrl = sd.get("controller")
        inner = sd["optimizer"] if "optimizer" in sd else {k: v for k, v in sd.items() if k != "controller"}
        if not isinstance(ctrl, dict) or not torch.is_tensor(ctrl.get("history")) or not isinstance(inner, dict) or "param_groups" not in inner:
            raise ConfigError("this is not the state of an LRController (no optimizer state and 'controller' part)")
        if tuple(ctrl["history"].shape) != (cfg.history_length, cfg.n_features):
            raise ConfigError(f"this state is of an LRController with another policy (history {tuple(ctrl['history'].shape)}, "
                              f"not {(cfg.history_length, cfg.n_features)})")  # fmt: skip
        check_state_fits(self.optimizer, inner, keys=PARAMETER_SHAPED)
        self.optimizer.load_state_dict(inner)
        self.param_groups = self.optimizer.param_groups  # torch replaces the group dicts on load
        self.state = self.optimizer.state
        self.ctrl_state = copy.deepcopy(state_dict["controller"])
        self._set_groups()

    def close(self) -> None:
        """Detach the hooks from the wrapped optimizer."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
