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

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metalearner.errors import ConfigError
from metalearner.tasks.data import Splits, dataset_key, is_whole, load_dataset
from metalearner.tasks.models import ACTIVATIONS, ModelConfig, build_model, count_params, encode_architecture
from metalearner.tasks.sampling import check_value, draw


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
            object.__setattr__(self, "model", ModelConfig(**_known(ModelConfig, self.model, "model")))
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"model must be a ModelConfig or a dict of its fields, got {type(self.model).__name__}")
        if not isinstance(self.dataset, str):
            raise ConfigError(f"the data set is named by a string, got {self.dataset!r}")
        dataset_key(self.dataset)  # fails early on an unknown name
        if not is_whole(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"batch size must be a whole number >= 1, got {self.batch_size!r}")
        if self.n_train is not None and (not is_whole(self.n_train) or self.n_train < 1):
            raise ConfigError(f"n_train must be a whole positive number of examples, got {self.n_train!r}")
        if not isinstance(self.data_options, dict):
            raise ConfigError(f"data_options must be a dict of the data set's options, got {self.data_options!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskConfig":
        return cls(**_known(cls, d, "task"))


def _known(cls: type, d: dict[str, Any], what: str) -> dict[str, Any]:
    """``d`` if every key is a field of ``cls``, else a one-line error naming the others."""
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {', '.join(unknown)}; valid: {', '.join(f.name for f in fields(cls))}")
    return d


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
    if isinstance(config, dict):
        config = TaskConfig.from_dict(config)
    data = load_dataset(
        config.dataset,
        data_dir=data_dir,
        seed=config.seed,
        n_train=config.n_train,
        download=download,
        **config.data_options,
    )
    return Task(config=config, data=data)


@dataclass(frozen=True)
class TaskFamily:
    """A distribution over tasks: each field is a value spec of :mod:`~metalearner.tasks.sampling`
    (a tuple to draw uniformly from, a plain value, or a distribution table).

    ``data_seeds`` ``None`` draws a fresh data seed for every task; ``data_options`` gives
    per-data-set options (e.g. ``{"mnist1d": {"num_samples": 2000}}``). Meta-training samples
    its inner problems from a family; :meth:`sample` draws in a fixed order (data set, data
    seed, family, depth, width, activation, init, batch size).
    """

    datasets: Any = ("mnist1d", "moons", "digits", "synthetic")
    families: Any = ("mlp",)
    depths: Any = (1, 2, 3, 4)
    widths: Any = (32, 64, 128, 256)
    activations: Any = tuple(ACTIVATIONS)
    inits: Any = ("default",)
    batch_sizes: Any = (64, 128)
    n_train: Any = None
    data_seeds: Any = None
    data_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in ("datasets", "families", "depths", "widths", "activations", "inits", "batch_sizes", "n_train", "data_seeds"):
            value = getattr(self, f)
            if isinstance(value, list):
                object.__setattr__(self, f, tuple(value))
            if value is not None:
                check_value(f, value)

    def sample(self, rng: np.random.Generator | int) -> TaskConfig:
        """Draw one task config; pass a seeded generator (or an int seed) for reproducibility."""
        rng = np.random.default_rng(rng)
        dataset = draw(self.datasets, rng)
        seed = int(rng.integers(2**31)) if self.data_seeds is None else int(draw(self.data_seeds, rng))
        model = ModelConfig(
            family=draw(self.families, rng),
            depth=int(draw(self.depths, rng)),
            width=int(draw(self.widths, rng)),
            activation=draw(self.activations, rng),
            init=draw(self.inits, rng),
        )
        n_train = draw(self.n_train, rng)
        return TaskConfig(
            dataset=dataset, model=model, batch_size=int(draw(self.batch_sizes, rng)), seed=seed,
            n_train=None if n_train is None else int(n_train), data_options=dict(self.data_options.get(dataset, {})),
        )  # fmt: skip
