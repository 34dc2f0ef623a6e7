"""Optimizers and schedules by name, so configs and the CLI can name them.

Baselines from their maintained packages (``schedulefree``, ``prodigyopt``, ``dadaptation``)
are imported lazily: install ``metalearner[baselines]`` to use them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from metalearner.errors import ConfigError

Params = Iterable[torch.nn.Parameter]


def _lazy(module: str, attr: str, extra: str = "baselines") -> Callable[..., torch.optim.Optimizer]:
    def build(params: Params, **kw: Any) -> torch.optim.Optimizer:
        try:
            cls = getattr(__import__(module, fromlist=[attr]), attr)
        except ImportError:
            raise ConfigError(f"optimizer {attr} needs {module}: pip install 'metalearner[{extra}]'") from None
        return cls(params, **kw)

    return build


# name -> (factory, default momentum or None when the optimizer has none)
OPTIMIZERS: dict[str, tuple[Callable[..., torch.optim.Optimizer], float | None]] = {
    "sgd": (lambda p, lr, momentum, wd: torch.optim.SGD(p, lr=lr, weight_decay=wd), None),
    "momentum": (lambda p, lr, momentum, wd: torch.optim.SGD(p, lr=lr, momentum=momentum, weight_decay=wd), 0.9),
    "nesterov": (lambda p, lr, momentum, wd: torch.optim.SGD(p, lr=lr, momentum=momentum, nesterov=True, weight_decay=wd), 0.9),
    "adam": (lambda p, lr, momentum, wd: torch.optim.Adam(p, lr=lr, betas=(momentum, 0.999), weight_decay=wd), 0.9),
    "adamw": (lambda p, lr, momentum, wd: torch.optim.AdamW(p, lr=lr, betas=(momentum, 0.999), weight_decay=wd or 0.01), 0.9),
    "rmsprop": (lambda p, lr, momentum, wd: torch.optim.RMSprop(p, lr=lr, momentum=momentum, weight_decay=wd), 0.0),
    "adagrad": (lambda p, lr, momentum, wd: torch.optim.Adagrad(p, lr=lr, weight_decay=wd), None),
    "schedulefree_adamw": (lambda p, lr, momentum, wd: _lazy("schedulefree", "AdamWScheduleFree")(p, lr=lr, betas=(momentum, 0.999), weight_decay=wd), 0.9),
    "prodigy": (lambda p, lr, momentum, wd: _lazy("prodigyopt", "Prodigy")(p, lr=lr, betas=(momentum, 0.999), weight_decay=wd), 0.9),
    "dadapt_adam": (lambda p, lr, momentum, wd: _lazy("dadaptation", "DAdaptAdam")(p, lr=lr, betas=(momentum, 0.999), weight_decay=wd), 0.9),
}  # fmt: skip
SCHEDULES = ("constant", "cosine", "onecycle", "warmup_cosine")


def make_optimizer(
    name: str, params: Params, *, lr: float, momentum: float | None = None, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` (see :data:`OPTIMIZERS`); ``momentum`` is beta1 for Adam-likes."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"learning rate must be a positive number, got {lr}")
    factory, default_momentum = OPTIMIZERS[name]
    m = default_momentum if momentum is None else momentum
    if m is not None and not 0 <= m < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {m}")
    return factory(params, lr, m, weight_decay)


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
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
    raise ConfigError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
