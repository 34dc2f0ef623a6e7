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
"""

from __future__ import annotations

import torch

from _common import finish, parse_args
from metalearner.meta.fewshot import AUGMENTS, FewShotConfig, image_splits, train_and_evaluate
from metalearner.tasks import load_dataset

METHODS = ("maml+prototypes", "meta_sgd+prototypes", "maml", "meta_sgd")
SHOTS = (1, 5)
MARGIN_PP, MAX_DROP_PP = 2.0, 1.0


def main() -> None:
    args = parse_args(__doc__, "a few meta-iterations per cell (about a minute)")
    torch.set_num_threads(1)
    iterations, n_tasks = (20, 100) if args.quick else (800, 600)
    digits = load_dataset("digits")
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
