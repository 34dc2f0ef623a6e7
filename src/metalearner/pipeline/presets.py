"""The pipeline's configuration (one typed config per stage) and its presets.

* ``tiny``: seconds to a minute or two; for tests. 16 digits MLPs, a few-step meta-training,
  a one-cell, two-method benchmark. Its numbers mean nothing.
* ``quick`` (the default): under 15 minutes on a 2-core laptop. 24 short runs on digits,
  MNIST-1D and moons; the shipped learned-optimizer weights (no meta-training); the
  ``smoke`` benchmark suite.
* ``full``: the mission's scale. The ``mnist100`` zoo (100 MNIST MLPs x 10 epochs), a GRU
  mirror on an architecture split, Opt2Vec meta-trained with the default config (what made
  the shipped weights), the ``full`` benchmark suite with those weights. Hours.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from metalearner.errors import ConfigError
from metalearner.pipeline.stages import BenchStage, DatasetStage, MetaTrainStage, MirrorStage, ZooStage


@dataclass(frozen=True)
class ReportStage:
    """How many runs the report draws in the probe figure."""

    probe_runs: int = 3


@dataclass(frozen=True)
class PipelineConfig:
    """Every stage's config; ``estimates`` are rough seconds per stage on 2 CPU cores (for
    the overall ETA only)."""

    preset: str = "quick"
    zoo: ZooStage = field(default_factory=ZooStage)
    dataset: DatasetStage = field(default_factory=DatasetStage)
    mirror: MirrorStage = field(default_factory=MirrorStage)
    meta_train: MetaTrainStage = field(default_factory=MetaTrainStage)
    bench: BenchStage = field(default_factory=BenchStage)
    report: ReportStage = field(default_factory=ReportStage)
    estimates: dict[str, float] = field(default_factory=dict)

    def stage(self, name: str) -> Any:
        return getattr(self, name)

    def replace_stage(self, name: str, **changes: Any) -> "PipelineConfig":
        """A copy with stage ``name``'s config changed (``cfg.replace_stage("mirror", epochs=5)``)."""
        return dataclasses.replace(self, **{name: dataclasses.replace(self.stage(name), **changes)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_QUICK_ZOO = {
    "name": "quick",
    "description": "24 short MLP runs on digits, MNIST-1D and moons; 4 optimizers, lr from too small to too large",
    "sampling": "random",
    "n_runs": 24,
    "seed": 0,
    "space": {
        "dataset": ["digits", "mnist1d", "moons"],
        "depth": [1, 2, 3],
        "width": [32, 64, 128],
        "activation": ["relu", "tanh", "gelu"],
        "optimizer": ["sgd", "momentum", "adam", "rmsprop"],
        "batch_size": [64, 128],
        "epochs": 4,
        "seed": {"int_uniform": [0, 999]},
        "by_optimizer": {
            "sgd": {"lr": {"log_uniform": [1e-3, 10.0]}},
            "momentum": {"lr": {"log_uniform": [1e-4, 3.0]}},
            "adam": {"lr": {"log_uniform": [1e-5, 0.3]}},
            "rmsprop": {"lr": {"log_uniform": [1e-5, 0.3]}},
        },
    },
}

_TINY_ZOO = {
    "name": "tiny-pipeline",
    "description": "16 small MLPs on scikit-learn digits, 3 epochs; SGD at lr 30 diverges",
    "sampling": "grid",
    "space": {
        "dataset": "digits", "depth": 1, "width": [16, 32], "activation": "relu", "optimizer": ["sgd", "adam"], "epochs": 3,
        "batch_size": 64, "eval_every": 5, "seed": [0, 1],
        "by_optimizer": {"sgd": {"lr": [0.1, 30.0]}, "adam": {"lr": [0.001, 0.01]}},
    },
}  # fmt: skip

# a tiny policy meta-trained for a few ES steps on tiny problems (the shape of the tests' config)
_TINY_META = dict(
    outer_steps=2, pairs=2, sigma=0.1, outer_lr=0.15, unroll_steps=32, datasets=("digits", "synthetic"), depths=(1,),
    widths=(16,), activations=("tanh",), batch_sizes=(32,), n_train=256, data_seeds=(0,), base_lrs=(1e-3,),
    input_scales=(1.0,), eval_tasks=2, history_length=4, hidden_dim=8, embedding_dim=8, observe_every=4,
)  # fmt: skip

PRESETS: dict[str, PipelineConfig] = {
    "tiny": PipelineConfig(
        preset="tiny",
        zoo=ZooStage(spec=_TINY_ZOO),
        mirror=MirrorStage(kind="mlp", split="run", window=8, hidden=16, layers=1, epochs=4, stride=2),
        meta_train=MetaTrainStage(source="train", overrides=_TINY_META,
                                  analysis_task={"dataset": "digits", "model": {"depth": 1, "width": 32}}, analysis_steps=120),
        bench=BenchStage(suite="smoke", cells=("synthetic-A/mlp-2x64-relu",), methods=("adam", "opt2vec"), seeds=1,
                         reference_epochs=2, budgets=(1, 2), evals_per_epoch=2),
        estimates={"zoo": 20, "dataset": 5, "mirror": 10, "meta_train": 20, "bench": 40, "report": 10},
    ),  # fmt: skip
    "quick": PipelineConfig(
        preset="quick",
        zoo=ZooStage(spec=_QUICK_ZOO),
        mirror=MirrorStage(kind="mlp", split="run", window=16, hidden=32, layers=2, epochs=20, stride=3),
        meta_train=MetaTrainStage(source="shipped", analysis_task={"dataset": "mnist1d", "model": {"depth": 2, "width": 128}},
                                  analysis_steps=512),
        bench=BenchStage(suite="smoke"),
        estimates={"zoo": 150, "dataset": 15, "mirror": 60, "meta_train": 30, "bench": 300, "report": 20},
    ),  # fmt: skip
    "full": PipelineConfig(
        preset="full",
        zoo=ZooStage(preset="mnist100"),
        mirror=MirrorStage(kind="gru", split="arch", window=32, hidden=64, layers=2, epochs=30, stride=3),
        meta_train=MetaTrainStage(source="train", analysis_steps=1024),
        bench=BenchStage(suite="full"),
        estimates={"zoo": 6000, "dataset": 120, "mirror": 900, "meta_train": 400, "bench": 6000, "report": 60},
    ),  # fmt: skip
}


def get_preset(name: str) -> PipelineConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]
