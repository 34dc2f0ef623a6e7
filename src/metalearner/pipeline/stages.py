"""The stages of ``metalearner run``: each a typed config and one small function that calls
the library and writes into its own folder.

A stage function takes its config, its folder, the folders of the stages it reads
(``inputs``) and a :class:`Context` (executor, data directory, progress), and
returns a small JSON-able dict of what it produced (saved in its ``stage.json``). The zoo,
meta-training and the benchmark resume in their own folders; the dataset and mirror stages
are short and simply start again.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metalearner.atomic import write_json


def plain(obj: Any) -> Any:
    """``obj`` made of JSON types only (numpy scalars become Python numbers)."""
    return json.loads(json.dumps(obj, default=lambda x: x.item() if hasattr(x, "item") else str(x)))


@dataclass
class Context:
    """What every stage may use: the executor, where the data is, progress. (Not in the
    cache key: the same runs on another executor are the same runs.)"""

    executor: Any
    data_dir: str | None = None
    progress: bool = True


# -- zoo --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooStage:
    """A sweep of observed base runs: a sweep spec (a preset name or a spec as a dict)."""

    spec: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None  # a shipped zoo preset, used when ``spec`` is empty
    device: str = "cpu"


def zoo_spec(cfg: ZooStage) -> Any:
    """The stage's sweep spec (on a device other than the CPU, every run says so)."""
    from metalearner.zoo.spec import SweepSpec, load_spec

    spec = load_spec(cfg.preset) if cfg.preset and not cfg.spec else SweepSpec.from_dict(cfg.spec)
    return spec.with_overrides(device=cfg.device) if cfg.device != "cpu" else spec


def run_zoo(cfg: ZooStage, out: Path, inputs: dict[str, Path], ctx: Context) -> dict[str, Any]:
    from metalearner.zoo.sweep import run_sweep

    result = run_sweep(zoo_spec(cfg), out, ctx.executor, data_dir=ctx.data_dir, progress=ctx.progress)
    return {"runs": result.total, "counts": result.counts}


# -- dataset ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetStage:
    """Rows of features and targets from the zoo (``metalearner.mirror.DatasetConfig``)."""

    k: int = 20
    ahead: int = 50
    acc_threshold: float = 0.9
    seed: int = 0


def run_dataset(cfg: DatasetStage, out: Path, inputs: dict[str, Path], ctx: Context) -> dict[str, Any]:
    from metalearner.mirror.dataset import DatasetConfig, build_dataset

    ds = build_dataset(inputs["zoo"], out, DatasetConfig(k=cfg.k, ahead=cfg.ahead, acc_threshold=cfg.acc_threshold, seed=cfg.seed))
    return {"rows": len(ds.rows), "runs": len(ds.runs), "features": len(ds.features)}


# -- mirror -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MirrorStage:
    """Predictors of training on a grouped split of the zoo's runs: the smoothed loss ahead
    (scored against the baselines on held-out runs) and the final accuracy from the first
    part of a run (used as an early-stopping pruner, replayed on the held-out runs)."""

    kind: str = "mlp"
    split: str = "run"  # run, arch, task or optimizer
    window: int = 16
    hidden: int = 32
    layers: int = 2
    epochs: int = 20
    stride: int = 3
    seed: int = 0
    prune: bool = True  # also train the final-accuracy predictor and replay it as a pruner


def recorded_runs(zoo: Path, ids: list[str]) -> list[tuple[str, Any, dict[str, Any]]]:
    """(run id, trajectory, run config) of the zoo's runs ``ids``, in id order: what
    :func:`metalearner.mirror.replay` takes."""
    from metalearner.observe.store import read_run, read_trajectory

    return [(rid, read_trajectory(zoo / "runs" / rid, format="pandas"), read_run(zoo / "runs" / rid)["config"]) for rid in sorted(ids)]


def run_mirror(cfg: MirrorStage, out: Path, inputs: dict[str, Path], ctx: Context) -> dict[str, Any]:
    from metalearner.errors import DataError
    from metalearner.mirror import CurvePruner, Dataset, fit_on_dataset, replay, save_predictor, score, split_runs
    from metalearner.mirror.models import TrainConfig

    ds = Dataset.load(inputs["dataset"])
    split = split_runs(ds.runs, cfg.split, seed=cfg.seed)
    write_json(out / "split.json", {"by": cfg.split, "seed": cfg.seed, "split": split})
    train = TrainConfig(epochs=cfg.epochs, seed=cfg.seed)
    arch = dict(kind=cfg.kind, window=cfg.window, hidden=cfg.hidden, layers=cfg.layers, stride=cfg.stride, train=train)
    model, history = fit_on_dataset(ds, ["smooth_loss"], split, **arch)
    save_predictor(model, out / "smooth_loss", history, split={"by": cfg.split, "seed": cfg.seed, "split": split})
    scores = {"smooth_loss": score(ds, model, "smooth_loss", split, "test", seed=cfg.seed)}
    savings = None
    if cfg.prune:
        acc_model, acc_history = fit_on_dataset(ds, ["final_acc"], split, fraction=(0.05, 0.95), **arch)
        save_predictor(acc_model, out / "final_acc", acc_history)
        try:
            scores["final_acc_at_20pct"] = score(ds, acc_model, "final_acc", split, "test", at_fraction=0.2, seed=cfg.seed)
        except DataError:  # no evaluation by 20% of the held-out runs: nothing to score there
            scores["final_acc_at_20pct"] = None
        test = recorded_runs(inputs["zoo"], [r for r, s in split.items() if s == "test"])
        everything = replay(test, None)
        curve = replay(test, CurvePruner(out / "final_acc"), out)
        savings = {
            "runs": len(test), "steps_all": everything["steps"], "steps_pruned": curve["steps"], "stopped": curve["stopped"],
            "compute_saved": everything["steps"] / max(curve["steps"], 1), "best_acc_all": everything["best_acc"],
            "best_acc_pruned": curve["best_acc"],
        }  # fmt: skip
    write_json(out / "scores.json", plain({"scores": scores, "early_stopping": savings}))
    s = scores["smooth_loss"]
    return plain({"smooth_loss_ratio": s["ratio"], "best_baseline": s["best_baseline"], "test_runs": s["n_runs"],
            "compute_saved": None if savings is None else savings["compute_saved"]})  # fmt: skip


# -- meta-train -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaTrainStage:
    """The learned optimizer: ``source = "shipped"`` uses the pretrained weights that come
    with metalearner; ``"train"`` meta-trains Opt2Vec with ``overrides`` of the default
    config. Either way one recorded run on ``analysis_task`` shows its learned lr, momentum
    and embedding."""

    source: str = "shipped"  # or "train"
    kind: str = "opt2vec"
    overrides: dict[str, Any] = field(default_factory=dict)
    analysis_task: dict[str, Any] = field(default_factory=lambda: {"dataset": "mnist1d", "model": {"depth": 2, "width": 128}})
    analysis_steps: int = 512
    analysis_lr: float = 1e-3

    def __post_init__(self) -> None:
        from metalearner.errors import ConfigError

        if self.source not in ("shipped", "train"):
            raise ConfigError(f"meta-train source must be shipped or train, got {self.source!r}")


def weights_path(out: Path, cfg: MetaTrainStage) -> Path | None:
    """The weights file the meta-train stage produced, or None for the shipped ones."""
    return out / f"{cfg.kind}.safetensors" if cfg.source == "train" else None


def run_meta_train(cfg: MetaTrainStage, out: Path, inputs: dict[str, Path], ctx: Context) -> dict[str, Any]:
    import numpy as np

    from metalearner.lopt.analysis import record_run
    from metalearner.lopt.meta_train import default_config, meta_train
    from metalearner.tasks.task import TaskConfig, make_task

    info: dict[str, Any] = {"source": cfg.source, "kind": cfg.kind}
    weights: str = "default"
    if cfg.source == "train":
        mcfg = default_config(cfg.kind, **cfg.overrides)
        _, state = meta_train(mcfg, out / "meta", executor=ctx.executor, progress=ctx.progress)
        shutil.copyfile(out / "meta" / f"{cfg.kind}.safetensors", out / f"{cfg.kind}.safetensors")
        weights = str(out / f"{cfg.kind}.safetensors")
        ev = state.evaluation
        info.update(outer_steps=state.step, curve=[r["meta_loss"] for r in state.curve],
                    eval_initial=ev["initial_mean"], eval_final=ev["final_mean"])  # fmt: skip
    task = make_task(TaskConfig.from_dict(cfg.analysis_task), data_dir=ctx.data_dir)
    traj = record_run(task, "opt2vec", lr=cfg.analysis_lr, steps=cfg.analysis_steps, options={"weights": weights})
    write_json(out / "trajectory.json", {k: np.asarray(v).tolist() for k, v in traj.items()})
    info.update(analysis_task=task.name, final_loss=float(traj["loss"][-1]), lr_range=[float(np.nanmin(traj["lr"])), float(np.nanmax(traj["lr"]))])
    return info


# -- bench ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchStage:
    """The time-to-target benchmark: a suite of :mod:`metalearner.bench.protocol`, with
    optional overrides (cells kept by name, methods, seeds, budgets) for small presets."""

    suite: str = "quick"
    cells: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    seeds: int | None = None
    reference_epochs: int | None = None
    budgets: tuple[int, ...] | None = None
    evals_per_epoch: int | None = None
    device: str = "cpu"

    def resolve(self) -> Any:
        import dataclasses

        from metalearner.bench import get_suite, select

        s = select(get_suite(self.suite), cells=self.cells)
        changes: dict[str, Any] = {}
        for name in ("methods", "seeds", "reference_epochs", "budgets", "evals_per_epoch"):
            if getattr(self, name) is not None:
                changes[name] = tuple(getattr(self, name)) if name in ("methods", "budgets") else getattr(self, name)
        return dataclasses.replace(s, **changes) if changes else s


def run_bench(cfg: BenchStage, out: Path, inputs: dict[str, Path], ctx: Context, *, weights: dict[str, str] | None = None) -> dict[str, Any]:
    from metalearner.bench import run_suite

    results = run_suite(cfg.resolve(), out, ctx.executor, data_dir=ctx.data_dir, progress=ctx.progress, device=cfg.device, weights=weights)
    return {"cells": list(results["cells"]), "methods": list(results["protocol"]["methods"]), "weights": weights or "shipped"}
