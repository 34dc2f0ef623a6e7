"""The step budget of a run, computed in one place: steps per epoch and total steps."""

from __future__ import annotations

import math
from dataclasses import dataclass

from metalearner.errors import ConfigError


@dataclass(frozen=True)
class Budget:
    """``per_epoch = ceil(n_train / batch_size)`` batches; ``total`` is the smaller of
    ``ceil(epochs * per_epoch)`` and ``steps`` (either may be omitted, not both)."""

    per_epoch: int
    total: int

    @classmethod
    def of(cls, n_train: int, batch_size: int, *, epochs: float | None = None, steps: int | None = None) -> "Budget":
        check_budget(epochs, steps)
        per_epoch = math.ceil(n_train / batch_size)
        total = min(steps if steps is not None else math.inf, math.ceil(epochs * per_epoch) if epochs is not None else math.inf)
        return cls(per_epoch=per_epoch, total=int(total))


def check_budget(epochs: float | None, steps: int | None) -> None:
    """One-line errors for a missing, zero, negative or infinite budget."""
    if epochs is None and steps is None:
        raise ConfigError("give a budget: epochs or steps")
    if epochs is not None and not (epochs > 0 and math.isfinite(epochs)):
        raise ConfigError(f"epochs must be a positive number, got {epochs}")
    if steps is not None and not steps >= 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
