"""Learned-optimizer overhead: per-step wall time of each learned optimizer over its base
optimizer on the same MNIST MLP, in a plain user loop: Opt2Vec and Adam + LR controller over
plain Adam, the learned Schedule-Free optimizer (``learned_sf``) over Schedule-Free AdamW.

Five copies of the README's main model (784-256-256-10 MLP, batch 128, same initial weights)
train side by side in one process — Adam 1e-3, Opt2Vec(lr=1e-3, shipped weights),
Adam 1e-3 wrapped in the shipped LRController, Schedule-Free AdamW 2.5e-3 and
LearnedOptimizer(lr=2.5e-3, shipped weights) — on the same batches, each step written as a
user writes it (:func:`user_step`: forward, loss, ``zero_grad``, backward, ``step``; the
learned ones get ``step(loss=loss)``), not through ``fit``. They take turns in short blocks (a multiple of the policies' observation
interval, so every block pays for its observations), rotating the order every block, so load
from elsewhere on a shared machine hits all alike. A repeat's ratio is the summed time
over its base's; the reported figure is the median over repeats (with the min and max).

    python benchmarks/lopt_overhead.py --quick     # about a minute, prints JSON
    python benchmarks/lopt_overhead.py             # full: writes results/lopt_overhead.json
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from _common import default_data_dir, finish, interleaved_seconds, median
from metalearner.lopt import LRController, Opt2Vec
from metalearner.lopt.learned import LearnedOptimizer
from metalearner.tasks import ModelConfig, TaskConfig, make_task

MODES = ("adam", "opt2vec", "controller", "schedulefree", "learned_sf")
BASE = {"opt2vec": "adam", "controller": "adam", "learned_sf": "schedulefree"}  # each learned mode over its base


def make(mode: str, params):
    if mode == "adam":
        return torch.optim.Adam(params, lr=1e-3)
    if mode == "opt2vec":
        return Opt2Vec(params, lr=1e-3)
    if mode == "controller":
        return LRController(torch.optim.Adam(params, lr=1e-3))
    if mode == "schedulefree":
        import schedulefree

        opt = schedulefree.AdamWScheduleFree(params, lr=2.5e-3)
        opt.train()
        return opt
    return LearnedOptimizer(params, lr=2.5e-3)


def user_step(model, opt, loss_fn, x, y, probe=None):
    """One step of a hand-written training loop."""
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    if getattr(opt, "takes_loss", False):
        opt.step(loss=loss)
    else:
        opt.step()


def measure(task, *, repeats: int, blocks: int, block_steps: int) -> dict[str, list[float]]:
    def make_run(mode: str, r: int):
        model = task.build_model(seed=r)
        return model, make(mode, model.parameters()), None

    return interleaved_seconds(task, MODES, make_run, repeats=repeats, blocks=blocks, block_steps=block_steps, step_fn=user_step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few short repeats (about a minute)")
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    blocks, block_steps = (6, 32) if args.quick else (24, 32)
    task = make_task(TaskConfig(dataset="mnist", model=ModelConfig(depth=2, width=256)), data_dir=args.data_dir)
    measure(task, repeats=1, blocks=3, block_steps=16)  # warm-up
    seconds = measure(task, repeats=repeats, blocks=blocks, block_steps=block_steps)
    steps = blocks * block_steps
    ratios = {m: [t / a for t, a in zip(seconds[m], seconds[BASE[m]])] for m in BASE}
    summary = {
        "model": "mlp 784-256-256-10, batch 128, shipped weights, plain user loop (forward, backward, step)",
        "steps_per_repeat": steps,
        "repeats": repeats,
        "ms_per_step_adam": round(1e3 * median(seconds["adam"]) / steps, 3),
        "ms_per_step_schedulefree": round(1e3 * median(seconds["schedulefree"]) / steps, 3),
        **{f"ratio_{m}": round(median(ratios[m]), 4) for m in BASE},
        **{f"ratio_{m}_min_max": [round(min(ratios[m]), 4), round(max(ratios[m]), 4)] for m in BASE},
        "base": BASE,
        "target": 1.10,
        "meets_target": max(median(ratios[m]) for m in BASE) <= 1.10,  # all three
        "meets_target_each": {m: median(ratios[m]) <= 1.10 for m in BASE},
    }
    finish("lopt_overhead", summary, {"seconds": seconds, "ratios": ratios}, quick=args.quick)


if __name__ == "__main__":
    main()
