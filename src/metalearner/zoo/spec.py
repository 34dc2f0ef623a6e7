"""Sweep specs: the space of base-model runs a zoo trains, and how it is sampled.

A spec is a TOML (or YAML) file::

    name = "tiny"
    sampling = "random"        # or "grid"
    n_runs = 8                 # random only
    seed = 0                   # the sampling seed (random only)

    [space]                    # each key: a value, a list, or a distribution
    dataset = "digits"
    depth = [1, 2]
    width = [16, 32]
    activation = ["relu", "tanh"]
    optimizer = ["sgd", "adam"]
    lr = { log_uniform = [1e-4, 1e-1] }
    epochs = 3
    seed = [0, 1]

    [space.by_optimizer.sgd]   # overrides for runs with that optimizer
    lr = { log_uniform = [1e-3, 3.0] }

Keys of ``[space]`` (see :data:`SPACE_KEYS`) name fields of :class:`~metalearner.train.run.RunConfig`,
its :class:`~metalearner.tasks.task.TaskConfig` (``dataset``, ``n_train``, ``batch_size``,
``data_seed``, ``data_options``) and :class:`~metalearner.tasks.models.ModelConfig` (``family``,
``depth``, ``width``, ``activation``, ``init``). Values are drawn with
:mod:`metalearner.tasks.sampling` (the same primitive a :class:`~metalearner.tasks.TaskFamily`
uses): a distribution is a one-key table, ``log_uniform = [lo, hi]``, ``uniform = [lo, hi]``,
``int_uniform = [lo, hi]`` (inclusive) or ``int_log_uniform = [lo, hi]``; in grid mode it needs
``num = N`` (evenly, or log-evenly, spaced points).

Grid sampling takes the product of all lists (per optimizer, with its overrides), in a fixed
key order. Random sampling draws ``n_runs`` configs from a generator seeded by ``seed``: the
optimizer first, then every other key in sorted order, so the same spec gives the same runs.
Every run's id is a short hash of its full config (:func:`run_id`), so a resumed sweep matches
runs by content, not by position.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from metalearner.errors import ConfigError
from metalearner.tasks.models import ModelConfig
from metalearner.tasks.sampling import check_value, draw, grid_values, is_distribution
from metalearner.tasks.task import TaskConfig
from metalearner.methods import get_method
from metalearner.train.run import RunConfig

TASK_KEYS = {"dataset": "dataset", "n_train": "n_train", "batch_size": "batch_size", "data_seed": "seed", "data_options": "data_options"}
MODEL_KEYS = ("family", "depth", "width", "activation", "init")
RUN_KEYS = ("optimizer", "lr", "momentum", "weight_decay", "schedule", "epochs", "steps", "eval_every", "target_acc", "seed", "extended", "device")  # fmt: skip
SPACE_KEYS: tuple[str, ...] = (*TASK_KEYS, *MODEL_KEYS, *RUN_KEYS)
TOP_KEYS = ("name", "description", "sampling", "n_runs", "seed", "space")


@dataclass(frozen=True)
class SweepSpec:
    """The space of runs of a zoo and how to sample it (see the module docstring)."""

    name: str = "zoo"
    sampling: str = "grid"
    n_runs: int | None = None
    seed: int = 0
    space: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if self.sampling not in ("grid", "random"):
            raise ConfigError(f"sampling must be 'grid' or 'random', got {self.sampling!r}")
        if self.sampling == "random" and not (isinstance(self.n_runs, int) and self.n_runs >= 1):
            raise ConfigError("random sampling needs n_runs = a positive integer")
        if self.sampling == "grid" and self.n_runs is not None:
            raise ConfigError("n_runs is for sampling = 'random' (a grid runs each of its points); drop it or sample at random")
        if not isinstance(self.space, dict):
            raise ConfigError("space must be a table")
        by_opt = self.space.get("by_optimizer", {})
        if not isinstance(by_opt, dict) or not all(isinstance(o, dict) for o in by_opt.values()):
            raise ConfigError("space.by_optimizer must be a table of tables, e.g. [space.by_optimizer.sgd]")
        for name in by_opt:
            try:
                get_method(name)
            except ConfigError as e:
                raise ConfigError(f"space.by_optimizer.{name}: {e}") from None
        for where, table in [("space", self.space), *((f"space.by_optimizer.{k}", v) for k, v in by_opt.items())]:
            for key, value in table.items():
                if key == "by_optimizer" and where == "space":
                    continue
                if key not in SPACE_KEYS or (key == "optimizer" and where != "space"):
                    raise ConfigError(f"unknown key {where}.{key}; valid keys: {', '.join(SPACE_KEYS)}")
                if key == "data_options":
                    if not isinstance(value, (dict, list)):
                        raise ConfigError(f"{where}.{key} must be a table (or a list of tables)")
                else:
                    check_value(f"{where}.{key}", value)
                if self.sampling == "grid" and is_distribution(value) and "num" not in value:
                    raise ConfigError(f"{where}.{key}: a distribution in a grid needs num = N (or use sampling = 'random')")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepSpec":
        unknown = [k for k in d if k not in TOP_KEYS]
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in sweep spec; valid keys: {', '.join(TOP_KEYS)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **space: Any) -> "SweepSpec":
        """A copy whose space has ``space``'s keys replaced (the CLI's ``--set``)."""
        d = self.to_dict()
        d["space"] = {**d["space"], **space}
        return SweepSpec.from_dict(d)


PRESETS = ("mnist100", "tiny")


def preset_path(name: str) -> Path:
    """The file of a shipped preset (``mnist100``, ``tiny``)."""
    return Path(str(resources.files("metalearner.zoo") / "presets" / f"{name}.toml"))


def _yaml_loader(yaml: Any) -> type:
    """PyYAML's safe loader that also reads ``1e-3`` as a number (YAML 1.1, which PyYAML
    follows, makes it a string: a float there needs a dot, ``1.0e-3``)."""

    class Loader(yaml.SafeLoader):
        pass

    exponent = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+0123456789"))
    return Loader


def load_spec(spec: str | Path) -> SweepSpec:
    """Load a spec from a ``.toml``/``.yaml`` path, or a preset name (:data:`PRESETS`)."""
    path = Path(spec)
    if not path.exists():
        if str(spec) in PRESETS:
            path = preset_path(str(spec))
        else:
            raise ConfigError(f"sweep spec {spec} not found (give a .toml/.yaml file or a preset: {', '.join(PRESETS)})")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError("YAML specs need PyYAML: pip install pyyaml (or write the spec in TOML)") from None
        try:
            data = yaml.load(text, Loader=_yaml_loader(yaml)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a sweep spec is a table of keys")
    return SweepSpec.from_dict(data)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a TOML value (``lr=[0.1, 0.01]``, ``lr={log_uniform=[1e-4,1]}``);
    a bare word is a string (``optimizer=adam``)."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = (s.strip() for s in text.split("=", 1))
    if key not in SPACE_KEYS:
        raise ConfigError(f"unknown key {key!r} in --set; valid keys: {', '.join(SPACE_KEYS)}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:  # a bare word, or a comma list of TOML values or bare words
        parsed = [_toml_or_word(v) for v in value.split(",")] if "," in value else value
    return key, parsed


def _toml_or_word(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()


# -- sampling ------------------------------------------------------------------------------


def build_run(values: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from flat space values (missing keys take the config defaults)."""
    task = {TASK_KEYS[k]: values[k] for k in TASK_KEYS if k in values}
    model = {k: values[k] for k in MODEL_KEYS if k in values}
    run = {k: values[k] for k in RUN_KEYS if k in values}
    try:
        return RunConfig(task=TaskConfig(model=ModelConfig(**model), **task), **run)
    except TypeError as e:  # a wrong type, e.g. depth = "two"
        raise ConfigError(f"bad value in sweep space: {e}") from None


def run_id(cfg: RunConfig) -> str:
    """A stable 10-hex-digit id: the hash of the run's full config."""
    blob = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def sample_runs(spec: SweepSpec) -> list[RunConfig]:
    """The runs of ``spec``: a grid or a seeded random sample; duplicates are dropped."""
    base = {k: v for k, v in spec.space.items() if k != "by_optimizer"}
    by_opt = spec.space.get("by_optimizer", {})
    optimizers = grid_values(base.pop("optimizer", "adam"))
    runs: list[RunConfig] = []
    if spec.sampling == "grid":
        for opt in optimizers:
            sub = {**base, **by_opt.get(opt, {})}
            keys = [k for k in SPACE_KEYS if k in sub]
            for combo in itertools.product(*(grid_values(sub[k]) for k in keys)):
                runs.append(build_run({"optimizer": opt, **dict(zip(keys, combo))}))
    else:
        rng = np.random.default_rng(spec.seed)
        for _ in range(spec.n_runs or 0):
            opt = optimizers[int(rng.integers(len(optimizers)))]
            sub = {**base, **by_opt.get(opt, {})}
            runs.append(build_run({"optimizer": opt, **{k: draw(sub[k], rng) for k in sorted(sub)}}))
    seen: set[str] = set()
    unique = []
    for r in runs:
        rid = run_id(r)
        if rid not in seen:
            seen.add(rid)
            unique.append(r)
    return unique
