"""The LR controller: a small learned policy that scales the learning rate of any optimizer.

It wraps an existing ``torch.optim`` optimizer like a scheduler that reads the training
state. Every ``observe_every`` steps it measures the step's physics with
:class:`~metalearner.observe.physics.PhysicsTracker` (attached through the wrapped
optimizer's step hooks, on those steps only), builds the feature row of
:data:`~metalearner.lopt.policy.CONTROLLER_FEATURES` (loss trajectory, gradient norm,
weight norm, update ratio, its own current scale), and sets

.. math:: \\text{lr}_i = \\text{base\\_lr}_i \\cdot e^{3\\tanh(z/3)} \\cdot \\text{backoff}

for every param group ``i`` (``base_lr`` is each group's lr when wrapped). Untrained
(zero-head) weights give z = 0: the wrapped optimizer unchanged. Meta-training maximises a
reward of loss improvement (minimises the mean log-loss ratio of the unroll, see
:mod:`metalearner.lopt.meta_train`).

Two ways to use it::

    opt = LRController(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    ...; loss.backward(); opt.step(loss=loss)     # as an optimizer (fit() does this)

    inner.step(); controller.adapt(loss)          # as a scheduler after your own step

Only observations read device values: between them the loss is summed on the device. A
window whose losses or observed physics are not finite halves ``backoff`` (and counts its
steps in ``skipped_steps``) instead of updating the policy; the wrapped optimizer's own update
on such steps is its business, but the controller's state stays finite and the lower lr is
visible to a probe.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, Callable

import torch

from metalearner.lopt.policy import (
    CONTROLLER_FEATURES,
    PolicyConfig,
    PolicyWeights,
    lr_scale_from,
    close_window,
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


class LRController:
    """Learned lr scaling around ``optimizer`` (see the module docstring).

    Attribute access falls through to the wrapped optimizer (``param_groups``, ``state``,
    ``zero_grad``, step hooks), so probes and loops treat it as that optimizer.
    """

    takes_loss = True

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        weights: PolicyWeights | str | os.PathLike | None = "default",
        observe_every: int | None = None,
        budget: int | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"LRController wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        untrained = PolicyConfig(kind="controller", features=CONTROLLER_FEATURES, history_length=8, hidden_dim=16,
                                 embedding_dim=16, activation="tanh", observe_every=observe_every or 16)  # fmt: skip
        self.theta = resolve_weights(weights, "controller", untrained)
        self.optimizer = optimizer
        self.observe_every = int(observe_every or self.theta.config.observe_every)
        self.budget = budget
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        named = [(f"group{i}.{j}", p) for i, g in enumerate(optimizer.param_groups) for j, p in enumerate(g["params"])]
        self.tracker = PhysicsTracker(named, extended=False)
        self._physics = None
        self._hooks = [
            optimizer.register_step_pre_hook(lambda *_: self._before()),
            optimizer.register_step_post_hook(lambda *_: self._after()),
        ]
        self.ctrl_state = self._fresh()

    def _fresh(self) -> dict[str, Any]:
        cfg = self.theta.config
        return {
            "step": 0, "skipped_steps": 0, "backoff": 1.0, "lr_scale": 1.0,
            "loss_sum": torch.zeros((), dtype=torch.float64), "loss_count": 0,
            "first_loss": math.nan, "prev_loss": math.nan,
            "history": torch.zeros(cfg.history_length, cfg.n_features), "stats": new_stats(cfg.n_features),
            "embedding": None,
        }  # fmt: skip

    def __getattr__(self, name: str) -> Any:  # only called for attributes not found here
        if name == "optimizer":
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
        """Step the wrapped optimizer, then :meth:`adapt` to the loss."""
        if closure is not None and not callable(closure):
            closure, loss = None, closure
        if closure is not None:
            out = self.optimizer.step(closure)
            loss = out if loss is None else loss
        else:
            self.optimizer.step()
        if loss is None:
            raise ValueError("LRController needs the loss: call step(loss=loss) or step(closure)")
        self.adapt(loss)
        return loss

    @torch.no_grad()
    def adapt(self, loss: Any) -> None:
        """Scheduler-style: call once after each optimizer step with that step's loss."""
        s = self.ctrl_state
        physics, self._physics = self._physics, None
        s["loss_sum"] = s["loss_sum"] + torch.as_tensor(loss).detach().double()
        s["loss_count"] += 1
        s["backoff"] = min(1.0, s["backoff"] * 1.05)
        if physics is not None:  # the observation: the window's one device read
            finite, count, mean_loss, phys = close_window(s, physics)
            if not finite:
                s["skipped_steps"] += count
                s["backoff"] = max(MIN_BACKOFF, s["backoff"] * 0.5)
            else:
                fraction = min(1.0, s["step"] / self.budget) if self.budget else 0.0
                history = push_observation(s, self.theta.config, mean_loss=mean_loss, physics=phys, budget_fraction=fraction)
                s["lr_scale"], s["embedding"] = controller_step(self.theta, history)
        s["step"] += 1
        self._set_groups()

    def _set_groups(self) -> None:
        s = self.ctrl_state
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * s["lr_scale"] * s["backoff"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "controller": copy.deepcopy(self.ctrl_state)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.ctrl_state = copy.deepcopy(state_dict["controller"])

    def close(self) -> None:
        """Detach the hooks from the wrapped optimizer."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
