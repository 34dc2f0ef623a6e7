"""The learned optimizers on network kinds no meta-training and no design choice ever saw.

Every task family of meta-training and every benchmark cell is an MLP, a plain CNN or a GRU
without normalisation layers. Here, as a user would try them: a pre-norm Transformer encoder
on MNIST-1D (the signal cut into 10 tokens; and into 8, added afterwards), a ResNet with BatchNorm on the 8x8 digits, and a
784-512-512-10 MLP with LayerNorm, GELU and dropout on Fashion-MNIST (all 50,000 training
images). MNIST-1D and digits are in meta-training's data sets, Fashion-MNIST in the
benchmark's; the networks are new. Each method runs at its defaults (no tuning: the
self-tuning ruleset), one run at the full budget, in :func:`metalearner.train.fit` (Schedule-Free's
eval/train switching included), on the seeds given. The target is the lower median over the
seeds of Adam 1e-3's final validation accuracy, as in the time-to-target benchmark. Reported
per method: median epochs to the target (``inf``, ``null`` in JSON: not reached by most
seeds) and how many seeds reach it, median final validation and test accuracy, and the largest
drop of validation accuracy below its best so far after the first epoch (the safety criterion:
a learned optimizer must not wreck a run; a diverged run drops to 0). Schedule-Free and
``learned_sf`` are evaluated at their averaged weights, whose curves are smoother than Adam's:
a drop of a point or two is noise, a collapse is not. BatchNorm's statistics are the ones
training left (Schedule-Free's authors suggest recomputing them at the averaged weights; here
it moved digits' accuracy by at most about a point either way). Runs are cached, so a rerun
resumes.

    python benchmarks/unseen_networks.py --quick   # one task, two methods, a few epochs (under a minute)
    python benchmarks/unseen_networks.py           # 4 tasks x 6 methods x 3 seeds: results/unseen_networks.json (~40 min on one worker)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from _common import ROOT, default_data_dir, finish, run_parallel
from metalearner.atomic import write_json
from metalearner.bench.metrics import epochs_to_target, lower_median
from metalearner.methods import get_method
from metalearner.tasks import TaskConfig, make_task
from metalearner.train import fit

METHODS = ("adam", "schedulefree_adamw", "prodigy", "learned_sf", "opt2vec", "adam+controller")
EVALS_PER_EPOCH = 4
CACHE = ROOT / "benchmarks" / ".cache" / "unseen_networks"


class Transformer(nn.Module):
    """A pre-norm Transformer encoder over ``tokens`` equal slices of a 1-D signal, mean-pooled."""

    def __init__(self, length: int, n_classes: int, tokens: int = 10, dim: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tokens = tokens
        self.embed = nn.Linear(length // tokens, dim)
        self.position = nn.Parameter(0.02 * torch.randn(1, tokens, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(len(x), self.tokens, -1)) + self.position
        return self.head(self.norm(self.encoder(h)).mean(1))


class Block(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(),
                                  nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def resnet(n_classes: int, ch: int = 32, blocks: int = 2) -> nn.Module:
    """The 64 features of digits as an 8x8 image: a stem, ``blocks`` residual blocks with
    BatchNorm, global average pooling, a linear head."""
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(),
                         *(Block(ch) for _ in range(blocks)), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, n_classes))  # fmt: skip


def ln_mlp(n_classes: int, width: int = 512) -> nn.Module:
    """784-512-512-10 with LayerNorm, GELU and dropout 0.1 (pre-activation blocks)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(0.1),
                         nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(0.1), nn.Linear(width, n_classes))  # fmt: skip


# name: (data set, batch size, epochs, network builder(task), what of it meta-training saw)
TASKS: dict[str, tuple[str, int, int, Callable[[Any], nn.Module], str]] = {
    "mnist1d/transformer-2x64": ("mnist1d", 64, 30, lambda t: Transformer(t.data.input_shape[-1], t.data.n_classes),
                                 "data set in meta-training; no attention or LayerNorm there"),
    "mnist1d/transformer-2x64-8tokens": ("mnist1d", 64, 30, lambda t: Transformer(t.data.input_shape[-1], t.data.n_classes, tokens=8),
                                         "the same Transformer on the signal cut into 8 tokens of 5, not 10 of 4 (added after the first "
                                         "three tasks were run: how much one choice of the network moves the ranking)"),
    "digits/resnet-bn-2x32": ("digits", 32, 20, lambda t: resnet(t.data.n_classes), "data set in meta-training; no BatchNorm or skips there"),
    "fashion_mnist/mlp-ln-2x512-gelu-dropout": ("fashion_mnist", 256, 10, lambda t: ln_mlp(t.data.n_classes),
                                                "a benchmark data set (never in meta-training); no LayerNorm, dropout or width 512 there"),
}  # fmt: skip


def run_one(task_name: str, method: str, seed: int, epochs: float, data_dir: str | None) -> dict[str, Any]:
    """One run at the method's defaults: the validation curve and the final accuracies (a
    run that diverged scores 0 from there on). Cached in ``benchmarks/.cache/unseen_networks``."""
    key = f"{task_name}-{method}-{seed}-{epochs}".replace("/", "_")
    cached = CACHE / f"{key}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    dataset, batch, _, build, _ = TASKS[task_name]
    task = make_task(TaskConfig(dataset=dataset, batch_size=batch, seed=0), data_dir=data_dir)
    torch.manual_seed(seed)
    model = build(task)
    per_epoch = math.ceil(task.data.n_train / batch)
    opt, scheduler = get_method(method).build(model.parameters(), total_steps=math.ceil(epochs * per_epoch))
    t0 = time.perf_counter()
    res = fit(model, opt, task, epochs=epochs, scheduler=scheduler, seed=seed, eval_every=max(1, per_epoch // EVALS_PER_EPOCH))
    curve = [(h["epoch"], h["val_acc"]) for h in res.history]
    if res.diverged:
        curve.append((res.epochs, 0.0))
    after = [a for e, a in curve if e >= 1]  # the first epoch's swings are noise, not a wrecked run
    drop = max((max(after[: i + 1]) - a for i, a in enumerate(after)), default=0.0)
    out = {"task": task_name, "method": method, "seed": seed, "status": res.status, "curve": curve,
           "val_acc": curve[-1][1] if curve else 0.0, "test_acc": res.final.get("test_acc") or 0.0, "max_drop": drop,
           "wall_s": time.perf_counter() - t0}  # fmt: skip
    CACHE.mkdir(parents=True, exist_ok=True)
    write_json(cached, out)
    return out


def summarise(runs: list[dict[str, Any]], methods: tuple[str, ...]) -> dict[str, Any]:
    """Per task: the target and, per method, the medians over seeds (and the largest drop)."""
    out: dict[str, Any] = {}
    for task_name in dict.fromkeys(r["task"] for r in runs):
        mine = [r for r in runs if r["task"] == task_name]
        target = lower_median(r["val_acc"] for r in mine if r["method"] == "adam")
        rows = {}
        for m in methods:
            rs = [r for r in mine if r["method"] == m]
            ett = [epochs_to_target(r["curve"], target) for r in rs]
            rows[m] = {"epochs_to_target": statistics.median(ett), "per_seed": ett, "reached": sum(e < math.inf for e in ett),
                       "val_acc": statistics.median(r["val_acc"] for r in rs), "test_acc": statistics.median(r["test_acc"] for r in rs),
                       "median_drop": statistics.median(r["max_drop"] for r in rs), "max_drop": max(r["max_drop"] for r in rs),
                       "diverged": sum(r["status"] == "diverged" for r in rs)}  # fmt: skip
        out[task_name] = {"target": target, "note": TASKS[task_name][4], "methods": rows}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one task, two methods, 3 epochs, one seed (nothing written)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-dir", default=default_data_dir())
    args = ap.parse_args()
    tasks = {"digits/resnet-bn-2x32": 3} if args.quick else {k: v[2] for k, v in TASKS.items()}
    methods = ("adam", "learned_sf") if args.quick else METHODS
    seeds = 1 if args.quick else args.seeds
    jobs = [(t, m, s, e, args.data_dir) for t, e in tasks.items() for m in methods for s in range(seeds)]
    runs = run_parallel(run_one, jobs, workers=args.workers)
    result = summarise(runs, methods)
    summary = {t: {"target": r["target"], **{m: [round(v["epochs_to_target"], 2), v["reached"], round(v["val_acc"], 4),
                                                 round(v["test_acc"], 4), round(v["max_drop"], 4), v["diverged"]]
                                             for m, v in r["methods"].items()}} for t, r in result.items()}  # fmt: skip
    summary["columns"] = ("median epochs to Adam's final val acc (null: not reached), seeds that reach it, median final val acc, "
                          "median final test acc, largest drop below the best so far after epoch 1, diverged runs")
    finish("unseen_networks", summary, {"tasks": result, "runs": runs, "seeds": seeds, "methods": list(methods)}, quick=args.quick)


if __name__ == "__main__":
    main()
