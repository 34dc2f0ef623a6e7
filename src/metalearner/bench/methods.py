"""The method registry: every optimizer the benchmark compares, with its defaults and tuning grid.

Adding a method is one entry in :data:`METHODS`: a factory ``(params, lr, total_steps) ->
(optimizer, per-step scheduler or None)``, the learning rate its authors ship as the default
(the *self-tuning* ruleset uses it untouched), and whether it needs to know the budget.
Baselines come from their maintained packages through :func:`~metalearner.train.make_optimizer`,
used as their authors intend (Schedule-Free's train/eval switching happens in ``fit``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from metalearner.errors import ConfigError
from metalearner.train.optimizers import make_optimizer, make_schedule

Factory = Callable[[Iterable[torch.nn.Parameter], float, int], tuple[Any, Any]]
GRID = (1 / 3, 1.0, 3.0)  # the external-tuning trials: multipliers of the default lr, the same budget for every method


@dataclass(frozen=True)
class Method:
    """One benchmarked optimizer.

    ``budget_aware`` methods (a schedule or a policy that reads the budget) are run at each
    budget of the protocol and scored by the smallest budget whose run reaches the target.
    ``weights`` names the shipped pretrained weights a learned optimizer (ours) runs with.
    """

    name: str
    label: str
    factory: Factory
    default_lr: float
    budget_aware: bool = False
    weights: str | None = None
    grid: tuple[float, ...] = GRID

    @property
    def ours(self) -> bool:
        return self.weights is not None

    def weights_fingerprint(self) -> str | None:
        """What a job's result depends on beyond its code: the shipped weights' fingerprint."""
        return None if self.weights is None else _fingerprint(self.weights)

    def build(self, params: Iterable[torch.nn.Parameter], lr: float | None = None, total_steps: int = 1) -> tuple[Any, Any]:
        """The optimizer and its scheduler (or None) for a run of ``total_steps`` steps."""
        return self.factory(params, self.default_lr if lr is None else lr, int(total_steps))

    def tuning_lrs(self) -> list[float]:
        return [self.default_lr * m for m in self.grid]


@functools.cache
def _fingerprint(kind: str) -> str:
    from metalearner.lopt.policy import default_weights

    return default_weights(kind).fingerprint()


def _plain(name: str) -> Factory:
    return lambda p, lr, total: (make_optimizer(name, p, lr=lr), None)


def _adamw_cosine(p: Iterable[torch.nn.Parameter], lr: float, total: int) -> tuple[Any, Any]:
    opt = make_optimizer("adamw", p, lr=lr)  # weight decay 0.01, PyTorch's AdamW default
    return opt, make_schedule("cosine", opt, total)


def _opt2vec(p: Iterable[torch.nn.Parameter], lr: float, total: int) -> tuple[Any, Any]:
    from metalearner.lopt import Opt2Vec

    return Opt2Vec(p, base_lr=lr, budget=total), None


def _controller(p: Iterable[torch.nn.Parameter], lr: float, total: int) -> tuple[Any, Any]:
    from metalearner.lopt import LRController

    return LRController(torch.optim.Adam(p, lr=lr), budget=total), None


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("adam", "Adam (constant lr)", _plain("adam"), 1e-3),
    Method("adamw_cosine", "AdamW + cosine", _adamw_cosine, 1e-3, budget_aware=True),
    Method("schedulefree_adamw", "Schedule-Free AdamW", _plain("schedulefree_adamw"), 2.5e-3),
    Method("prodigy", "Prodigy", _plain("prodigy"), 1.0),
    Method("dadapt_adam", "D-Adaptation Adam", _plain("dadapt_adam"), 1.0),
    Method("opt2vec", "Opt2Vec (ours, frozen)", _opt2vec, 1e-3, budget_aware=True, weights="opt2vec"),
    Method("controller", "Adam + LR controller (ours, frozen)", _controller, 1e-3, weights="controller"),
)}  # fmt: skip


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]
