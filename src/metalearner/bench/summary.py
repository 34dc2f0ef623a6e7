"""From per-seed records to what a reader compares: medians with intervals, profiles, goals."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from typing import Any

from metalearner.methods import get_method
from metalearner.bench.metrics import bootstrap_median_ci, median, performance_profile, profile_score
from metalearner.bench.protocol import Suite

TAUS = [1 + 3 * i / 60 for i in range(61)]  # 1 .. 4, for the profile plot
GOAL_EPOCHS = 3.0  # the goal: the learned optimizer reaches the target within 3 epochs (median)


EXPOSURE = ("datasets", "depths", "widths", "activations", "data_seeds", "n_train", "unroll_steps")


def meta_training_exposure(weights: dict[str, str] | None = None) -> dict[str, Any]:
    """What the learned optimizers saw in meta-training: the shipped ones' from their model
    card; weights files run instead of them (``weights``: method -> path) from the
    meta-training config saved in the file."""
    from metalearner.lopt.policy import PRETRAINED, PolicyWeights

    card = json.loads((PRETRAINED / "MODEL_CARD.json").read_text())
    out = {}
    for kind, entry in card["optimizers"].items():
        out[kind] = {k: entry["config"][k] for k in EXPOSURE}
        out[kind]["command"] = entry.get("command")
    for path in (weights or {}).values():
        w = PolicyWeights.load(path)
        config = json.loads(w.metadata.get("meta_train_config", "{}"))
        if config:
            out[w.config.kind] = {**{k: config[k] for k in EXPOSURE}, "command": f"meta-trained into {path}"}
    return out


def seen(task: dict[str, Any], exposure: dict[str, Any]) -> dict[str, bool]:
    """Whether a cell's data set (its unshifted concept) and architecture were in meta-training."""
    from metalearner.tasks.synthetic import Shift

    any_kind = list(exposure.values())
    m = task["model"]
    options = task.get("data_options", {})
    shifted = any(f.name in options and float(options[f.name]) != f.default for f in dataclasses.fields(Shift))
    data = any(task["dataset"] in e["datasets"] and (task["dataset"] != "synthetic" or task["seed"] in e["data_seeds"]) for e in any_kind)
    arch = any(m["family"] == "mlp" and m["depth"] in e["depths"] and m["width"] in e["widths"] and m["activation"] in e["activations"]
               for e in any_kind)  # fmt: skip
    return {"data": data and not shifted, "architecture": arch}


def _summ(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    ett = [s["epochs_to_target"] if s["epochs_to_target"] is not None else math.inf for s in seeds]
    med, lo, hi = bootstrap_median_ci(ett)
    tests = [s["test_acc"] for s in seeds if s["test_acc"] is not None]
    return {
        "epochs_to_target": med, "ci95": [lo, hi], "reached": sum(e < math.inf for e in ett), "seeds": len(ett),
        "test_acc": median(tests) if tests else None, "wall_s": median(s["wall_s"] for s in seeds),
        "ms_per_step": median(s["ms_per_step"] for s in seeds),
        "diverged": sum(s["status"] == "diverged" for s in seeds),
    }  # fmt: skip


def summarise(suite: Suite, cells: dict[str, Any], weights: dict[str, str] | None = None) -> dict[str, Any]:
    exposure = meta_training_exposure(weights)
    ref = suite.reference_method
    for cell in cells.values():
        cell["seen_in_meta_training"] = seen(cell["task"], exposure)
        for r, methods in cell["rulesets"].items():
            for m, entry in methods.items():
                entry["summary"] = _summ(entry["seeds"])
            base = methods[ref]["summary"]["ms_per_step"]
            for entry in methods.values():
                entry["summary"]["step_time_vs_adam"] = entry["summary"]["ms_per_step"] / base if base else None
    profiles, scores = {}, {}
    for r in ("self_tuning", "tuned"):
        times = {m: {c: cell["rulesets"][r][m]["summary"]["epochs_to_target"] for c, cell in cells.items()} for m in suite.methods}
        profiles[r] = {"taus": TAUS, "rho": performance_profile(times, TAUS)}
        scores[r] = profile_score(times)
    return {
        "protocol": suite.to_dict(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "methods": {m: {"label": get_method(m).label, "default_lr": get_method(m).default_lr, "grid": get_method(m).tuning_lrs(),
                        "budget_aware": get_method(m).budget_aware, "ours": get_method(m).ours} for m in suite.methods},
        "meta_training": exposure,
        "cells": cells,
        "profiles": profiles,
        "profile_scores": scores,
        "goals": goals(suite, cells, scores),
    }  # fmt: skip


def goals(suite: Suite, cells: dict[str, Any], scores: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The issue's two goals, checked against the numbers (true / false / null when not measured)."""
    ours = [m for m in suite.methods if get_method(m).ours]
    mnist = [c for c, cell in cells.items() if cell["task"]["dataset"] == "mnist" and not cell["seen_in_meta_training"]["architecture"]]
    out: dict[str, Any] = {"held_out_mnist_cells": mnist}
    for m in ours:
        med = [cells[c]["rulesets"]["self_tuning"][m]["summary"]["epochs_to_target"] for c in mnist]
        out[m] = {
            "median_epochs_on_held_out_mnist": med,
            "within_3_epochs": bool(mnist) and all(e <= GOAL_EPOCHS for e in med),
            "self_tuning_score": scores["self_tuning"].get(m),
            "beats_schedulefree_and_prodigy": all(
                scores["self_tuning"].get(m, 0) > scores["self_tuning"].get(b, 0)
                for b in ("schedulefree_adamw", "prodigy") if b in scores["self_tuning"]
            ),
        }  # fmt: skip
    return out


_INF_KEYS = ("epochs_to_target", "ci95", "median_epochs_on_held_out_mnist")


def load_results(path: str | Any) -> dict[str, Any]:
    """Read a ``results.json`` (or a directory holding one, or the benchmark's wrapped record);
    JSON has no infinity, so "never reached" (null) becomes ``inf`` again."""
    from pathlib import Path

    from metalearner.errors import ConfigError

    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise ConfigError(f"no benchmark results at {p}")

    def fix(obj: Any, key: str = "") -> Any:
        if obj is None and key in _INF_KEYS:
            return math.inf
        if isinstance(obj, dict):
            return {k: fix(v, k) for k, v in obj.items()}
        if isinstance(obj, list):
            return [fix(v, key) for v in obj]
        return obj

    try:
        d = json.loads(p.read_text())
    except ValueError as e:
        raise ConfigError(f"{p} is not a results file: {e}") from None
    if isinstance(d, dict) and "cells" not in d and isinstance(d.get("results"), dict):
        d = d["results"]  # benchmarks/results/time_to_target.json wraps them with the command and machine
    if not isinstance(d, dict) or "cells" not in d:
        raise ConfigError(f"{p} is not a benchmark results file")
    return fix(d)
