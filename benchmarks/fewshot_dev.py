"""Few-shot development cell: chooses the image tasks' class augmentation away from the benchmark.

``fewshot.py`` scores 5-way episodes on unseen MNIST and Fashion-MNIST classes; a setting chosen
there would be tuned on the cells it is reported on. This runs the same protocol (meta-train on
classes 0-4 of the training images, meta-test on classes 5-9 of the test images, 5-way, inner
lr 0.1, meta-batch 10, 800 meta-iterations, second order, 600 test tasks) on scikit-learn's
8x8 digits, a data set that benchmark never uses, for MAML and Meta-SGD with and without the
prototype head, 1- and 5-shot (8 cells), and each class augmentation (``none``; ``rotations``:
each training class turned by 0/90/180/270° is a class of its own, 20 classes; ``dihedral``:
those and their transposes, 40 classes).

The rule, fixed in writing before the first run: a candidate is adopted if its mean accuracy
over the 8 cells is at least 2 points above ``none`` and no cell drops by more than 1 point;
if both pass, the one with the higher mean.

    python benchmarks/fewshot_dev.py --quick   # ~1 minute, prints JSON
    python benchmarks/fewshot_dev.py           # full (~4 minutes): writes results/fewshot_dev.json
    python benchmarks/fewshot_dev.py --sensitivity   # (~3 minutes) writes results/fewshot_dev_sensitivity.json

``--sensitivity`` asks why the meta-meta level removes most of the sensitivity to the
meta-learning rate on the sinusoid but not on image episodes (``fewshot.py``): the same cell,
5-way 1-shot, MAML, Meta-SGD and the meta-meta variant with the meta-learning rate (Adam's,
1e-3) 10x too low, as is and 10x too high, each scored on episodes of the classes it was
meta-trained on (its training objective) and on the unseen classes, with its final meta-loss
and (meta-meta) the meta-learning rate it learned. A diagnostic: it chooses nothing.
"""

from __future__ import annotations

import torch

from _common import finish, parse_args, spread_pp
from metalearner.meta.fewshot import AUGMENTS, FewShotConfig, evaluate, image_splits, meta_train, train_and_evaluate
from metalearner.tasks import load_dataset

METHODS = ("maml+prototypes", "meta_sgd+prototypes", "maml", "meta_sgd")
SHOTS = (1, 5)
MARGIN_PP, MAX_DROP_PP = 2.0, 1.0


FACTORS = (0.1, 1.0, 10.0)  # --sensitivity: the meta-learning rate over the default


def sensitivity(digits, iterations: int, n_tasks: int) -> dict:
    """``--sensitivity`` (the module docstring): accuracy on seen and unseen classes per method and rate."""
    train, test = image_splits(digits, n_way=5, k_shot=1)
    base = FewShotConfig().outer_lr
    rows: dict[str, dict[str, dict]] = {}
    for method in ("maml", "meta_sgd", "meta_meta"):
        for x in FACTORS:
            config = FewShotConfig(method=method, iterations=iterations, inner_lr=0.1, meta_batch=10, outer_lr=base * x)
            learner, history = meta_train(train, config)
            row = {"seen_acc": evaluate(learner, train, n_tasks=n_tasks, steps=1)["mean"],
                   "unseen_acc": evaluate(learner, test, n_tasks=n_tasks, steps=1)["mean"],
                   "final_meta_loss": history[-1]["meta_loss"], "final_outer_lr": history[-1]["outer_lr"]}  # fmt: skip
            rows.setdefault(method, {})[f"x{x:g}"] = {k: round(v, 4) if k != "final_outer_lr" else v for k, v in row.items()}
            print(method, f"x{x:g}", rows[method][f"x{x:g}"], flush=True)
    spread = {m: {k: round(spread_pp(r[k] for r in per.values()), 2) for k in ("seen_acc", "unseen_acc")} for m, per in rows.items()}
    return {"data": "scikit-learn digits 8x8, 5-way 1-shot, meta-train classes 0-4 (dihedral), unseen classes 5-9",
            "meta_iterations": iterations, "test_tasks": n_tasks, "outer_lr_factors": list(FACTORS), "runs": rows,
            "spread_pp": spread}  # fmt: skip


def main() -> None:
    args = parse_args(__doc__, "a few meta-iterations per cell (about a minute)",
                      extra=lambda ap: ap.add_argument("--sensitivity", action="store_true", help="the diagnostic (docstring)"))  # fmt: skip
    torch.set_num_threads(1)
    iterations, n_tasks = (20, 100) if args.quick else (800, 600)
    digits = load_dataset("digits")
    if args.sensitivity:
        finish("fewshot_dev_sensitivity", sensitivity(digits, iterations, n_tasks), {"defaults": FewShotConfig().to_dict()},
               quick=args.quick)  # fmt: skip
        return
    acc: dict[str, dict[str, float]] = {a: {} for a in AUGMENTS}
    for method in METHODS:
        name, _, head = method.partition("+")
        for k in SHOTS:
            for augment in AUGMENTS:
                train, test = image_splits(digits, n_way=5, k_shot=k, augment=augment)
                config = FewShotConfig(method=name, head=head or "learned", iterations=iterations, inner_lr=0.1, meta_batch=10)
                result = train_and_evaluate(train, test, config, n_tasks=n_tasks)
                acc[augment][f"{method} {k}-shot"] = round(100 * result["mean"], 2)
                print(f"{method} {k}-shot {augment}: {result['mean']:.4f} ({result['train_seconds']:.0f}s)", flush=True)
    mean = {a: round(sum(v.values()) / len(v), 2) for a, v in acc.items()}
    worst = {a: round(min(v[c] - acc["none"][c] for c in v), 2) for a, v in acc.items() if a != "none"}
    passing = [a for a in worst if mean[a] - mean["none"] >= MARGIN_PP and worst[a] >= -MAX_DROP_PP]
    summary = {
        "data": "scikit-learn digits 8x8, meta-train classes 0-4 (training images), meta-test 5-9 (test images), 5-way",
        "meta_iterations": iterations,
        "test_tasks": n_tasks,
        "acc_pct": acc,
        "mean_acc_pct": mean,
        "worst_cell_change_pp": worst,
        "rule": f"mean over the {len(METHODS) * len(SHOTS)} cells >= {MARGIN_PP} pp above 'none', no cell more than "
                f"{MAX_DROP_PP} pp below it; of those passing, the higher mean",
        "choice": max(passing, key=mean.get) if passing else "none",
    }  # fmt: skip
    finish("fewshot_dev", summary, {"defaults": FewShotConfig().to_dict()}, quick=args.quick)


if __name__ == "__main__":
    main()
