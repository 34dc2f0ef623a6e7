"""Tower robustness: final test accuracy of MNIST MLPs over initial learning rates 1e-5 .. 1.

Plain SGD and Adam against hyperoptimizer towers of height 1, 2 and 3 on each of them
(:class:`metalearner.meta.towers.Tower`, default settings: hyper-Adam levels, level-1 step
0.03, each level above 10x smaller, a 300-step warm-up, a ceiling on each tensor's step
relative to its weights, the base's learning rate learned). Every method starts
from each of six learning rates and trains the same 784-128-128-10 ReLU MLP (same initial
weights, same batches) with ``fit``; the spread is max − min final test accuracy over the six
starts, for each of three seeds (initial weights and batch order; ``--quick``: one), with the
worst and the median over seeds. Step time: the methods train side by side in blocks (``interleaved_seconds``), so load
from elsewhere on the machine hits them alike; the ratio is to the plain base optimizer.

Goal (issue 11): a height-2 or -3 tower keeps the spread under 1 percentage point where plain
Adam's is tens of points, at under 5% extra time per level; met here only if it holds on every
seed (until session 21 the benchmark ran seed 0 alone, and one seed's spread flatters: a start
that diverges on one seed of three is the towers' real failure mode).

    python benchmarks/tower_robustness.py --quick   # ~1 minute, prints JSON
    python benchmarks/tower_robustness.py           # full: writes results/tower_robustness.json
"""

from __future__ import annotations

import time

import torch

from _common import finish, interleaved_seconds, median, parse_args, spread_pp
from metalearner.meta.towers import make_tower
from metalearner.tasks import ModelConfig, TaskConfig, make_task
from metalearner.train import evaluate, fit

LRS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
HEIGHTS = (1, 2, 3)
BASES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
GOAL_SPREAD_PP, GOAL_TIME_PER_LEVEL = 1.0, 0.05
SEEDS = (0, 1, 2)  # initial weights and batch order; the spread is a claim about every one of them
FAILED_ACC = 0.2  # a final test accuracy below it: the run diverged or its network died (chance: 0.1), or (--quick) had not started


def make_optimizer(method: str, params, lr: float, **tower_options) -> torch.optim.Optimizer:
    """``sgd`` / ``adam``, or ``tower_<base>_h<height>`` (``_all``: also momentum/betas)."""
    if method in BASES:
        return BASES[method](params, lr=lr)
    _, base, height, *learn = method.split("_")
    return make_tower(params, lr, base=base, height=int(height[1:]), learn="all" if learn else "lr", **tower_options)


def methods() -> list[str]:
    return [m for base in BASES for m in (base, *(f"tower_{base}_h{h}" for h in HEIGHTS))]


def accuracies(task, method: str, steps: int, seed: int = 0, **tower_options) -> list[float]:
    """Final test accuracy from each initial learning rate (same weights and batches, those of
    ``seed``); a run that diverged (``fit`` stops at a non-finite loss) scores what its model
    scores then."""
    out = []
    for lr in LRS:
        model = task.build_model(seed=seed)
        result = fit(model, make_optimizer(method, model.parameters(), lr, **tower_options), task, steps=steps, seed=seed)
        if "test_acc" not in result.final:
            result.final["test_acc"] = evaluate(model, task.data.x_test, task.data.y_test, task.loss_fn)[1]
        out.append(float(result.final["test_acc"]))
    return out


def failed_runs(per_seed: list[list[float]]) -> int:
    """Runs (over seeds and starts) that ended below ``FAILED_ACC``."""
    return sum(x < FAILED_ACC for accs in per_seed for x in accs)


def step_time_ratios(task, *, repeats: int, blocks: int, block_steps: int) -> dict[str, float]:
    """Median seconds of each method over its plain base, trained side by side."""
    ratios = {}
    for base in BASES:
        modes = (base, *(f"tower_{base}_h{h}" for h in HEIGHTS), f"tower_{base}_h1_all")

        def make_run(mode: str, r: int):
            model = task.build_model(seed=r)
            return model, make_optimizer(mode, model.parameters(), 1e-3), None

        interleaved_seconds(task, modes, make_run, repeats=1, blocks=2, block_steps=5)  # warm-up
        seconds = interleaved_seconds(task, modes, make_run, repeats=repeats, blocks=blocks, block_steps=block_steps)
        for mode in modes[1:]:
            ratios[mode] = median([t / b for t, b in zip(seconds[mode], seconds[base])])
    return ratios


def main() -> None:
    args = parse_args(__doc__, "fewer steps and a subsample (about a minute)")
    torch.set_num_threads(1)
    steps, n_train, width = (150, 5000, 64) if args.quick else (1500, None, 128)
    config = TaskConfig(dataset="mnist", model=ModelConfig(depth=2, width=width), batch_size=128, n_train=n_train)
    task = make_task(config, data_dir=args.data_dir)

    seeds = (0,) if args.quick else SEEDS
    t0 = time.perf_counter()
    acc = {m: [accuracies(task, m, steps, seed) for seed in seeds] for m in methods()}
    train_seconds = time.perf_counter() - t0
    timing = dict(repeats=2, blocks=4, block_steps=10) if args.quick else dict(repeats=5, blocks=20, block_steps=25)
    ratios = step_time_ratios(task, **timing)
    spread = {m: [spread_pp(a) for a in per_seed] for m, per_seed in acc.items()}
    per_level = {f"tower_{b}": [ratios[f"tower_{b}_h{h}"] - (ratios.get(f"tower_{b}_h{h - 1}", 1.0)) for h in HEIGHTS]
                 for b in BASES}  # fmt: skip
    worst = {m: max(s) for m, s in spread.items()}
    best_tower = min((worst[f"tower_{b}_h{h}"], median(spread[f"tower_{b}_h{h}"]), f"tower_{b}_h{h}") for b in BASES for h in (2, 3))
    summary = {
        "model": f"mlp 784-{width}-{width}-10 relu, batch 128, {steps} steps" + (f", {n_train} train" if n_train else ""),
        "initial_lrs": list(LRS),
        "seeds": list(seeds),
        "test_acc": {m: [[round(x, 4) for x in a] for a in per_seed] for m, per_seed in acc.items()},  # [seed][initial lr]
        "spread_pp": {m: [round(x, 2) for x in s] for m, s in spread.items()},  # one per seed
        "median_spread_pp": {m: round(median(s), 2) for m, s in spread.items()},
        "worst_spread_pp": {m: round(x, 2) for m, x in worst.items()},
        "failed_runs": {m: failed_runs(per_seed) for m, per_seed in acc.items()},
        "step_time_ratio": {m: round(r, 4) for m, r in ratios.items()},
        "extra_time_per_level": {b: [round(x, 4) for x in v] for b, v in per_level.items()},
        "best_tall_tower": {"method": best_tower[2], "worst_spread_pp": round(best_tower[0], 2), "median_spread_pp": round(best_tower[1], 2)},
        "goal": f"height 2/3 spread < {GOAL_SPREAD_PP} pp (on every seed) at < {GOAL_TIME_PER_LEVEL:.0%} extra time per level",
        "meets_spread_goal": best_tower[0] < GOAL_SPREAD_PP,
        "meets_time_goal": all(x < GOAL_TIME_PER_LEVEL for v in per_level.values() for x in v),
        "train_seconds": round(train_seconds, 1),
    }
    finish("tower_robustness", summary, {"config": config.to_dict(), "timing": timing}, quick=args.quick)


if __name__ == "__main__":
    main()
