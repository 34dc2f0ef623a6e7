"""Predictive early stopping for sweeps: the pruning hook and successive halving.

A pruner is any picklable callable ``pruner(trajectory, run) -> bool`` (True: stop the run).
The sweep calls it in the worker after every evaluation of a run except the last, with

- ``trajectory``: the run's probe trajectory so far as a pandas DataFrame (one row per step;
  ``val_acc``/``val_loss`` set on evaluation rows), whose ``attrs`` hold ``run_id``,
  ``step``, ``total_steps``, ``fraction`` (= step / total_steps), ``epoch`` (fractional),
  ``val_acc``, ``val_loss`` and ``out_dir`` (the sweep directory);
- ``run``: the run's :class:`~metalearner.train.run.RunConfig`.

A stopped run keeps its trajectory; its ``run.json`` says ``stopped`` and the manifest
``pruned``. If the pruner has a ``setup(out_dir)`` method, the sweep calls it in the parent
before starting (to learn where to keep cross-run state). A learned curve predictor plugs in
here: it only has to implement ``__call__``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

from metalearner.atomic import write_json
from metalearner.errors import ConfigError


class Pruner(Protocol):
    def __call__(self, trajectory: Any, run: Any) -> bool: ...


class SuccessiveHalving:
    """Asynchronous successive halving (ASHA, Li et al. 2018), as a stop-or-continue rule.

    Rungs sit at budget fractions ``min_fraction * eta**k`` below 1 (defaults: 1/9 and 1/3 of
    each run's own budget of steps). The first evaluation at or past a rung records the run's
    ``metric`` there (a small JSON file ``DIR/rungs/<k>/<run_id>.json``, written atomically,
    so parallel workers and resumed sweeps share the records). The run continues only if its
    value is among the top ``max(1, n // eta)`` of the ``n`` values recorded at that rung so
    far, itself included; otherwise it stops. Non-finite values (diverged) count as worst.

    Semantics to know:

    - it compares a run only with runs that reached the rung before it (or at the same
      time): early runs are judged against few others (the first run at a rung always
      continues) and the outcome depends on completion order when workers run in parallel;
      with one worker and a fixed order it is deterministic;
    - roughly a fraction ``1/eta`` of the runs survives each rung once many have reported;
    - a run whose first evaluation lies past several rungs reports the same value at each;
    - a run continued (or rerun) after a kill is not judged again at a rung it already
      recorded: its record there stands (the same value, as runs are deterministic).
    """

    def __init__(self, eta: float = 3, min_fraction: float = 1 / 9, metric: str = "val_acc", mode: str = "max") -> None:
        if not (math.isfinite(eta) and eta > 1):
            raise ConfigError(f"successive halving needs eta > 1, got {eta}")
        if not 0 < min_fraction < 1:
            raise ConfigError(f"min_fraction must be in (0, 1), got {min_fraction}")
        if mode not in ("max", "min"):
            raise ConfigError(f"mode must be 'max' or 'min', got {mode!r}")
        self.eta = eta
        self.min_fraction = min_fraction
        self.metric = metric
        self.mode = mode
        self.rungs: list[float] = []
        f = min_fraction
        while f < 1 - 1e-9:
            self.rungs.append(f)
            f *= eta
        self.rung_dir: Path | None = None
        self._reported: dict[str, set[int]] = {}

    def setup(self, out_dir: str | Path) -> None:
        self.rung_dir = Path(out_dir) / "rungs"
        self.rung_dir.mkdir(parents=True, exist_ok=True)

    def _score(self, v: Any) -> float:
        v = float("nan") if v is None else float(v)
        if not math.isfinite(v):
            return -math.inf
        return v if self.mode == "max" else -v

    def __call__(self, trajectory: Any, run: Any) -> bool:
        if self.rung_dir is None:
            raise RuntimeError("SuccessiveHalving.setup(out_dir) was not called")
        attrs = trajectory.attrs
        rid, fraction, value = attrs["run_id"], attrs["fraction"], attrs.get(self.metric)
        if rid not in self._reported:  # a run continued after a kill: the rungs it recorded before
            self._reported[rid] = {k for k in range(len(self.rungs)) if (self.rung_dir / str(k) / f"{rid}.json").exists()}
        done = self._reported[rid]
        stop = False
        for k, rung in enumerate(self.rungs):
            if fraction + 1e-9 < rung or k in done:
                continue
            done.add(k)
            stop = stop or self.judge(k, rid, value)
        return stop

    def judge(self, rung: int, run_id: str, value: Any) -> bool:
        """Record ``value`` for ``run_id`` at ``rung``; True if the run should stop there."""
        assert self.rung_dir is not None
        folder = self.rung_dir / str(rung)
        write_json(folder / f"{run_id}.json", {"run_id": run_id, self.metric: value})
        scores = []
        for path in folder.glob("*.json"):
            try:
                scores.append(self._score(json.loads(path.read_text()).get(self.metric)))
            except (OSError, json.JSONDecodeError):
                continue  # a record being replaced right now
        mine = self._score(value)
        scores.sort(reverse=True)
        keep = max(1, int(len(scores) // self.eta))
        return mine < scores[min(keep, len(scores)) - 1]


PRUNERS = ("none", "halving")


def make_pruner(name: str | None, *, eta: float = 3, min_fraction: float = 1 / 9) -> Pruner | None:
    """A pruner by name: ``none`` or ``halving`` (:class:`SuccessiveHalving`)."""
    if name in (None, "", "none"):
        return None
    if name == "halving":
        return SuccessiveHalving(eta=eta, min_fraction=min_fraction)
    raise ConfigError(f"unknown pruner {name!r}; choose from {', '.join(PRUNERS)}")
