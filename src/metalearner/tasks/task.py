"""Tasks and task families.

A :class:`TaskConfig` is a plain, JSON-serialisable description (data set, its options,
architecture, batch size, seed); :func:`make_task` turns it into a :class:`Task` holding the
data in memory and a model builder. A :class:`TaskFamily` samples configs from an explicit
random generator, so a distribution of tasks is reproducible from one seed::

    family = TaskFamily(datasets=("mnist1d", "digits"))
    task = make_task(family.sample(np.random.default_rng(0)))
    model = task.build_model(seed=0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metalearner.errors import ConfigError
from metalearner.tasks.data import Splits, dataset_key, load_dataset
from metalearner.tasks.models import ACTIVATIONS, ModelConfig, build_model, count_params, encode_architecture


@dataclass(frozen=True)
class TaskConfig:
    """Everything needed to rebuild a task; ``seed`` fixes the data split and sampling."""

    dataset: str = "mnist"
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 128
    seed: int = 0
    n_train: int | None = None
    data_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):  # rebuilt from JSON
            object.__setattr__(self, "model", ModelConfig(**self.model))
        dataset_key(self.dataset)  # fails early on an unknown name
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskConfig":
        return cls(**d)


@dataclass
class Task:
    """A data set in memory plus the model and loss to train on it."""

    config: TaskConfig
    data: Splits
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy

    @property
    def name(self) -> str:
        return self.data.name

    def build_model(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised model; the same seed gives the same weights."""
        return build_model(self.config.model, self.data.input_shape, self.data.n_classes, seed=seed)

    def architecture(self, model: nn.Module) -> dict[str, Any]:
        """Architecture encoding of ``model`` (readable fields plus ``vector``)."""
        return encode_architecture(self.config.model, count_params(model))


def make_task(config: TaskConfig, *, data_dir: str | None = None, download: bool = True) -> Task:
    data = load_dataset(
        config.dataset,
        data_dir=data_dir,
        seed=config.seed,
        n_train=config.n_train,
        download=download,
        **config.data_options,
    )
    return Task(config=config, data=data)


def _choice(rng: np.random.Generator, options: tuple) -> Any:
    return options[int(rng.integers(len(options)))]


@dataclass(frozen=True)
class TaskFamily:
    """A distribution over tasks: each field lists the values to sample uniformly from."""

    datasets: tuple[str, ...] = ("mnist1d", "moons", "digits", "synthetic")
    families: tuple[str, ...] = ("mlp",)
    depths: tuple[int, ...] = (1, 2, 3, 4)
    widths: tuple[int, ...] = (32, 64, 128, 256)
    activations: tuple[str, ...] = tuple(ACTIVATIONS)
    inits: tuple[str, ...] = ("default",)
    batch_sizes: tuple[int, ...] = (64, 128)
    n_train: int | None = None

    def sample(self, rng: np.random.Generator | int) -> TaskConfig:
        """Draw one task config; pass a seeded generator (or an int seed) for reproducibility."""
        rng = np.random.default_rng(rng)
        model = ModelConfig(
            family=_choice(rng, self.families),
            depth=_choice(rng, self.depths),
            width=_choice(rng, self.widths),
            activation=_choice(rng, self.activations),
            init=_choice(rng, self.inits),
        )
        return TaskConfig(
            dataset=_choice(rng, self.datasets),
            model=model,
            batch_size=_choice(rng, self.batch_sizes),
            seed=int(rng.integers(2**31)),
            n_train=self.n_train,
        )
