"""One observed training run from a config: the unit the CLI, the zoo and benchmarks share."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from metalearner.errors import ConfigError
from metalearner.observe.probe import Probe
from metalearner.tasks.task import TaskConfig, make_task
from metalearner.train.fit import FitResult, fit
from metalearner.train.optimizers import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule


@dataclass(frozen=True)
class RunConfig:
    """A task plus how to train on it. Saved whole into every run's ``run.json``."""

    task: TaskConfig = field(default_factory=TaskConfig)
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float | None = None
    weight_decay: float = 0.0
    schedule: str = "constant"
    epochs: float | None = 10
    steps: int | None = None
    eval_every: int | None = None
    target_acc: float | None = None
    seed: int = 0
    extended: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.task, dict):
            object.__setattr__(self, "task", TaskConfig.from_dict(self.task))
        if self.epochs is None and self.steps is None:
            raise ConfigError("give a budget: epochs or steps")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return cls(**d)


def train_run(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    *,
    data_dir: str | None = None,
    run_id: str | None = None,
    progress: Any = None,
    probe: bool = True,
    should_stop: Callable[[Any, list[dict[str, float]], int], bool] | None = None,
) -> FitResult:
    """Build the task, model and optimizer of ``cfg``, train with the probe, write the run.

    ``should_stop(trajectory, history, total_steps)`` is called after each evaluation with
    the probe's trajectory so far (an Arrow table, ``None`` without the probe), ``fit``'s
    evaluation history and the run's step budget; returning True stops the run, which is
    then saved with status ``stopped``.
    """
    task = make_task(cfg.task, data_dir=data_dir)
    model = task.build_model(seed=cfg.seed)
    opt = make_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(task.data.n_train / cfg.task.batch_size)
    total = min(cfg.steps or math.inf, math.ceil((cfg.epochs or math.inf) * per_epoch))
    scheduler = make_schedule(cfg.schedule, opt, int(total))
    p = None
    if probe:
        meta = {"task": task.name, "architecture": task.architecture(model), "seed": cfg.seed, "config": cfg.to_dict()}
        p = Probe(model, opt, out_dir=out_dir, run_id=run_id, extended=cfg.extended, meta=meta)
    stop_fn = None
    if should_stop is not None:

        def stop_fn(history: list[dict[str, float]]) -> bool:
            return bool(should_stop(p.table() if p is not None else None, history, int(total)))

    try:
        result = fit(
            model, opt, task, epochs=cfg.epochs, steps=cfg.steps, scheduler=scheduler,
            eval_every=cfg.eval_every, target_acc=cfg.target_acc, probe=p, seed=cfg.seed, progress=progress,
            should_stop=stop_fn,
        )  # fmt: skip
    except BaseException:
        if p is not None:
            p.close("partial")
        raise
    if p is not None:
        status = "diverged" if result.diverged else "stopped" if result.status == "stopped" else "complete"
        p.close(status, final=result.final)
    result.final["n_params"] = sum(q.numel() for q in model.parameters())
    return result
