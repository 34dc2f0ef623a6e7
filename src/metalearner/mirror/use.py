"""Using the predictions: a curve-extrapolation pruner and a learning-rate advisor.

:class:`CurvePruner` implements the zoo's pruning hook (:mod:`metalearner.zoo.pruning`):
after each evaluation past ``min_fraction`` of a run's budget it predicts the run's final
validation accuracy ``â`` with a ``final_acc`` predictor and stops the run when
``â + margin < best``, ``best`` being the best validation accuracy any *other* run of the
sweep has shown so far (the curve-extrapolation rule of Domhan et al. 2015, with a learned
extrapolator). :func:`replay` measures pruners without training anything: it feeds each
recorded run's trajectory prefixes to a pruner, evaluation by evaluation, in sweep order.

:class:`LRAdvisor` reads a live trajectory and suggests the factor ``exp(r̂)`` by which to
multiply the learning rate, from an ``lr_log_ratio`` predictor; :meth:`LRAdvisor.apply`
applies it to an optimizer's param groups (once, or every call when used as a scheduler).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from metalearner.atomic import write_json
from metalearner.errors import ConfigError
from metalearner.mirror.dataset import live_rows, total_steps, windows
from metalearner.mirror.models import Predictor, load_predictor


def _config_dict(run: Any) -> dict[str, Any]:
    return run.to_dict() if hasattr(run, "to_dict") else dict(run)


class _Live:
    """Lazily loads a predictor (so the object pickles as a path) and predicts from a live
    trajectory."""

    def __init__(self, model_dir: str | Path, target: str) -> None:
        self.model_dir = str(model_dir)
        self.target = target
        self._model: Predictor | None = None

    @property
    def model(self) -> Predictor:
        if self._model is None:
            self._model = load_predictor(self.model_dir)
            if self.target not in self._model.cfg.targets:
                raise ConfigError(f"the predictor in {self.model_dir} does not predict {self.target}")
        return self._model

    def predict(self, trajectory: pd.DataFrame, run: Any, total: int) -> float:
        m = self.model
        rows = live_rows(trajectory, _config_dict(run), total, m.cfg.window)
        x = windows(rows, m.cfg.features, np.array([len(rows) - 1]), m.cfg.window)
        return float(m.predict(x)[0, m.cfg.targets.index(self.target)])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}


class CurvePruner(_Live):
    """Stop a run whose predicted final accuracy (+ ``margin``) is below the best seen."""

    def __init__(self, model_dir: str | Path, *, margin: float = 0.0, min_fraction: float = 0.2) -> None:
        super().__init__(model_dir, "final_acc")
        self.margin = margin
        self.min_fraction = min_fraction
        self.bests: dict[str, float] = {}
        self.state_dir: Path | None = None
        self.decisions: list[dict[str, Any]] = []

    def setup(self, out_dir: str | Path) -> None:
        """Share the best accuracy seen between workers: ``out_dir/curve_pruner/<run>.json``."""
        self.state_dir = Path(out_dir) / "curve_pruner"
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def _best_other(self, run_id: str, acc: float) -> float:
        """Record this run's best accuracy; return the best of the *other* runs (a run is
        never stopped for falling short of its own record)."""
        if math.isfinite(acc) and acc > self.bests.get(run_id, -math.inf):
            self.bests[run_id] = acc
            if self.state_dir is not None:
                write_json(self.state_dir / f"{run_id}.json", {"run_id": run_id, "best": acc})
        if self.state_dir is not None:
            for p in self.state_dir.glob("*.json"):
                try:
                    rec = json.loads(p.read_text())
                    self.bests[rec["run_id"]] = max(self.bests.get(rec["run_id"], -math.inf), float(rec["best"]))
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # a record being replaced right now
        return max((v for k, v in self.bests.items() if k != run_id), default=-math.inf)

    def __call__(self, trajectory: pd.DataFrame, run: Any) -> bool:
        a = trajectory.attrs
        acc = a.get("val_acc")
        acc = float(acc) if acc is not None and math.isfinite(float(acc)) else -math.inf
        best = self._best_other(str(a.get("run_id")), acc)
        if a["fraction"] + 1e-9 < self.min_fraction:
            return False
        pred = self.predict(trajectory, run, int(a["total_steps"]))
        stop = pred + self.margin < best
        self.decisions.append({"run_id": a.get("run_id"), "step": a["step"], "pred": pred, "best": best, "stop": stop})
        return bool(stop)


class LRAdvisor(_Live):
    """Suggests (or applies) the learning-rate change an ``lr_log_ratio`` predictor predicts.
    ``max_factor`` bounds one change to ``[1/max_factor, max_factor]``."""

    def __init__(self, model_dir: str | Path, *, max_factor: float = 10.0) -> None:
        super().__init__(model_dir, "lr_log_ratio")
        if max_factor < 1:
            raise ConfigError(f"max_factor must be >= 1, got {max_factor}")
        self.max_factor = max_factor

    def suggest(self, trajectory: pd.DataFrame, run: Any, total: int) -> float:
        """The factor ``exp(r̂)`` to multiply the learning rate by, clipped."""
        r = self.predict(trajectory, run, total)
        return float(np.clip(math.exp(r), 1 / self.max_factor, self.max_factor))

    def apply(self, optimizer: Any, trajectory: pd.DataFrame, run: Any, total: int) -> float:
        """Multiply every param group's ``lr`` by the suggested factor; returns the factor."""
        f = self.suggest(trajectory, run, total)
        for g in optimizer.param_groups:
            g["lr"] *= f
        return f


# -- measuring pruners on recorded runs ------------------------------------------------------


def replay(
    runs: Iterable[tuple[str, pd.DataFrame, Any]], pruner: Callable[[pd.DataFrame, Any], bool] | None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Replay recorded runs ``(run_id, trajectory, run config)`` through ``pruner`` in the
    given order, as a one-worker sweep would call it: after every evaluation but the last,
    with the trajectory so far and the attrs the sweep sets. A stopped run costs the steps it
    took and is credited with its accuracy at that point. Returns the steps used, the best
    accuracy found, and per run (steps, acc, stopped)."""
    if pruner is not None and hasattr(pruner, "setup") and out_dir is not None:
        pruner.setup(out_dir)
    per: dict[str, dict[str, Any]] = {}
    for rid, traj, run in runs:
        traj = traj.reset_index(drop=True)
        total = total_steps(traj, _config_dict(run))
        evals = np.flatnonzero(traj["val_acc"].notna().to_numpy())
        accs = traj["val_acc"].to_numpy(float)
        rec = {"steps": len(traj), "acc": float(accs[evals[-1]]) if len(evals) else math.nan, "stopped": False}
        for i in evals[:-1] if pruner is not None else []:
            prefix = traj.iloc[: i + 1].copy()
            step = int(traj["step"].iat[i])
            vl = traj["val_loss"].iat[i]
            prefix.attrs.update(run_id=rid, step=step, total_steps=total, fraction=step / max(total, 1), epoch=float(traj["epoch"].iat[i]),
                                val_acc=float(accs[i]), val_loss=float(vl), out_dir=str(out_dir or ""))  # fmt: skip
            if pruner(prefix, run):
                rec = {"steps": i + 1, "acc": float(accs[i]), "stopped": True}
                break
        per[rid] = rec
    accs = [r["acc"] for r in per.values() if math.isfinite(r["acc"])]
    return {"steps": int(sum(r["steps"] for r in per.values())), "best_acc": max(accs) if accs else math.nan,
            "stopped": int(sum(r["stopped"] for r in per.values())), "runs": per}  # fmt: skip
