"""Cost of the default meta-training (``metalearner meta-train --kind opt2vec``): wall time and
peak memory, against the targets of under 10 minutes and under 500 MB on a 2-core machine.

Peak memory is ``ru_maxrss`` of this process and of its largest worker process
(``RUSAGE_CHILDREN``); this process plus ``workers`` times the largest worker bounds the peak
resident memory of the whole run from above. ``--workers 0`` runs the population in this
process, which shows the one-process peak.
``--quick`` runs the first 3 outer steps of the default config (plus its initial
evaluation) and extrapolates the wall time linearly to the full run.

    python benchmarks/meta_train_cost.py --quick    # about a minute, prints JSON
    python benchmarks/meta_train_cost.py            # full default run: results/meta_train_cost.json

It also measures the meta-training engine (:mod:`metalearner.lopt.engine`): **unrolls per
CPU-minute**, the same inner problems (task, horizon) unrolled three ways, on one thread,
side by side (the modes take turns within each repeat; medians over repeats):

- ``one_by_one_current``: :func:`metalearner.lopt.meta_train.unroll`, what meta-training
  does today per process (an untrained Opt2Vec through ``train_step``; MLPs only);
- ``one_by_one_engine``: the engine's own population with a single member, member after member;
- ``batched_engine``: one population of ``--members`` members as one batched computation.

CPU time is this process's ``time.process_time()``, so load from elsewhere on a shared
machine costs less than in wall time. The batched unroll does more per step than the
current one (a validation evaluation every ``eval_every`` steps, the meta-objective's area
under the validation curve), which counts against it. The default engine config's seconds
per outer step and peak memory are measured in a fresh process. ``--only`` runs one part.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import os
import resource
import tempfile
import time
from typing import Any

import torch

from _common import finish, median
from metalearner.lopt.meta_train import default_config, meta_train
from metalearner.parallel import InlineExecutor, LocalExecutor, set_threads

# the inner problems unrolled for the throughput figures (PopulationConfig fields)
THROUGHPUT_TASKS: dict[str, dict[str, Any]] = {
    "mnist1d_mlp_d2_w48_b64": dict(dataset="mnist1d", family="mlp", depth=2, width=48, activation="relu", batch_size=64),
    "digits_mlp_d1_w32_b32": dict(dataset="digits", family="mlp", depth=1, width=32, activation="tanh", batch_size=32),
    "synthetic_mlp_d1_w96_b128": dict(dataset="synthetic", family="mlp", depth=1, width=96, activation="tanh", batch_size=128),
    "mnist1d_cnn_d1_w8_b64": dict(dataset="mnist1d", family="cnn", depth=1, width=8, activation="relu", batch_size=64),
}


def _cpu(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def unroll_throughput(task: dict[str, Any], *, horizon: int, members: int, one_by_one: int, repeats: int) -> dict[str, Any]:
    """CPU seconds per unroll of ``horizon`` steps, three ways, and unrolls per CPU-minute."""
    from metalearner.lopt.engine import EngineConfig
    from metalearner.lopt.meta_train import unroll
    from metalearner.lopt.policy import PolicyWeights
    from metalearner.lopt.truncation import PopulationConfig, PopulationStep

    step = PopulationStep(PopulationConfig(**task, base_lrs=(1e-3,), input_scales=(1.0,)), EngineConfig().lopt())
    theta = step.lopt.init_theta()
    opt2vec = PolicyWeights.init(default_config("opt2vec").policy())

    def engine(n: int, first_slot: int) -> None:
        state = step.init_step_state(torch.arange(first_slot, first_slot + n), key=0, horizon=horizon)
        step.unroll_step(theta.expand(n, -1), state, horizon)

    def current(i: int) -> None:
        spec = {**{k: task[k] for k in ("dataset", "depth", "width", "activation", "batch_size")}, "data_seed": 0, "base_lr": 1e-3,
                "input_scale": 1.0, "optimizer": "adam", "init_seed": i, "batch_seed": i, "n_train": step.config.n_train}  # fmt: skip
        unroll("opt2vec", opt2vec, spec, horizon)

    modes = {
        "one_by_one_current": (lambda: [current(i) for i in range(one_by_one)], one_by_one) if task["family"] == "mlp" else None,
        "one_by_one_engine": (lambda: [engine(1, i) for i in range(one_by_one)], one_by_one),
        "batched_engine": (lambda: engine(members, 0), members),
    }
    modes = {k: v for k, v in modes.items() if v is not None}
    for fn, _ in modes.values():  # warm up: data loading, allocator, lazy imports
        fn()
    per_unroll: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(repeats):
        order = list(modes)[r % len(modes) :] + list(modes)[: r % len(modes)]
        for m in order:
            fn, n = modes[m]
            per_unroll[m].append(_cpu(fn) / n)
    med = {m: median(v) for m, v in per_unroll.items()}
    out = {
        "cpu_s_per_unroll": {m: round(v, 4) for m, v in med.items()},
        "unrolls_per_cpu_minute": {m: round(60 / v, 1) for m, v in med.items()},
        "speedup_batched_vs_one_by_one_engine": round(med["one_by_one_engine"] / med["batched_engine"], 2),
        "repeats_cpu_s_per_unroll": per_unroll,
    }
    if "one_by_one_current" in med:
        out["speedup_batched_vs_one_by_one_current"] = round(med["one_by_one_current"] / med["batched_engine"], 2)
    return out


def _own_peak_rss_mb() -> float:
    """Peak resident memory of this process image (``VmHWM``). ``ru_maxrss`` would also count
    the parent's pages that a spawned child held between its fork and its exec."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engine_cost(outer_steps: int) -> dict[str, Any]:
    """Seconds per outer step and peak RSS of the default engine config (run in a fresh
    process, 1 thread, ``outer_steps`` steps, no evaluation)."""
    from metalearner.lopt.engine import EngineConfig, run

    set_threads(1)
    cfg = EngineConfig(outer_steps=outer_steps)
    elapsed: list[float] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run(cfg, tmp, evaluate=False, on_step=lambda r: elapsed.append(r["elapsed_s"]))
    per_step = (elapsed[-1] - elapsed[0]) / max(1, len(elapsed) - 1)
    return {
        "outer_steps_run": outer_steps,
        "wall_s": round(time.perf_counter() - t0, 1),
        "seconds_per_outer_step": round(per_step, 2),
        "inner_steps_per_outer_step": cfg.truncation * 2 * cfg.pairs * len(cfg.populations),
        "peak_rss_mb": round(_own_peak_rss_mb(), 1),
        "config": dataclasses.asdict(cfg),
    }


def engine_figures(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine's summary and details: throughput per task, the population-size sweep, cost."""
    set_threads(1)
    horizon, members, one_by_one, repeats = (64, 32, 2, 1) if quick else (256, 64, 4, 3)
    tasks = dict(list(THROUGHPUT_TASKS.items())[:1]) if quick else THROUGHPUT_TASKS
    throughput = {name: unroll_throughput(t, horizon=horizon, members=members, one_by_one=one_by_one, repeats=repeats)
                  for name, t in tasks.items()}  # fmt: skip
    main_task = next(iter(THROUGHPUT_TASKS))
    sizes = (8, 32) if quick else (8, 32, 128)
    by_size = {n: unroll_throughput(THROUGHPUT_TASKS[main_task], horizon=horizon, members=n, one_by_one=1, repeats=repeats)
               ["unrolls_per_cpu_minute"]["batched_engine"] for n in sizes}  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        cost = pool.submit(engine_cost, 2 if quick else 10).result()
    summary = {
        "engine_unrolls_per_cpu_minute": {k: v["unrolls_per_cpu_minute"] for k, v in throughput.items()},
        "engine_speedup_batched_vs_one_by_one_current": {k: v.get("speedup_batched_vs_one_by_one_current") for k, v in throughput.items()},
        "engine_speedup_batched_vs_one_by_one_engine": {k: v["speedup_batched_vs_one_by_one_engine"] for k, v in throughput.items()},
        "engine_batched_unrolls_per_cpu_minute_by_members": {f"{main_task}/{n}": v for n, v in by_size.items()},
        "engine_seconds_per_outer_step": cost["seconds_per_outer_step"],
        "engine_peak_rss_mb": cost["peak_rss_mb"],
    }
    details = {"engine_throughput": {"horizon": horizon, "members": members, "one_by_one_unrolls": one_by_one, "repeats": repeats,
                                     "torch_threads": 1, "tasks": throughput}, "engine_cost": cost}  # fmt: skip
    return summary, details


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--kind", default="opt2vec", choices=["opt2vec", "controller"])
    ap.add_argument("--workers", type=int, default=2, help="worker processes; 0 = in this process (one-process peak memory)")
    ap.add_argument("--only", choices=["meta_train", "engine"], help="run one part: the current meta-training's cost, or the engine's figures")
    args = ap.parse_args()
    summary: dict[str, Any] = {}
    details: dict[str, Any] = {}
    if args.only != "engine":
        summary, details = current_meta_train(args)
    if args.only != "meta_train":
        engine_summary, engine_details = engine_figures(args.quick)
        summary.update(engine_summary)
        details.update(engine_details)
    details["load_average_1_5_15_min_at_end"] = [round(x, 2) for x in os.getloadavg()]  # other work on a shared machine
    name = "meta_train_cost" if args.workers == 2 else f"meta_train_cost_workers{args.workers}"
    finish(name if args.only is None else f"{name}_{args.only}", summary, details, quick=args.quick)


def current_meta_train(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The default meta-training of today (:func:`metalearner.lopt.meta_train.meta_train`)."""
    full = default_config(args.kind)
    cfg = dataclasses.replace(full, outer_steps=3) if args.quick else full
    steps_s: list[float] = []
    t0 = time.perf_counter()
    executor = LocalExecutor(workers=args.workers) if args.workers > 0 else InlineExecutor()
    with tempfile.TemporaryDirectory() as tmp, executor as ex:
        _, state = meta_train(cfg, tmp, executor=ex, progress=False, on_step=lambda r: steps_s.append(r["elapsed_s"]))
    wall = time.perf_counter() - t0
    per_step = (steps_s[-1] - steps_s[0]) / max(1, len(steps_s) - 1) if len(steps_s) > 1 else wall
    estimate = wall + per_step * (full.outer_steps - cfg.outer_steps)
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = {
        "kind": args.kind,
        "outer_steps_run": cfg.outer_steps,
        "wall_s": round(wall, 1),
        "wall_s_full_estimate": round(estimate, 1),
        "seconds_per_outer_step": round(per_step, 2),
        "peak_rss_mb_main": round(self_mb, 1),
        "peak_rss_mb_largest_worker": round(child_mb, 1),
        "workers": args.workers,
        "peak_rss_mb_bound": round(self_mb + args.workers * child_mb, 1),
        "targets": {"wall_s": 600, "peak_rss_mb": 500},
        "meets_target": estimate < 600 and self_mb + args.workers * child_mb < 500,
        "eval_meta_loss_initial": round(state.evaluation["initial_mean"], 4),
        "eval_meta_loss_final": round(state.evaluation["final_mean"], 4),
    }
    return summary, {"config": dataclasses.asdict(cfg), "curve": state.curve}

if __name__ == "__main__":
    main()
