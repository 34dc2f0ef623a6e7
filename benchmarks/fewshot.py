"""Few-shot meta-learning: MAML, Meta-SGD and the meta-meta variant, and their sensitivity to
the meta-learning rate.

Sinusoid regression (amplitude 0.1-5, phase 0-π, x in [-5, 5]; the 1-40-40-1 ReLU MLP; K = 5
and 10 shots; MSE on 100 query points after one inner step, as in the Meta-SGD paper) and
5-way 1- and 5-shot classification on MNIST and Fashion-MNIST, meta-trained on classes 0-4
(training images, each under the square's eight symmetries as a class of its own: the default
``augment="dihedral"``, 40 classes) and meta-tested on classes 5-9 (test images, upright); all
second order. ``METHOD@none`` is the same method meta-trained on the five classes as they are
(the augmentation's ablation). Every score
is a mean over fresh test tasks with a 95% interval; ``no_meta_training`` adapts the same
network from its random initialisation (what meta-training adds; on images also with the
prototype head, ``no_meta_training+prototypes``), and on images
``nearest_centroid`` labels each query by the nearest class mean of the support images, on the
same episodes (nothing learned: what a meta-learned network must beat). On images each method
also runs with the prototype head (``METHOD+prototypes``: the output layer set from the support
set's class means in feature space before adapting, ProtoMAML). Sensitivity: each method is rerun with its
meta-learning rate (Adam's, 1e-3) 10x too high and 10x too low, on sinusoid K = 5 and MNIST
5-way 1-shot; ``meta_meta`` starts from those rates and learns its own. Every rate is run with
meta-training seeds 0, 1 and 2 (one seed is not enough: ``docs/meta.md``), and the
sensitivity is the spread (max - min) of the three rates' seed means. The runs go to two
processes; ``seconds`` adds up their meta-training times (about twice the wall time).

Calibration (Meta-SGD paper, Li et al. 2017, Table 1, far longer meta-training): sinusoid
MSE MAML 1.13 (K=5) / 0.77 (K=10), Meta-SGD 0.90 / 0.53. Our meta-iterations are scaled so
one meta-training takes about half a minute of one CPU core; the result says how many were run.

    python benchmarks/fewshot.py --quick   # ~1 minute, prints JSON
    python benchmarks/fewshot.py           # full (~30 min on 2 cores): writes results/fewshot.json
    python benchmarks/fewshot.py --hyper-source heldout   # (~40 min) results/fewshot_heldout.json

``--hyper-source heldout`` runs ``meta_meta`` with its hypergradient from episodes of a training
class held out of meta-training (``FewShotConfig.hyper_source``; on the ``@none`` cells, where
five classes leave none to spare for 5-way episodes, from the training meta-loss as by default).

``--backbone conv`` runs the four image cells with the conv backbone (``ClassSplit.model``: three
3x3 conv blocks of 32 channels with max-pooling, then a linear layer) instead of the MLP, for the
three methods with the prototype head, against ``no_meta_training+prototypes`` (the same conv
network untrained) and ``nearest_centroid``; no ablation and no sensitivity runs (a conv
meta-training costs ten MLP ones): ``results/fewshot_conv.json`` (~75 min on 2 cores).
``--backbone conv --sensitivity`` runs those three methods' sensitivity on MNIST 1-shot as above,
with meta-training seeds 0 and 1 (``CONV_SEEDS``; 18 meta-trainings of about 8 minutes):
``results/fewshot_conv_sensitivity.json`` (~75 min on 2 cores). Full runs are cached one by one
in ``benchmarks/.cache/fewshot``, so an interrupted run resumes, and the two modes share
their seed-0 runs at β.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch

from _common import ROOT, finish, parse_args, run_parallel, seed_means
from metalearner.atomic import write_json
from metalearner.meta.fewshot import BACKBONES, HYPER_SOURCES, METHODS, FewShotConfig, evaluate, init_learner, make_families, nearest_centroid, train_and_evaluate

PAPER_MSE = {("maml", 5): 1.13, ("maml", 10): 0.77, ("meta_sgd", 5): 0.90, ("meta_sgd", 10): 0.53}
# setting -> (task, k_shot, config shared by the methods)
SETTINGS = {
    "sinusoid_k5": ("sinusoid", 5, dict(inner_lr=0.01, meta_batch=25)),
    "sinusoid_k10": ("sinusoid", 10, dict(inner_lr=0.01, meta_batch=25)),
    "mnist_5way_1shot": ("mnist", 1, dict(inner_lr=0.1, meta_batch=10)),
    "mnist_5way_5shot": ("mnist", 5, dict(inner_lr=0.1, meta_batch=10)),
    "fashion_5way_1shot": ("fashion_mnist", 1, dict(inner_lr=0.1, meta_batch=10)),
    "fashion_5way_5shot": ("fashion_mnist", 5, dict(inner_lr=0.1, meta_batch=10)),
}
SENSITIVITY = ("sinusoid_k5", "mnist_5way_1shot")
FACTORS = {"x0.1": 0.1, "x1": 1.0, "x10": 10.0}
SEEDS = (0, 1, 2)  # meta-training seeds of the sensitivity runs (the cells: seed 0)
CONV_SEEDS = (0, 1)  # the conv backbone's (each of its meta-trainings costs ten of the MLP's)
CACHE = ROOT / "benchmarks" / ".cache" / "fewshot"


def run(setting: str, method: str, outer_lr: float, iterations: dict[str, int], n_tasks: int, data_dir: str | None,
        seed: int = 0, hyper_source: str = FewShotConfig.hyper_source, backbone: str = "mlp", cache: bool = False) -> dict:  # fmt: skip
    """``method`` is a few-shot method, or ``METHOD+prototypes`` for it with the prototype head;
    ``...@none`` meta-trains without the class augmentation. ``cache``: keep the result in
    ``CACHE`` and reuse it (full runs)."""
    task, k, shared = SETTINGS[setting]
    key = f"{setting}-{method}-{outer_lr:g}-{iterations[task.split('_')[0]]}-{n_tasks}-{seed}-{hyper_source}-{backbone}"
    cached = CACHE / f"{key}.json"
    if cache and cached.exists():
        return json.loads(cached.read_text())
    spec, _, augment = method.partition("@")
    train, test = make_families(task, k_shot=k, data_dir=data_dir, augment=augment or "dihedral", backbone=backbone)
    name, _, head = spec.partition("+")
    # without the augmentation, five training classes leave none to hold out for 5-way episodes: the level reads the training loss
    source = {"hyper_source": hyper_source} if name == "meta_meta" and augment != "none" else {}
    config = FewShotConfig(method=name, head=head or "learned", outer_lr=outer_lr, iterations=iterations[task.split("_")[0]],
                           seed=seed, **shared, **source)  # fmt: skip
    result = train_and_evaluate(train, test, config, n_tasks=n_tasks)
    print(f"{setting} {method} lr={outer_lr:g} seed {seed}: {result['metric']} {result['mean']:.4f} "
          f"({result['train_seconds']:.0f}s)", flush=True)  # fmt: skip
    if cache:
        CACHE.mkdir(parents=True, exist_ok=True)
        write_json(cached, result)
    return result


def sensitivity_summary(runs: dict[str, dict[str, list[dict]]]) -> dict:
    """Per method: each rate's seed mean, the seeds' scores, the spread of the seed means and
    (``meta_meta``) the meta-learning rates it learned; and (``meta_meta_spread_over``) the
    meta-meta level's spread over MAML's and Meta-SGD's."""
    out: dict[str, Any] = {}
    for m, by_rate in runs.items():
        scores = {f: [r["mean"] for r in per_seed] for f, per_seed in by_rate.items()}
        means = seed_means(scores)
        out[m] = {**{f: round(v, 4) for f, v in means.items()}, "per_seed": {f: [round(x, 4) for x in v] for f, v in scores.items()},
                  "spread": round(max(means.values()) - min(means.values()), 4),
                  "learned_outer_lr": {f: [r["history"][-1]["outer_lr"] for r in per_seed] for f, per_seed in by_rate.items()}
                  if m == "meta_meta" else None}  # fmt: skip
    out["meta_meta_spread_over"] = {m: round(out["meta_meta"]["spread"] / out[m]["spread"], 3) if out[m]["spread"] else None
                                    for m in ("maml", "meta_sgd")}  # fmt: skip
    return out


def score(r: dict) -> dict:
    """A cell's mean and 95% interval, rounded for the summary."""
    return {"mean": round(r["mean"], 4), "ci95": [round(x, 4) for x in r["ci95"]]}


def without_meta_training(setting: str, n_tasks: int, data_dir, head: str = "learned", backbone: str = "mlp") -> dict:
    """The baseline: the same network from its random initialisation, adapted the same way
    (with ``head="prototypes"``: what the prototype head gives before any meta-training)."""
    task, k, shared = SETTINGS[setting]
    train, test = make_families(task, k_shot=k, data_dir=data_dir, backbone=backbone)
    config = FewShotConfig(head=head, **shared)
    torch.manual_seed(config.seed)  # the initial weights meta-training starts from
    return evaluate(init_learner(train.model(), config), test, n_tasks=n_tasks, steps=config.inner_steps)


def main() -> None:
    def extra(ap: Any) -> None:
        ap.add_argument("--hyper-source", choices=HYPER_SOURCES, default=FewShotConfig.hyper_source,
                        help="meta_meta's hypergradient (default: FewShotConfig's)")
        ap.add_argument("--backbone", choices=BACKBONES, default="mlp", help="conv: the image cells with the conv backbone (above)")
        ap.add_argument("--sensitivity", action="store_true", help="with --backbone conv: its sensitivity runs on MNIST 1-shot (above)")

    args = parse_args(__doc__, "a few meta-iterations per cell (about a minute)", extra=extra)
    if args.sensitivity and args.backbone == "mlp":
        raise SystemExit("error: --sensitivity goes with --backbone conv (the MLP's sensitivity runs are part of the default run)")
    if args.backbone != "mlp":
        return conv_sensitivity(args) if args.sensitivity else conv_cells(args)
    torch.set_num_threads(1)
    # meta-iterations per family: sinusoid / image episodes
    iterations = {"sinusoid": 20, "mnist": 5, "fashion": 5} if args.quick else {"sinusoid": 8000, "mnist": 800, "fashion": 800}
    n_tasks = 50 if args.quick else 600
    base_lr = FewShotConfig().outer_lr

    def methods(setting: str) -> tuple[str, ...]:
        if SETTINGS[setting][0] == "sinusoid":
            return METHODS
        image = (*METHODS, *(f"{m}+prototypes" for m in METHODS))
        return (*image, *(f"{m}@none" for m in image))

    seeds = SEEDS[:1] if args.quick else SEEDS
    keys = [(s, m, "x1", 0) for s in SETTINGS for m in methods(s)]  # the cells (seed 0) are also the sensitivity's x1, seed 0
    keys += [(s, m, f, seed) for s in SENSITIVITY for m in METHODS for f in FACTORS for seed in seeds if (f, seed) != ("x1", 0)]
    jobs = [(s, m, base_lr * FACTORS[f], iterations, n_tasks, args.data_dir, seed, args.hyper_source, "mlp", not args.quick)
            for s, m, f, seed in keys]  # fmt: skip
    results = dict(zip(keys, run_parallel(run, jobs)))
    cells = {s: {m: results[s, m, "x1", 0] for m in methods(s)} for s in SETTINGS}
    for s, (task, k, _) in SETTINGS.items():
        cells[s]["no_meta_training"] = without_meta_training(s, n_tasks, args.data_dir)
        if task != "sinusoid":
            cells[s]["no_meta_training+prototypes"] = without_meta_training(s, n_tasks, args.data_dir, head="prototypes")
            cells[s]["nearest_centroid"] = nearest_centroid(make_families(task, k_shot=k, data_dir=args.data_dir)[1], n_tasks=n_tasks)
    sensitivity = {s: {m: {f: [results[s, m, f, seed] for seed in seeds] for f in FACTORS} for m in METHODS} for s in SENSITIVITY}

    summary = {
        "meta_iterations": iterations,
        "test_tasks": n_tasks,
        "scores": {s: {m: score(r) for m, r in c.items()} for s, c in cells.items()},
        "paper_mse": {f"{m}_k{k}": v for (m, k), v in PAPER_MSE.items()},
        "matches_paper": {f"{m}_k{k}": cells[f"sinusoid_k{k}"][m]["mean"] <= v for (m, k), v in PAPER_MSE.items()},
        "sensitivity": {s: sensitivity_summary(per) for s, per in sensitivity.items()},
        "sensitivity_seeds": list(seeds),
        "seconds": round(sum(r["train_seconds"] for r in results.values()), 1),  # of meta-training, every run once
    }  # fmt: skip
    details = {"settings": {s: [t, k, shared] for s, (t, k, shared) in SETTINGS.items()}, "cells": cells,
               "sensitivity_runs": sensitivity, "defaults": dataclasses.asdict(FewShotConfig())}  # fmt: skip
    summary["meta_meta_hyper_source"] = args.hyper_source
    name = "fewshot" if args.hyper_source == FewShotConfig.hyper_source else f"fewshot_{args.hyper_source}"
    finish(name, summary, details, quick=args.quick)


def conv_cells(args: Any) -> None:
    """``--backbone conv``: the image cells, the prototype-head methods and their baselines."""
    torch.set_num_threads(1)
    iterations = {"mnist": 3, "fashion": 3} if args.quick else {"mnist": 800, "fashion": 800}
    n_tasks = 50 if args.quick else 600
    settings = [s for s, (task, _, _) in SETTINGS.items() if task != "sinusoid"][: 1 if args.quick else None]
    methods = [f"{m}+prototypes" for m in METHODS]
    keys = [(s, m) for s in settings for m in methods]
    jobs = [(s, m, FewShotConfig().outer_lr, iterations, n_tasks, args.data_dir, 0, args.hyper_source, args.backbone, not args.quick)
            for s, m in keys]  # fmt: skip
    cells: dict[str, dict[str, Any]] = {s: {} for s in settings}
    for (s, m), r in zip(keys, run_parallel(run, jobs)):
        cells[s][m] = r
    for s in settings:
        task, k, _ = SETTINGS[s]
        cells[s]["no_meta_training+prototypes"] = without_meta_training(s, n_tasks, args.data_dir, head="prototypes", backbone=args.backbone)
        cells[s]["nearest_centroid"] = nearest_centroid(make_families(task, k_shot=k, data_dir=args.data_dir)[1], n_tasks=n_tasks)
    summary = {
        "backbone": args.backbone,
        "meta_iterations": iterations,
        "test_tasks": n_tasks,
        "scores": {s: {m: score(r) for m, r in c.items()} for s, c in cells.items()},
        "best_method_above_nearest_centroid": {s: max(c[m]["mean"] for m in methods) > c["nearest_centroid"]["mean"] for s, c in cells.items()},
        "seconds": round(sum(cells[s][m]["train_seconds"] for s, m in keys), 1),
    }  # fmt: skip
    details = {"settings": {s: list(SETTINGS[s]) for s in settings}, "cells": cells, "defaults": dataclasses.asdict(FewShotConfig())}
    finish(f"fewshot_{args.backbone}", summary, details, quick=args.quick)


def conv_sensitivity(args: Any) -> None:
    """``--backbone conv --sensitivity``: each prototype-head method on MNIST 1-shot with the conv
    backbone at β/10, β and 10β, meta-training seeds ``CONV_SEEDS``."""
    torch.set_num_threads(1)
    iterations = {"mnist": 3} if args.quick else {"mnist": 800}
    n_tasks = 50 if args.quick else 600
    seeds, setting = CONV_SEEDS[:1] if args.quick else CONV_SEEDS, "mnist_5way_1shot"
    keys = [(m, f, seed) for seed in seeds for f in FACTORS for m in METHODS]  # seed-major: an interrupted run has whole seeds
    jobs = [(setting, f"{m}+prototypes", FewShotConfig().outer_lr * FACTORS[f], iterations, n_tasks, args.data_dir, seed,
             args.hyper_source, args.backbone, not args.quick) for m, f, seed in keys]  # fmt: skip
    results = dict(zip(keys, run_parallel(run, jobs)))
    runs = {m: {f: [results[m, f, seed] for seed in seeds] for f in FACTORS} for m in METHODS}
    summary = {
        "backbone": args.backbone,
        "setting": setting,
        "head": "prototypes",
        "meta_iterations": iterations,
        "test_tasks": n_tasks,
        "sensitivity": sensitivity_summary(runs),
        "sensitivity_seeds": list(seeds),
        "seconds": round(sum(r["train_seconds"] for r in results.values()), 1),
    }
    details = {"settings": {setting: list(SETTINGS[setting])}, "sensitivity_runs": runs, "defaults": dataclasses.asdict(FewShotConfig())}
    finish(f"fewshot_{args.backbone}_sensitivity", summary, details, quick=args.quick)


if __name__ == "__main__":
    main()
