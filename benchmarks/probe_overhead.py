"""Probe overhead: wall time of training an MNIST MLP with the probe over without it.

Three copies of the README's main model (784-256-256-10 MLP, Adam 1e-3, batch 128, same
initial weights) train side by side in one process — no probe, the default probe (every
step), the extended probe — on the same batches, through ``fit``'s own ``train_step``.
They take turns in short blocks of steps, rotating the order every block, so that load from
elsewhere on a shared machine hits all three alike; a repeat's ratio is the summed time with
the probe over the summed time without it, and the reported figure is the median over
repeats (with the min and max). The probe's chunk flushes (pooling, Arrow, Parquet) happen
inside the timed blocks. A second width (128, the foundation issue's example) shows how the
ratio scales with the parameter count.

    python benchmarks/probe_overhead.py --quick     # < 1 minute, prints JSON
    python benchmarks/probe_overhead.py             # full: writes results/probe_overhead.json
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from _common import default_data_dir, finish, interleaved_seconds, median
from metalearner.observe import Probe
from metalearner.tasks import ModelConfig, TaskConfig, make_task

MODES = ("none", "default", "extended")


def measure(task, *, repeats: int, blocks: int, block_steps: int, out_dir: str) -> dict[str, list[float]]:
    """Seconds per repeat for each mode (the probe writes its parts and files as in a run)."""

    def make_run(mode: str, r: int):
        model = task.build_model(seed=r)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        probe = None
        if mode != "none":
            probe = Probe(model, opt, extended=mode == "extended", out_dir=f"{out_dir}/{mode}-{r}", chunk_size=256)
        return model, opt, probe

    return interleaved_seconds(task, MODES, make_run, repeats=repeats, blocks=blocks, block_steps=block_steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few short repeats (under a minute)")
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    blocks, block_steps = (10, 20) if args.quick else (40, 25)
    widths = (256,) if args.quick else (256, 128)

    per_width = {}
    for width in widths:
        task = make_task(TaskConfig(dataset="mnist", model=ModelConfig(depth=2, width=width)), data_dir=args.data_dir)
        with tempfile.TemporaryDirectory() as tmp:
            measure(task, repeats=1, blocks=2, block_steps=10, out_dir=tmp)  # warm-up (imports, allocator)
            seconds = measure(task, repeats=repeats, blocks=blocks, block_steps=block_steps, out_dir=tmp)
        steps = blocks * block_steps
        ratios = {m: [t / b for t, b in zip(seconds[m], seconds["none"])] for m in MODES[1:]}
        per_width[width] = {
            "seconds": seconds,
            "steps_per_repeat": steps,
            "ms_per_step_median": {m: 1e3 * median(seconds[m]) / steps for m in MODES},
            "ratio_median": {m: median(ratios[m]) for m in ratios},
            "ratio_min_max": {m: [min(ratios[m]), max(ratios[m])] for m in ratios},
        }
    main_w = per_width[256]
    summary = {
        "model": "mlp 784-256-256-10, adam 1e-3, batch 128",
        "steps_per_repeat": main_w["steps_per_repeat"],
        "repeats": repeats,
        "ratio_default": round(main_w["ratio_median"]["default"], 4),
        "ratio_default_min_max": [round(x, 4) for x in main_w["ratio_min_max"]["default"]],
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
