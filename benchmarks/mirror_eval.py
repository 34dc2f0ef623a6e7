"""Mirror: do meta-models beat honest baselines on held-out architectures, and does a learned
curve-extrapolation pruner save compute without losing the best run?

The zoo (unless ``--zoo DIR`` names one): ``n_bases`` base configs (depth 1-3, width
16-128, five activations, sgd/momentum/adam/rmsprop, batch 16 or 32, seed) drawn from a
seeded generator, each trained at three learning rates (a log-uniform centre per optimizer
times 1/5, 1, 5), small MLPs on scikit-learn digits, validation every 10 steps. Cached
under ``benchmarks/.cache/`` (resumable).

Protocol:

- the split holds out whole architectures (``depth x width : activation`` groups, a seeded
  quarter of them) for the test side; validation runs (for early stopping and for choosing
  the pruner's margin) are other architecture groups; training never sees a test run;
- ``smooth_loss`` = mean of the next k = 20 per-batch log losses (the per-batch loss is the
  expected loss plus batch-sampling noise that nothing can predict; the forward mean keeps
  the predictable part and, unlike an EMA, is centred on the future); scored on every step
  of the test runs; baselines persistence, EMA and linear trend with α and window tuned on
  the training runs. The predictors see every baseline's smoother (the EMA and line over the
  baselines' whole tuning grid, :mod:`metalearner.mirror.trends`), learn the residual over
  the smoother with the least training MAE (zero output = that baseline), see loss levels
  relative to it, and train on the median's pinball loss (the metric is an MAE); each kind
  is the median of 5 seeds (:func:`metalearner.mirror.pipeline.fit_ensemble`), its window,
  width and depth (:data:`SETTINGS`) and training stride (``--loss-stride``) chosen on the
  validation runs (``--search``), never on the test runs;
  ``noise_floor`` roughly estimates what no predictor can beat, the part of the target that
  is the next batches' sampling noise: ``mean |s_t − s_{t+k/2}|`` over the scored rows (with
  independent batch noise, two targets sharing half their batches differ by exactly as much
  noise as one target carries about its expected value; drift adds to it, correlated noise
  takes from it), reported as a ratio to the best baseline's MAE;
- ``final_acc`` from the first 20% of a run: one row per test run, its last step at or
  before 20% of its budget; baselines persistence, linear, power-law and exponential fits;
- ratio = MAE(model) / MAE(best baseline) on exactly the same rows, 95% CI by resampling
  test runs (1000 bootstrap draws); the headline kind (or 'ensemble', the median of every
  kind's members) is the one with the least validation MAE;
- pruning is measured by *replaying* the recorded test runs (in run-id order, i.e. a
  shuffled sweep order, one worker) through each pruner: run everything, successive halving
  (eta 3, rungs at 1/9 and 1/3), and the curve-extrapolation pruner (the final_acc
  predictor with the best validation loss; its margin chosen on the validation runs as the
  cheapest one that keeps their best accuracy within 0.2 points). compute saved = steps of
  running everything / steps used.

    python benchmarks/mirror_eval.py --quick      # small zoo (built once, ~minutes), JSON last
    python benchmarks/mirror_eval.py              # 72-run zoo, three predictor kinds, results/mirror_eval.json
    python benchmarks/mirror_eval.py --search     # validation ratio of every smooth-loss setting (MLP; ~minutes)
    python benchmarks/mirror_eval.py --zoo /tmp/metalearner_zoo_mnist100 --kinds mlp --stride 5 --loss-stride 5   # results/mirror_eval_mnist100.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import RESULTS, finish
from metalearner.mirror import CurvePruner, Dataset, build_dataset, fit_ensemble, fit_on_dataset, replay, save_predictor, score, split_runs
from metalearner.mirror.dataset import group_of
from metalearner.mirror.evaluate import plot_history
from metalearner.mirror.models import Ensemble, TrainConfig
from metalearner.mirror.pipeline import plot_heldout, select
from metalearner.observe.store import read_run, read_trajectory
from metalearner.tasks.models import ModelConfig
from metalearner.tasks.task import TaskConfig
from metalearner.train.run import RunConfig
from metalearner.parallel import LocalExecutor
from metalearner.zoo import SuccessiveHalving, run_sweep

CACHE = Path(__file__).resolve().parent / ".cache"
LR_RANGES = {"sgd": (1e-2, 1.0), "momentum": (1e-3, 0.3), "adam": (1e-4, 3e-2), "rmsprop": (1e-4, 1e-2)}
MARGINS = (0.0, 0.01, 0.02, 0.05, 0.1)
# Predictor settings per target (``fit_ensemble`` keywords). smooth_loss's were chosen on the
# validation runs over SEARCH (the MLP's grid; the other kinds reuse it; ``--search`` reprints
# it): short windows (the log-loss smoothers already summarise the longer past) and every 2nd
# step (--loss-stride) won there; a median of 5 seeds; scored by MAE, so trained on the
# median's pinball loss (MAE / 2). final_acc's are the earlier settings, one model per kind.
SETTINGS: dict[str, dict[str, Any]] = {
    "smooth_loss": {"members": 5, "window": 4, "hidden": 32, "layers": 3, "quantiles": [0.5], "fraction": (0.0, 1.0)},
    "final_acc": {"members": 1, "window": 32, "hidden": 32, "layers": 2, "quantiles": None, "fraction": (0.05, 0.95)},
}
SEARCH: dict[str, tuple[int, ...]] = {"window": (4, 8, 16, 32), "hidden": (32, 64), "layers": (2, 3), "stride": (2, 3)}


def sibling_configs(n_bases: int, epochs: float, seed: int = 0) -> list[RunConfig]:
    """``n_bases`` random base configs, each at three learning rates (see the docstring)."""
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(n_bases):
        opt = str(rng.choice(list(LR_RANGES)))
        lo, hi = LR_RANGES[opt]
        centre = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        model = ModelConfig(depth=int(rng.integers(1, 4)), width=int(rng.choice([16, 32, 64, 128])),
                            activation=str(rng.choice(["relu", "tanh", "gelu", "sigmoid", "elu"])))  # fmt: skip
        task = TaskConfig(dataset="digits", model=model, batch_size=int(rng.choice([16, 32])))
        run_seed = int(rng.integers(0, 10_000))
        for f in (0.2, 1.0, 5.0):
            runs.append(RunConfig(task=task, optimizer=opt, lr=float(f"{centre * f:.4g}"), epochs=epochs, eval_every=10, seed=run_seed))
    return runs


def build_zoo(n_bases: int, epochs: float, seed: int = 0, workers: int = 1) -> Path:
    out = CACHE / f"zoo_b{n_bases}_e{epochs:g}_s{seed}"
    with LocalExecutor(workers) as ex:
        run_sweep(sibling_configs(n_bases, epochs, seed), out, ex, progress=False)
    return out


def recorded(zoo: Path, ids: list[str]) -> list[tuple[str, Any, dict[str, Any]]]:
    return [(rid, read_trajectory(zoo / "runs" / rid, format="pandas"), read_run(zoo / "runs" / rid)["config"]) for rid in sorted(ids)]


def brief(rep: dict[str, Any]) -> dict[str, Any]:
    return {"ratio": round(rep["ratio"], 4), "ratio_ci95": [round(v, 4) for v in rep["ratio_ci95"]], "model_mae": round(rep["model"]["mae"], 5),
            "best_baseline": rep["best_baseline"], "best_baseline_mae": round(rep["baselines"][rep["best_baseline"]]["mae"], 5),
            "model_r2": round(rep["model"]["r2"], 4), "n_rows": rep["model"]["n"], "n_runs": rep["n_runs"],
            "beats_best_baseline": rep["beats_best_baseline"]}  # fmt: skip


def noise_floor(ds: Dataset, split: dict[str, str], side: str) -> float:
    """``mean |s_t − s_{t+k/2}|`` over the ``side`` rows scored for ``smooth_loss`` (pairs
    inside one run): the batch-noise part of the target (see the docstring)."""
    idx = select(ds, ["smooth_loss"], split, side)
    s, rid = ds.rows["smooth_loss"].to_numpy(float), ds.rows["run_id"].to_numpy()
    j = idx + ds.config.k // 2
    ok = j < len(s)
    ok[ok] = (rid[j[ok]] == rid[idx[ok]]) & np.isfinite(s[j[ok]])
    return float(np.mean(np.abs(s[idx[ok]] - s[j[ok]])))


def search(ds: Dataset, split: dict[str, str], tc: TrainConfig) -> None:
    """One JSON line per setting of :data:`SEARCH`: the validation ratio of the MLP
    smooth-loss ensemble trained with it (the test runs are not scored); the best last."""
    found = []
    for values in itertools.product(*SEARCH.values()):
        setting = dict(zip(SEARCH, values))
        cfg = {**SETTINGS["smooth_loss"], **setting, "kind": "mlp"}
        m, _ = fit_ensemble(ds, ["smooth_loss"], split, train=tc, **cfg)
        found.append({**setting, "val_ratio": round(score(ds, m, "smooth_loss", split, "val", n_boot=10)["ratio"], 4)})
        print(json.dumps(found[-1]), flush=True)
    print(json.dumps({"best_on_validation": min(found, key=lambda f: f["val_ratio"])}))


def pruning(zoo: Path, split: dict[str, str], model_dir: Path) -> dict[str, Any]:
    """Run-everything vs successive halving vs the curve pruner, replayed on the test runs;
    the curve pruner's margin is chosen on the validation runs."""
    tmp = Path(tempfile.mkdtemp(prefix="mirror_prune_"))
    try:
        val = recorded(zoo, [r for r, s in split.items() if s == "val"])
        test = recorded(zoo, [r for r, s in split.items() if s == "test"])
        val_all = replay(val, None)
        margin, tried = MARGINS[-1], {}
        for m in MARGINS:
            r = replay(val, CurvePruner(model_dir, margin=m))
            tried[m] = {"saved": val_all["steps"] / r["steps"], "best_gap": val_all["best_acc"] - r["best_acc"]}
            if tried[m]["best_gap"] <= 0.002 + 1e-9:
                margin = m
                break
        out: dict[str, Any] = {"margin": margin, "margin_search_on_val": {str(k): {a: round(b, 4) for a, b in v.items()} for k, v in tried.items()}}
        everything = replay(test, None)
        sh = replay(test, SuccessiveHalving(), tmp / "sh")
        curve = replay(test, CurvePruner(model_dir, margin=margin))
        for name, r in (("run_everything", everything), ("successive_halving", sh), ("curve_pruner", curve)):
            out[name] = {"steps": r["steps"], "compute_saved": round(everything["steps"] / r["steps"], 3),
                         "best_acc": round(r["best_acc"], 4), "best_acc_gap_pp": round(100 * (everything["best_acc"] - r["best_acc"]), 2),
                         "stopped": r["stopped"], "runs": len(r["runs"])}  # fmt: skip
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--zoo", type=Path, default=None, help="use this zoo instead of building the synthetic one")
    p.add_argument("--kinds", default=None, help="comma-separated predictor kinds (default: mlp quick, all three full)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stride", type=int, default=3,
                   help="final-accuracy and LR training examples: every STRIDE-th step of each run (larger zoos: larger)")
    p.add_argument("--loss-stride", type=int, default=2, help="smooth-loss training examples: every LOSS_STRIDE-th step")
    p.add_argument("--search", action="store_true",
                   help="print the validation ratio of every smooth-loss setting in SEARCH (how SETTINGS was chosen), then stop")
    a = p.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and the machine is shared
    t0 = time.perf_counter()
    n_bases, epochs = (10, 4) if a.quick else (24, 6)
    zoo = a.zoo or build_zoo(n_bases, epochs, a.seed)
    kinds = (a.kinds or ("mlp" if a.quick else "mlp,gru,transformer")).split(",")
    ds_dir = CACHE / f"dataset_{zoo.name}"
    ds = Dataset.load(ds_dir) if (ds_dir / "rows.parquet").exists() else build_dataset(zoo, ds_dir)
    split = split_runs(ds.runs, "arch", seed=a.seed)
    groups = group_of(ds.runs, "arch")
    held = sorted({g for g, rid in zip(groups, ds.runs["run_id"]) if split[rid] == "test"})
    sides = {s: sum(v == s for v in split.values()) for s in ("train", "val", "test")}
    tc = TrainConfig(epochs=12 if a.quick else 30, lr=1e-3, patience=5, seed=a.seed)
    name = "mirror_eval" if a.zoo is None else f"mirror_eval_{a.zoo.name.removeprefix('metalearner_zoo_')}"  # own results file per zoo
    figs = CACHE / "figures" if a.quick else RESULTS / name
    figs.mkdir(parents=True, exist_ok=True)
    models = CACHE / f"models_{zoo.name}"
    if a.search:
        search(ds, split, tc)
        return

    results: dict[str, Any] = {"smooth_loss": {}, "final_acc_at_20pct": {}}
    trained: dict[str, dict[str, Ensemble]] = {"smooth_loss": {}, "final_acc_at_20pct": {}}
    at = {"smooth_loss": None, "final_acc_at_20pct": 0.2}
    strides = {"smooth_loss": a.loss_stride, "final_acc": a.stride}
    for kind in kinds:
        for key, target in (("smooth_loss", "smooth_loss"), ("final_acc_at_20pct", "final_acc")):
            t = time.perf_counter()
            m, hs = fit_ensemble(ds, [target], split, kind=kind, stride=strides[target], train=tc, **SETTINGS[target])
            trained[key][kind] = m
            results[key][kind] = {"members": len(hs), "epochs": [len(h) for h in hs], "train_s": round(time.perf_counter() - t, 1),
                                  "anchor": m.cfg.anchors[target]}  # fmt: skip
            title = f"{kind}: {target}" + (f" (member 1 of {len(hs)})" if len(hs) > 1 else "")
            plot_history(hs[0], figs / f"{target}_{kind}_training.png", title)
            if target == "final_acc":
                save_predictor(m.models[0], models / f"final_acc_{kind}", hs[0])
    if len(kinds) > 1:
        for key in trained:
            trained[key]["ensemble"] = Ensemble([p for e in trained[key].values() for p in e.models])
            results[key]["ensemble"] = {"members": kinds}
    for key, by_kind in trained.items():
        target = "smooth_loss" if key == "smooth_loss" else "final_acc"
        for kind, m in by_kind.items():
            val_rep = score(ds, m, target, split, "val", at_fraction=at[key], n_boot=10)
            results[key][kind].update(brief(score(ds, m, target, split, at_fraction=at[key], seed=a.seed)),
                                      val_mae=round(val_rep["model"]["mae"], 5))  # fmt: skip
    for kind in kinds:
        plot_heldout(ds, trained["smooth_loss"][kind], "smooth_loss", split, figs / f"smooth_loss_{kind}_heldout.png")
    lr_rep: dict[str, Any] = {"ratio": None, "best_baseline": None, "note": "no learning-rate siblings in this zoo"}
    if ds.runs.loc[ds.runs["run_id"].map(split).eq("train"), "lr_log_ratio"].notna().any():
        m, h = fit_on_dataset(ds, ["lr_log_ratio"], split, kind="mlp", window=32, hidden=32, stride=a.stride, train=tc)
        lr_rep = brief(score(ds, m, "lr_log_ratio", split, seed=a.seed))

    def best_of(target: str) -> tuple[str, dict[str, Any]]:
        """The kind chosen on the validation runs (least validation MAE), not on the test runs."""
        k = min(results[target], key=lambda k: results[target][k]["val_mae"])
        return k, results[target][k]

    prune_kind = min(kinds, key=lambda k: results["final_acc_at_20pct"][k]["val_mae"])  # one saved model
    prune = pruning(zoo, split, models / f"final_acc_{prune_kind}")

    (ks, s), (kf, f) = best_of("smooth_loss"), best_of("final_acc_at_20pct")
    floor = {side: noise_floor(ds, split, side) for side in ("val", "test")}
    val_base = score(ds, trained["smooth_loss"][ks], "smooth_loss", split, "val", n_boot=10)
    floor_ratio = {"val": floor["val"] / val_base["baselines"][val_base["best_baseline"]]["mae"], "test": floor["test"] / s["best_baseline_mae"]}
    summary = {
        "zoo": str(zoo), "runs": len(ds.runs), "rows": len(ds.rows), "split": "held-out architectures", "sides": sides,
        "held_out_architectures": held,
        "smooth_loss_target": f"mean of the next k={ds.config.k} per-batch log losses",
        "smooth_loss_ratio": s["ratio"], "smooth_loss_ratio_ci95": s["ratio_ci95"], "smooth_loss_kind": ks,
        "smooth_loss_best_baseline": s["best_baseline"], "smooth_loss_target_met": s["ratio"] <= 0.7,
        "smooth_loss_val_ratio": round(s["val_mae"] / val_base["baselines"][val_base["best_baseline"]]["mae"], 4),
        "smooth_loss_noise_floor_ratio": {k: round(v, 4) for k, v in floor_ratio.items()},
        "final_acc_ratio": f["ratio"], "final_acc_ratio_ci95": f["ratio_ci95"], "final_acc_kind": kf,
        "final_acc_best_baseline": f["best_baseline"], "final_acc_target_met": f["ratio"] < 1.0,
        "lr_log_ratio_ratio": lr_rep["ratio"], "lr_log_ratio_best_baseline": lr_rep["best_baseline"],
        "pruner_kind": prune_kind, "pruner_margin": prune["margin"],
        "pruner_compute_saved": prune["curve_pruner"]["compute_saved"], "pruner_best_acc_gap_pp": prune["curve_pruner"]["best_acc_gap_pp"],
        "halving_compute_saved": prune["successive_halving"]["compute_saved"], "halving_best_acc_gap_pp": prune["successive_halving"]["best_acc_gap_pp"],
        "pruner_target_met": prune["curve_pruner"]["compute_saved"] >= 2 and prune["curve_pruner"]["best_acc_gap_pp"] <= 0.2,
        "note": "ratios are model MAE / best baseline MAE on held-out-architecture test runs; the predictor kind (or the median "
                "of all kinds' members, 'ensemble') is chosen by validation MAE (every kind in details.per_kind); smooth_loss "
                "predictors are medians of 5 seeds (details.settings, chosen on the validation runs); pruning replays recorded runs",
        "wall_s": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    settings = {t: {**v, "stride": strides[t]} for t, v in SETTINGS.items()}
    finish(name, summary, {"settings": settings, "per_kind": results, "lr_log_ratio": lr_rep, "pruning": prune, "figures": str(figs)},
           quick=a.quick)  # fmt: skip


if __name__ == "__main__":
    main()
