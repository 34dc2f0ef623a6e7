"""Learned-optimizer overhead: per-step wall time of Opt2Vec and of Adam + LR controller over
plain Adam on the same MNIST MLP, in a plain user loop.

Three copies of the README's main model (784-256-256-10 MLP, batch 128, same initial weights)
train side by side in one process — Adam 1e-3, Opt2Vec(lr=1e-3, shipped weights),
Adam 1e-3 wrapped in the shipped LRController — on the same batches, each step written as a
user writes it (:func:`user_step`: forward, loss, ``zero_grad``, backward, ``step``; the
learned ones get ``step(loss=loss)``), not through ``fit``. They take turns in short blocks (a multiple of the policies' observation
interval, so every block pays for its observations), rotating the order every block, so load
from elsewhere on a shared machine hits all three alike. A repeat's ratio is the summed time
over Adam's; the reported figure is the median over repeats (with the min and max).

    python benchmarks/lopt_overhead.py --quick     # about a minute, prints JSON
    python benchmarks/lopt_overhead.py             # full: writes results/lopt_overhead.json
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from _common import default_data_dir, finish, interleaved_seconds, median
from metalearner.lopt import LRController, Opt2Vec
from metalearner.tasks import ModelConfig, TaskConfig, make_task

MODES = ("adam", "opt2vec", "controller")


def make(mode: str, params):
    if mode == "adam":
        return torch.optim.Adam(params, lr=1e-3)
    if mode == "opt2vec":
        return Opt2Vec(params, lr=1e-3)
    return LRController(torch.optim.Adam(params, lr=1e-3))


def user_step(model, opt, loss_fn, x, y, probe=None):
    """One step of a hand-written training loop."""
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    if isinstance(opt, torch.optim.Adam):
        opt.step()
    else:
        opt.step(loss=loss)


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
    ratios = {m: [t / a for t, a in zip(seconds[m], seconds["adam"])] for m in MODES[1:]}
    summary = {
        "model": "mlp 784-256-256-10, batch 128, lr 1e-3, shipped weights, plain user loop (forward, backward, step)",
        "steps_per_repeat": steps,
        "repeats": repeats,
        "ms_per_step_adam": round(1e3 * median(seconds["adam"]) / steps, 3),
        "ratio_opt2vec": round(median(ratios["opt2vec"]), 4),
        "ratio_opt2vec_min_max": [round(min(ratios["opt2vec"]), 4), round(max(ratios["opt2vec"]), 4)],
        "ratio_controller": round(median(ratios["controller"]), 4),
        "ratio_controller_min_max": [round(min(ratios["controller"]), 4), round(max(ratios["controller"]), 4)],
        "target": 1.10,
        "meets_target": max(median(ratios["opt2vec"]), median(ratios["controller"])) <= 1.10,
    }
    finish("lopt_overhead", summary, {"seconds": seconds, "ratios": ratios}, quick=args.quick)


if __name__ == "__main__":
    main()
