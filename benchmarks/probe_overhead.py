"""Probe overhead: wall time of training an MNIST MLP with the probe over without it.

Trains the README's main model (784-256-256-10 MLP, Adam 1e-3, batch 128) through ``fit``
for the same number of steps three ways — no probe, the default probe (every step), the
extended probe — side by side in one process, rotating the order every repeat, and reports
the median of the per-repeat ratios. A second width (128, the foundation issue's example)
shows how the ratio scales with the parameter count.

    python benchmarks/probe_overhead.py --quick     # < 1 minute, prints JSON
    python benchmarks/probe_overhead.py             # full: writes results/probe_overhead.json
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import default_data_dir, finish, median
from metalearner.observe import Probe
from metalearner.tasks import ModelConfig, TaskConfig, make_task
from metalearner.train import fit

MODES = ("none", "default", "extended")


def timed_run(task, mode: str, steps: int, seed: int) -> float:
    model = task.build_model(seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = None if mode == "none" else Probe(model, opt, extended=mode == "extended")
    t0 = time.perf_counter()
    fit(model, opt, task, steps=steps, probe=probe, seed=seed, test=False)
    if probe is not None:
        probe.close()  # the final flush counts
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few short repeats (under a minute)")
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per timed run")
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 9)
    steps = args.steps or (150 if args.quick else 391)  # 391 = one epoch of 50,000 at batch 128
    widths = (256,) if args.quick else (256, 128)

    per_width = {}
    for width in widths:
        task = make_task(TaskConfig(dataset="mnist", model=ModelConfig(depth=2, width=width)), data_dir=args.data_dir)
        timed_run(task, "default", 50, seed=0)  # warm-up
        times: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(repeats):
            order = MODES[r % 3 :] + MODES[: r % 3]
            for mode in order:
                times[mode].append(timed_run(task, mode, steps, seed=r))
        ratios = {m: [t / b for t, b in zip(times[m], times["none"])] for m in MODES[1:]}
        per_width[width] = {
            "seconds": times,
            "ms_per_step_median": {m: 1e3 * median(times[m]) / steps for m in MODES},
            "ratio_median": {m: median(ratios[m]) for m in ratios},
            "ratio_min_max": {m: [min(ratios[m]), max(ratios[m])] for m in ratios},
        }
    main_w = per_width[256]
    summary = {
        "model": "mlp 784-256-256-10, adam 1e-3, batch 128",
        "steps_per_run": steps,
        "repeats": repeats,
        "ratio_default": round(main_w["ratio_median"]["default"], 4),
        "ratio_extended": round(main_w["ratio_median"]["extended"], 4),
        "target_default": 1.05,
        "meets_target": main_w["ratio_median"]["default"] <= 1.05,
    }
    if 128 in per_width:
        summary["ratio_default_width128"] = round(per_width[128]["ratio_median"]["default"], 4)
        summary["ratio_extended_width128"] = round(per_width[128]["ratio_median"]["extended"], 4)
    finish("probe_overhead", summary, {"per_width": per_width}, quick=args.quick)


if __name__ == "__main__":
    main()
