"""From per-seed records to what a reader compares: medians with intervals, profiles, goals."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from typing import Any

import numpy as np

from metalearner.methods import get_method
from metalearner.bench.metrics import bootstrap_median_ci, median, performance_profile, profile_score
from metalearner.bench.protocol import Suite

TAUS = [1 + 3 * i / 60 for i in range(61)]  # 1 .. 4, for the profile plot
GOAL_EPOCHS = 2.0  # the learned optimizer reaches the target within 2 epochs (median) on MNIST/Fashion cells
GOAL_SCORE = 0.8  # ... and its self-tuning profile score is at least this


EXPOSURE = ("datasets", "depths", "widths", "activations", "data_seeds", "n_train", "unroll_steps")


def meta_training_exposure(weights: dict[str, str] | None = None) -> dict[str, Any]:
    """What the learned optimizers saw in meta-training: the shipped ones' from their model
    card; weights files run instead of them (``weights``: method -> path) from the
    meta-training config saved in the file."""
    from metalearner.lopt.policy import PRETRAINED, PolicyWeights

    card = json.loads((PRETRAINED / "MODEL_CARD.json").read_text())
    out = {}
    for kind, entry in card["optimizers"].items():
        out[kind] = {k: entry["config"][k] for k in (*EXPOSURE, "architectures") if k in entry["config"]}
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
    def arch_seen(e: dict[str, Any]) -> bool:
        if "architectures" in e:  # the exact networks (engine populations)
            return [m["family"], m["depth"], m["width"], m["activation"]] in e["architectures"]
        return m["family"] == "mlp" and m["depth"] in e["depths"] and m["width"] in e["widths"] and m["activation"] in e["activations"]

    arch = any(arch_seen(e) for e in any_kind)
    return {"data": data and not shifted, "architecture": arch}


def _summ(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    ett = [s["epochs_to_target"] if s["epochs_to_target"] is not None else math.inf for s in seeds]
    med, lo, hi = bootstrap_median_ci(ett)
    single = [s.get("single_run_epochs_to_target", e) for s, e in zip(seeds, ett)]  # budget-aware: one run at the full budget
    single = [math.inf if e is None else e for e in single]
    tests = [s["test_acc"] for s in seeds if s["test_acc"] is not None]
    return {
        "epochs_to_target": med, "ci95": [lo, hi], "reached": sum(e < math.inf for e in ett), "seeds": len(ett),
        "single_run_epochs_to_target": median(single),
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
        "methods": summarise_methods(suite.methods),
        "meta_training": exposure,
        "cells": cells,
        "profiles": profiles,
        "profile_scores": scores,
        "goals": goals(suite, cells, scores),
    }  # fmt: skip


def _ett(seed_record: dict[str, Any]) -> float:
    e = seed_record["epochs_to_target"]
    return math.inf if e is None else e


def profile_score_ci(cells: dict[str, Any], ruleset: str, methods: tuple[str, ...], *, n: int = 1000,
                     level: float = 0.95, seed: int = 0) -> dict[str, list[float]]:  # fmt: skip
    """A percentile-bootstrap interval of every method's profile score over seeds: each
    resample draws seeds with replacement (the same seeds for every method of a cell, as the
    runs share them), takes each method's median epochs-to-target per cell, and scores."""
    rng = np.random.default_rng(seed)
    per = {c: {m: np.array([_ett(r) for r in cell["rulesets"][ruleset][m]["seeds"]]) for m in methods} for c, cell in cells.items()}
    draws: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(n):
        times = {m: {} for m in methods}
        for c, runs in per.items():
            k = min(len(v) for v in runs.values())
            idx = rng.integers(0, k, size=k)
            for m in methods:
                times[m][c] = float(np.median(runs[m][idx]))
        for m, v in profile_score(times).items():
            draws[m].append(v)
    alpha = (1 - level) / 2
    return {m: [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))] for m, v in draws.items()}


def goals(suite: Suite, cells: dict[str, Any], scores: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The learned-optimizer targets (issue 12), checked against the numbers, for each of ours:

    - on every MNIST and Fashion-MNIST cell, median epochs-to-target (self-tuning) at most
      ``GOAL_EPOCHS`` and below Schedule-Free AdamW's;
    - the target reached (median) on every cell where any baseline reaches it;
    - self-tuning profile score at least ``GOAL_SCORE``, its bootstrap interval over seeds
      above Schedule-Free AdamW's and Prodigy's;
    - tuned profile score at least Schedule-Free AdamW's.
    """
    ours = [m for m in suite.methods if get_method(m).ours]
    baselines = [m for m in suite.methods if not get_method(m).ours]
    headline = [c for c, cell in cells.items() if cell["task"]["dataset"] in ("mnist", "fashion_mnist")]
    ci = profile_score_ci(cells, "self_tuning", suite.methods)
    out: dict[str, Any] = {"headline_cells": headline, "self_tuning_score_ci95": ci}

    def st(m: str, c: str) -> float:
        return cells[c]["rulesets"]["self_tuning"][m]["summary"]["epochs_to_target"]

    sf, rivals = "schedulefree_adamw", [b for b in ("schedulefree_adamw", "prodigy") if b in suite.methods]
    for m in ours:
        med = [st(m, c) for c in headline]
        reachable = [c for c in cells if any(st(b, c) < math.inf for b in baselines)]
        out[m] = {
            "median_epochs_on_headline_cells": med,
            f"within_{GOAL_EPOCHS:g}_epochs_and_ahead_of_schedulefree": bool(headline) and all(
                e <= GOAL_EPOCHS and (sf not in suite.methods or e < st(sf, c)) for e, c in zip(med, headline)),
            "reaches_wherever_a_baseline_does": all(st(m, c) < math.inf for c in reachable),
            "self_tuning_score": scores["self_tuning"].get(m),
            f"score_at_least_{GOAL_SCORE:g}": scores["self_tuning"].get(m, 0.0) >= GOAL_SCORE,
            "interval_above_schedulefree_and_prodigy": bool(rivals) and all(ci[m][0] > ci[b][1] for b in rivals),
            "tuned_score_at_least_schedulefree": sf in suite.methods and scores["tuned"][m] >= scores["tuned"][sf],
        }  # fmt: skip
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal up to the 6 significant digits a results file keeps (``inf`` only to ``inf``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-12)
    return a == b


def check_rerun(previous: dict[str, Any], suite: Suite, methods: tuple[str, ...]) -> None:
    """Refuse (one-line :class:`MetalearnerError`) a rerun of ``methods`` that could not be
    merged into ``previous``, before anything runs: the reference method, a method the suite
    lacks, another protocol (cells, seeds, budgets, ...) or a kept method whose defaults or
    grid have changed since."""
    from metalearner.errors import MetalearnerError

    ref = suite.reference_method
    if not methods or ref in methods or not set(methods) <= set(suite.methods):
        raise MetalearnerError(f"rerun methods must be methods of the suite other than the reference {ref!r}, got {', '.join(methods) or 'none'}")
    if not _same(previous.get("protocol"), json.loads(json.dumps(suite.to_dict()))):
        raise MetalearnerError(f"the committed results were made by another {suite.name} protocol (cells, seeds, budgets, ...); rerun the whole suite")
    now = summarise_methods(suite.methods)
    changed = [m for m in suite.methods if m not in methods and not _same(previous["methods"].get(m), now[m])]
    if changed:
        raise MetalearnerError(f"the defaults or tuning grid of {', '.join(changed)} changed since the committed results; rerun them too")


def summarise_methods(methods: tuple[str, ...]) -> dict[str, Any]:
    """What a results file records of each method: label, default lr, grid, budget-aware, ours."""
    return {m: {"label": get_method(m).label, "default_lr": get_method(m).default_lr, "grid": get_method(m).tuning_lrs(),
                "budget_aware": get_method(m).budget_aware, "ours": get_method(m).ours} for m in methods}  # fmt: skip


def merge_rerun(previous: dict[str, Any], part: dict[str, Any], suite: Suite, methods: tuple[str, ...],
                note: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """``previous`` (a whole suite's results) with ``methods``' runs and tuning replaced by
    ``part``'s, then summarised again: rerunning some methods of a long suite (re-shipped
    weights) without rerunning the others (:func:`check_rerun` first). ``part`` must hold the
    reference method's runs too, and they must equal ``previous``'s (the same curves, to the 6
    digits a results file keeps, hence the same targets): otherwise the two were not made by
    the same code and data, and the merge is refused. Step-time ratios stay those timed beside
    the reference runs of the same session: the rerun methods' from ``part``, the others' from
    ``previous``. ``reruns`` lists each merge: its methods, its date, the date of the runs it
    kept, and ``note`` (e.g. the earlier command and machine)."""
    import copy

    from metalearner.errors import MetalearnerError

    check_rerun(previous, suite, methods)
    ref = suite.reference_method
    if set(part["cells"]) != set(previous["cells"]):
        raise MetalearnerError("the earlier results and the rerun do not hold the same cells")
    cells = copy.deepcopy(previous["cells"])
    for name, cell in cells.items():
        new = part["cells"][name]
        old_runs = [s["curve"] for r in cell["rulesets"] for s in cell["rulesets"][r][ref]["seeds"]]
        new_runs = [s["curve"] for r in cell["rulesets"] for s in new["rulesets"][r][ref]["seeds"]]
        differ = len(old_runs) != len(new_runs) or any(not _same(a, b) for a, b in zip(old_runs, new_runs))
        if differ or not _same(cell["target"], new["target"]):
            raise MetalearnerError(f"{name}: the rerun's {ref} runs differ from the earlier ones (target {new['target']} against "
                                   f"{cell['target']}); rerun the whole suite")  # fmt: skip
        for r in cell["rulesets"]:
            for m in methods:
                cell["rulesets"][r][m] = copy.deepcopy(new["rulesets"][r][m])
        for m in methods:
            cell["tuning"][m] = copy.deepcopy(new["tuning"][m])
    out = summarise(suite, cells)
    for name, cell in out["cells"].items():
        for r in cell["rulesets"]:
            for m in suite.methods:
                source = part if m in methods else previous
                cell["rulesets"][r][m]["summary"]["step_time_vs_adam"] = source["cells"][name]["rulesets"][r][m]["summary"]["step_time_vs_adam"]
    earlier = previous.get("reruns", [])
    kept_from = earlier[0]["others_from"] if earlier else previous["date"]
    out["reruns"] = [*earlier, {"methods": list(methods), "date": out["date"], "others_from": kept_from, **(note or {})}]
    return out


_INF_KEYS = ("epochs_to_target", "single_run_epochs_to_target", "ci95", "median_epochs_on_held_out_mnist", "median_epochs_on_headline_cells")


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
    missing = [k for k in ("cells", "protocol", "methods", "profiles") if k not in d] if isinstance(d, dict) else ["cells"]
    if missing:
        raise ConfigError(f"{p} is not a benchmark results file (no {', '.join(missing)})")
    return fix(d)
