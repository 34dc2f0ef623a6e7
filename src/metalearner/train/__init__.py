"""The single training loop and what it is driven with."""

from metalearner.train.fit import FitResult, evaluate, fit, train_step
from metalearner.train.optimizers import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule
from metalearner.train.run import RunConfig, train_run

__all__ = [
    "OPTIMIZERS", "SCHEDULES", "FitResult", "RunConfig", "evaluate", "fit", "make_optimizer",
    "make_schedule", "train_run", "train_step",
]  # fmt: skip
