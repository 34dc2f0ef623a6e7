"""The single training loop and what it is driven with."""

from metalearner.train.budget import Budget
from metalearner.train.fit import FitResult, evaluate, fit, train_step
from metalearner.train.run import RunConfig, train_run

__all__ = ["Budget", "FitResult", "RunConfig", "evaluate", "fit", "train_run", "train_step"]
