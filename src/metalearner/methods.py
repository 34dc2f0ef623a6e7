"""The one registry of named training methods: every optimizer (and schedule) metalearner can train with.

``metalearner train --optimizer NAME``, :class:`~metalearner.train.RunConfig`, zoo specs, the
benchmark, the model card and the tests all read :data:`METHODS`. A method is an optimizer
with its default hyperparameters, the schedule that belongs to it (if any), whether it needs
the step budget, its tuning grid, and whether it is ours (a learned optimizer, with the
shipped weights it runs with). Adding a method is one entry::

    Method("lion", "Lion", _lazy("lion_pytorch", "Lion"), default_lr=1e-4, momentum=0.9)

The LR controller wraps any base method: ``NAME+controller`` (for example
``sgd+controller``) is Adam's or SGD's own update with the learned learning-rate multiplier
on top; ``adam+controller`` is the benchmarked entry. ``learned_sf`` is Schedule-Free AdamW with
per-tensor lr multipliers set by a policy meta-trained with the batched engine
(:mod:`metalearner.lopt.learned`). ``hyper_sgd``, ``hyper_momentum`` and
``hyper_adam`` are hyperoptimizer towers (:mod:`metalearner.meta.towers`): the base's learning
rate learned online by gradient descent, itself tuned by one more level, after the towers'
300-step warm-up (a run of fewer steps never applies the learned lr in full; a ``--schedule``
sets ``lr`` each step, which a tower takes as a new start), each tensor's step held to a
fraction of its weights' norm (``max_update_ratio``). Baselines come from their maintained
packages (``schedulefree``, ``prodigyopt``, ``dadaptation``: ``pip install
'metalearner[baselines]'``), used as their authors intend (Schedule-Free's train/eval
switching happens in ``fit``).

    opt, scheduler = get_method("adamw").build(model.parameters(), lr=1e-3, total_steps=1000)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

import torch

from metalearner.errors import ConfigError

Params = Iterable[torch.nn.Parameter]
# make(params, lr=, momentum=, weight_decay=, budget=, **options) -> optimizer
Factory = Callable[..., torch.optim.Optimizer]
GRID = (1 / 3, 1.0, 3.0)  # the external-tuning trials: multipliers of the default lr, the same for every method
CONTROLLER = "+controller"


def as_real(x: Any) -> float:
    """``x`` as a float (numpy numbers and one-element tensors too), NaN if it is not a number
    (a string is not: ``float("1e-3")`` would pass a YAML value that later fails in a kernel)."""
    if isinstance(x, (str, bytes)):
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def check_rate(name: str, value: Any, *, zero_ok: bool = False) -> None:
    """A one-line error unless ``value`` is a finite number > 0 (>= 0 with ``zero_ok``); a bool
    or a string is not one (an ``eps``, a tower's rates)."""
    x = math.nan if isinstance(value, bool) else as_real(value)
    if not ((x >= 0 if zero_ok else x > 0) and math.isfinite(x)):
        raise ConfigError(f"{name} must be a {'non-negative' if zero_ok else 'positive'} finite number, got {value}")


def check_lr(lr: float, *, zero_ok: bool = False) -> float:
    """``lr`` as given, or a one-line error unless it is a positive finite number (numpy
    numbers and one-element tensors count); ``zero_ok``: 0 too (a param group's own lr, which
    torch allows: a group held still, or one a scheduler sets later)."""
    value = as_real(lr)
    if not ((value > 0 or zero_ok and value == 0) and math.isfinite(value)):
        raise ConfigError(f"learning rate must be a positive number{' or 0' if zero_ok else ''}, got {lr!r}")
    return lr


def check_weight_decay(weight_decay: float) -> float:
    """``weight_decay`` as given, or a one-line error unless it is a finite number >= 0."""
    value = as_real(weight_decay)
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"weight decay (weight_decay) must be a finite number >= 0, got {weight_decay!r}")
    return weight_decay


@dataclass(frozen=True)
class Method:
    """One named way to train.

    ``momentum`` is the default momentum (β₁ for Adam-likes; ``None``: the optimizer has
    none), ``weight_decay`` the default decay, ``schedule`` the per-step schedule that is part
    of the method (``constant`` for none). ``budget_aware`` methods read the step budget (a
    schedule or a policy): the benchmark runs them at each budget of its protocol.
    ``weights`` names the shipped pretrained weights of a learned optimizer (ours).
    """

    name: str
    label: str
    make: Factory
    default_lr: float
    momentum: float | None = None
    weight_decay: float = 0.0
    schedule: str = "constant"
    budget_aware: bool = False
    weights: str | None = None
    grid: tuple[float, ...] = GRID

    @property
    def ours(self) -> bool:
        return self.weights is not None

    def tuning_lrs(self) -> list[float]:
        return [self.default_lr * m for m in self.grid]

    def weights_fingerprint(self) -> str | None:
        """What a run's result depends on beyond the code: the shipped weights' fingerprint."""
        return None if self.weights is None else _fingerprint(self.weights)

    def build(
        self,
        params: Params,
        *,
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        total_steps: int | None = None,
        schedule: str | None = None,
        **options: Any,
    ) -> tuple[torch.optim.Optimizer, Any]:
        """The optimizer and its per-step scheduler (or ``None``) for a run of ``total_steps``
        steps; unset hyperparameters take this method's defaults. ``schedule`` adds one of
        :data:`SCHEDULES` to a method that has none; ``options``
        go to the factory (e.g. ``weights=`` for a learned optimizer)."""
        lr = float(check_lr(self.default_lr if lr is None else lr))
        if momentum is not None and self.momentum is None:
            raise ConfigError(f"{self.name} has no momentum; use momentum or nesterov for SGD with momentum")
        m = self.momentum if momentum is None else momentum
        if m is not None and not 0 <= m < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {m}")
        wd = check_weight_decay(self.weight_decay if weight_decay is None else weight_decay)
        schedule = self.check_schedule(schedule)
        budget = None if total_steps is None else int(total_steps)
        if schedule != "constant" and budget is None:
            raise ConfigError(f"{self.name} with the {schedule} schedule needs the step budget (total_steps)")
        opt = self.make(params, lr=lr, momentum=m, weight_decay=wd, budget=budget, **options)
        return opt, make_schedule(schedule, opt, budget or 1)

    def check_schedule(self, schedule: str | None) -> str:
        """The schedule a run uses: this method's own, or ``schedule`` when it has none."""
        if schedule in (None, "constant", self.schedule):
            return self.schedule
        if schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
        if self.schedule != "constant":
            raise ConfigError(f"{self.name} comes with its own {self.schedule} schedule; drop --schedule {schedule}")
        return schedule


SCHEDULES = ("constant", "cosine", "onecycle", "warmup_cosine")


def make_schedule(name: str, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """A per-step LR scheduler: ``constant`` (None), ``cosine`` (to zero), ``warmup_cosine``
    (5% linear warm-up, then cosine), ``onecycle`` (PyTorch's OneCycleLR peaking at the lr)."""
    if name == "constant":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "warmup_cosine":
        warm = max(1, total_steps // 20)

        def factor(s: int) -> float:
            if s < warm:
                return (s + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, total_steps - warm))))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if name == "onecycle":
        lr = optimizer.param_groups[0]["lr"]
        cycles = all("momentum" in g or "betas" in g for g in optimizer.param_groups)  # it cycles momentum where there is one
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, cycle_momentum=cycles)
    raise ConfigError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")


# -- factories ---------------------------------------------------------------------------------


def _torch(cls: type, *, betas: bool = False, nesterov: bool = False, has_momentum: bool = True) -> Factory:
    """A ``torch.optim`` class; ``momentum`` becomes β₁ for Adam-likes."""

    def make(params: Params, *, lr: float, momentum: float | None, weight_decay: float, budget: int | None) -> torch.optim.Optimizer:
        kw: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
        if betas:
            kw["betas"] = (momentum, 0.999)
        elif has_momentum and momentum is not None:
            kw["momentum"] = momentum
            if nesterov:
                kw["nesterov"] = True
        return cls(params, **kw)

    return make


def _lazy(module: str, attr: str) -> Factory:
    """An Adam-like baseline from its maintained package, imported only when used."""

    def make(params: Params, *, lr: float, momentum: float | None, weight_decay: float, budget: int | None) -> torch.optim.Optimizer:
        try:
            cls = getattr(__import__(module, fromlist=[attr]), attr)
        except ImportError:
            raise ConfigError(f"{attr} needs the {module} package: pip install 'metalearner[baselines]'") from None
        return cls(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)

    return make


def _opt2vec(params: Params, *, lr: float, momentum: float | None, weight_decay: float, budget: int | None, **options: Any) -> torch.optim.Optimizer:
    from metalearner.lopt import Opt2Vec

    return Opt2Vec(params, lr, weight_decay=weight_decay, budget=budget, **options)


def _learned(params: Params, *, lr: float, momentum: float | None, weight_decay: float, budget: int | None, **options: Any) -> torch.optim.Optimizer:
    from metalearner.lopt.learned import LearnedOptimizer

    return LearnedOptimizer(params, lr, betas=(momentum, 0.999), weight_decay=weight_decay, **options)


def _tower(base: str) -> Factory:
    """``base`` with its learning rate learned by a height-2 hyperoptimizer tower (``meta``)."""

    def make(params: Params, *, lr: float, momentum: float | None, weight_decay: float, budget: int | None, **options: Any) -> torch.optim.Optimizer:
        from metalearner.meta.towers import make_tower

        if weight_decay:
            raise ConfigError("hyperoptimizer towers have no weight decay; drop --weight-decay")
        kw = {"betas": (momentum, 0.999)} if base == "adam" else {"momentum": momentum} if base == "momentum" else {}
        return make_tower(params, lr, base=base, **{"height": 2, **kw, **options})

    return make


def _controlled(base: "Method") -> Factory:
    """``base``'s optimizer with the learned LR controller on top."""

    def make(params: Params, *, lr: float, momentum: float | None, weight_decay: float, budget: int | None, **options: Any) -> torch.optim.Optimizer:
        from metalearner.lopt import LRController

        inner = base.make(params, lr=lr, momentum=momentum, weight_decay=weight_decay, budget=budget)
        return LRController(inner, **options)

    return make


def _controller_method(base: Method) -> Method:
    return replace(base, name=base.name + CONTROLLER, label=f"{base.label.split(' (')[0]} + LR controller (ours, frozen)",
                   make=_controlled(base), weights="controller")  # fmt: skip


_ADAM = Method("adam", "Adam (constant lr)", _torch(torch.optim.Adam, betas=True), 1e-3, momentum=0.9)
_BASES: tuple[Method, ...] = (
    Method("sgd", "SGD", _torch(torch.optim.SGD, has_momentum=False), 0.1),
    Method("momentum", "SGD + momentum", _torch(torch.optim.SGD), 0.01, momentum=0.9),
    Method("nesterov", "SGD + Nesterov momentum", _torch(torch.optim.SGD, nesterov=True), 0.01, momentum=0.9),
    _ADAM,
    Method("adamw", "AdamW", _torch(torch.optim.AdamW, betas=True), 1e-3, momentum=0.9, weight_decay=0.01),
    Method("adamw_cosine", "AdamW + cosine", _torch(torch.optim.AdamW, betas=True), 1e-3, momentum=0.9, weight_decay=0.01,
           schedule="cosine", budget_aware=True),
    Method("rmsprop", "RMSprop", _torch(torch.optim.RMSprop), 1e-3, momentum=0.0),
    Method("adagrad", "Adagrad", _torch(torch.optim.Adagrad, has_momentum=False), 1e-2),
    Method("schedulefree_adamw", "Schedule-Free AdamW", _lazy("schedulefree", "AdamWScheduleFree"), 2.5e-3, momentum=0.9),
    Method("prodigy", "Prodigy", _lazy("prodigyopt", "Prodigy"), 1.0, momentum=0.9),
    Method("dadapt_adam", "D-Adaptation Adam", _lazy("dadaptation", "DAdaptAdam"), 1.0, momentum=0.9),
    Method("opt2vec", "Opt2Vec (ours, frozen)", _opt2vec, 1e-3, budget_aware=True, weights="opt2vec"),
    Method("learned_sf", "Learned Schedule-Free: per-tensor lr multipliers (ours, frozen)", _learned, 2.5e-3, momentum=0.9,
           weights="learned"),
    Method("hyper_sgd", "SGD, lr learned by a height-2 tower", _tower("sgd"), 0.1),
    Method("hyper_momentum", "SGD + momentum, lr learned by a height-2 tower", _tower("momentum"), 0.01, momentum=0.9),
    Method("hyper_adam", "Adam, lr learned by a height-2 tower", _tower("adam"), 1e-3, momentum=0.9),
)  # fmt: skip

METHODS: dict[str, Method] = {m.name: m for m in (*_BASES, _controller_method(_ADAM))}


def get_method(name: str) -> Method:
    """The registered method ``name``, or ``BASE+controller`` for any base method without a
    learned part of its own; unknown names are a one-line :class:`ConfigError`."""
    if name in METHODS:
        return METHODS[name]
    base = name[: -len(CONTROLLER)] if isinstance(name, str) and name.endswith(CONTROLLER) else None
    if base in METHODS and not METHODS[base].ours and METHODS[base].schedule == "constant":
        return _controller_method(METHODS[base])
    if base in METHODS:
        why = "has a learned part of its own" if METHODS[base].ours else f"has its own {METHODS[base].schedule} schedule"
        raise ConfigError(f"the controller cannot wrap {base!r}: it {why}; wrap a base optimizer with a constant lr, e.g. adam+controller")
    raise ConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)} (or BASE+controller for a base optimizer)")


@functools.cache
def _fingerprint(kind: str) -> str:
    from metalearner.lopt.policy import default_weights

    return default_weights(kind).fingerprint()
