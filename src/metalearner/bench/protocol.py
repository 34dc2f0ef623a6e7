"""The benchmark protocol: which cells (task x architecture), methods, seeds and budgets.

The protocol (docs/benchmark.md says it in words; change it only with a stated reason):

* **target** of a cell: the validation accuracy that Adam with a constant learning rate,
  tuned on the grid, reaches after ``reference_epochs`` epochs (median over scoring seeds);
* **time to target**: epochs until validation accuracy first reaches the target, evaluating
  ``evals_per_epoch`` times per epoch; budget-aware methods are run at each of ``budgets``
  and score the smallest budget whose run reaches it; never reaching it is ``inf``;
* **rulesets**: *self_tuning* (each method's defaults, one run per seed) and *tuned* (each
  method's lr picked from its grid by final validation accuracy after ``reference_epochs``
  on ``tuning_seed``, a seed never used for scoring; the same number of trials for all);
* seeds ``0 .. seeds-1`` score; the data split is the same for every run of a cell.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from metalearner.errors import ConfigError
from metalearner.methods import get_method
from metalearner.tasks.models import ModelConfig
from metalearner.tasks.task import TaskConfig

# the benchmarked methods: tuned and tuning-free baselines, then ours (names from metalearner.methods)
METHODS = ("adam", "adamw_cosine", "schedulefree_adamw", "prodigy", "dadapt_adam", "opt2vec", "adam+controller", "learned_sf")
SHIFT_B = {"mean": 1.0, "rotation": 0.6, "noise": 0.5, "imbalance": 0.5}  # task B of the shift experiment


@dataclass(frozen=True)
class Cell:
    """One (task, architecture) problem; ``role`` says why it is in the suite."""

    name: str
    task: TaskConfig
    role: str = "held-out"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task.to_dict(), "role": self.role}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cell":
        return cls(name=d["name"], task=TaskConfig.from_dict(d["task"]), role=d.get("role", "held-out"))


@dataclass(frozen=True)
class Suite:
    name: str
    cells: tuple[Cell, ...]
    methods: tuple[str, ...] = METHODS
    seeds: int = 3
    tuning_seed: int = 1000
    reference_epochs: int = 10
    budgets: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10)
    evals_per_epoch: int = 4
    reference_method: str = "adam"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for m in (*self.methods, self.reference_method):
            get_method(m)
        if get_method(self.reference_method).budget_aware:
            raise ConfigError("the reference method must not be budget-aware (it defines the target at a fixed budget)")
        if self.reference_method not in self.methods:
            raise ConfigError(f"the reference method {self.reference_method!r} must be one of the suite's methods")
        if self.seeds < 1 or self.reference_epochs < 1 or self.evals_per_epoch < 1:
            raise ConfigError("seeds, reference_epochs and evals_per_epoch must be >= 1")
        if not self.budgets or self.budgets[-1] != self.reference_epochs or list(self.budgets) != sorted(set(self.budgets)):
            raise ConfigError("budgets must increase and end at reference_epochs")
        if len({c.name for c in self.cells}) != len(self.cells):
            raise ConfigError("cell names must be unique")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cells"] = [c.to_dict() for c in self.cells]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Suite":
        d = dict(d)
        d["cells"] = tuple(Cell.from_dict(c) for c in d["cells"])
        for k in ("methods", "budgets", "notes"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def _mlp(dataset: str, depth: int, width: int, activation: str, **data_options: Any) -> TaskConfig:
    return TaskConfig(dataset=dataset, model=ModelConfig(depth=depth, width=width, activation=activation), data_options=data_options)


def _shift_cells(depth: int = 2, width: int = 64) -> tuple[Cell, Cell]:
    arch = f"mlp-{depth}x{width}-relu"
    return (
        Cell(f"synthetic-A/{arch}", _mlp("synthetic", depth, width, "relu"), "shift A: concept seen in meta-training"),
        Cell(f"synthetic-B/{arch}", _mlp("synthetic", depth, width, "relu", **SHIFT_B), "shift B: A shifted, never seen"),
    )


_HEADLINE = (
    Cell("mnist/mlp-2x256-relu", _mlp("mnist", 2, 256, "relu"), "held-out task and architecture (the headline)"),
    Cell("mnist/mlp-4x128-elu", _mlp("mnist", 4, 128, "elu"), "held-out task, deeper, unseen activation"),
    Cell("fashion_mnist/mlp-2x128-gelu", _mlp("fashion_mnist", 2, 128, "gelu"), "held-out task and width"),
)
# added after the learned optimizers were designed and meta-trained, and not looked at before:
# a CNN on images and a small sequence model, both on 10,000 Fashion-MNIST training images
_NEW = (
    Cell("fashion_mnist/cnn-2x8-relu", TaskConfig(dataset="fashion_mnist", n_train=10000, model=ModelConfig(family="cnn", depth=2, width=8)),
         "held-out: a CNN on images (10,000 training images)"),
    Cell("fashion_mnist/gru-1x32-rows", TaskConfig(dataset="fashion_mnist", n_train=10000,
                                                     model=ModelConfig(family="rnn", depth=1, width=32, activation="tanh")),
         "held-out: a GRU reading the image row by row (10,000 training images)"),
)  # fmt: skip

SUITES: dict[str, Suite] = {
    "quick": Suite(
        name="quick",
        cells=(Cell("digits/mlp-3x128-elu", _mlp("digits", 3, 128, "elu"), "held-out architecture"), *_shift_cells()),
        seeds=3,
        notes=("small tasks so the whole protocol runs in minutes; not a result about MNIST",),
    ),
    "smoke": Suite(
        name="smoke",
        cells=_shift_cells(),
        seeds=2,
        reference_epochs=3,
        budgets=(1, 2, 3),
        evals_per_epoch=2,
        notes=("a smoke test of the whole protocol in about a minute (3-epoch budgets, 2 seeds); its numbers mean little",),
    ),
    "full": Suite(
        name="full",
        cells=(
            *_HEADLINE,
            *_NEW,
            Cell("mnist1d/cnn-2x32-relu", TaskConfig(dataset="mnist1d", model=ModelConfig(family="cnn", depth=2, width=32)),
                 "held-out architecture: the CNN (MNIST-1D data was in meta-training)"),
            *_shift_cells(),
        ),
        seeds=5,
        notes=(
            "the CNN runs on MNIST-1D, not MNIST: one CNN epoch on MNIST costs ~14 s on this 2-core CPU "
            "(5x the MLP), i.e. ~4 hours for that cell alone",
        ),
    ),
    "dev": Suite(
        name="dev",
        cells=(
            Cell("mnist/mlp-1x512-tanh", _mlp("mnist", 1, 512, "tanh"), "dev: 60,000 images, several epochs (not a benchmark cell)"),
            Cell("fashion_mnist/mlp-3x128-silu", _mlp("fashion_mnist", 3, 128, "silu"),
                 "dev: a deeper MLP of the ReLU family on 60,000 images (not a benchmark cell)"),
            Cell("digits/cnn-2x16-relu", TaskConfig(dataset="digits", batch_size=32, model=ModelConfig(family="cnn", depth=2, width=16)),
                 "dev: a small CNN"),
            Cell("mnist1d/rnn-1x32-tanh", TaskConfig(dataset="mnist1d", model=ModelConfig(family="rnn", depth=1, width=32, activation="tanh")),
                 "dev: a GRU"),
        ),
        methods=("adam", "schedulefree_adamw", "learned_sf"),
        seeds=3,
        notes=("development cells for choosing learned_sf weights (benchmarks/learned_dev.py --ttt): three of learned_dev.py's "
               "networks and a Fashion-MNIST MLP, none a benchmark cell; its figures choose weights, so they are not held-out results",),
    ),
    "headline": Suite(
        name="headline",
        cells=(*_HEADLINE, *_NEW),
        methods=("adam", "schedulefree_adamw", "prodigy", "learned_sf"),
        seeds=5,
        notes=("the full suite's MNIST/Fashion-MNIST cells and its two newest cells, for the tuning-free methods and the "
               "engine-trained learned optimizer (Adam sets the targets); about an hour on 2 cores",),
    ),
}


def _pick(suite: Suite, kind: str, wanted: str | Sequence[str], available: Sequence[str]) -> set[str]:
    names = [n.strip() for n in (wanted.split(",") if isinstance(wanted, str) else wanted) if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ConfigError(f"suite {suite.name!r} has no {kind} {', '.join(unknown) or repr(wanted)}; choose from {', '.join(available)}")
    return set(names)


def select(suite: Suite, *, methods: str | Sequence[str] | None = None, cells: str | Sequence[str] | None = None) -> Suite:
    """``suite`` restricted to some methods and cells (names, or comma-separated in one string;
    ``None``: all). Jobs are cached by content, so a part run in its whole suite's directory
    reuses the jobs finished there (its results go to ``OUT/parts/``)."""
    changes: dict[str, Any] = {}
    if methods is not None:
        keep = _pick(suite, "method", methods, suite.methods)
        changes["methods"] = tuple(m for m in suite.methods if m in keep)
    if cells is not None:
        keep = _pick(suite, "cell", cells, [c.name for c in suite.cells])
        changes["cells"] = tuple(c for c in suite.cells if c.name in keep)
    return dataclasses.replace(suite, **changes) if changes else suite


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    return SUITES[name]
