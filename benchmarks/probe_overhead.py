"""Probe overhead: wall time of training an MNIST MLP with the probe over without it.

Copies of the README's main model (784-256-256-10 MLP, Adam 1e-3, batch 128, same initial
weights) train side by side in one process on the same batches, through ``fit``'s own
``train_step``:

- ``none``: no probe;
- ``copy``: no probe, only a hook that copies the parameters before every step. An exact
  update norm ``‖θ_{t+1} − θ_t‖`` needs that snapshot (or an equivalent pass), so this is a
  floor under any probe that logs it with PyTorch's own kernels;
- ``default``: the probe with its default set, every step, default chunk size, writing its
  Parquet parts and files as in a run;
- ``extended``: the probe with the extended set.

They take turns in short blocks of steps, rotating the order every block, so that load from
elsewhere on a shared machine hits all of them alike; a repeat's ratio is the summed time
with the probe over the summed time without it, and the reported figure is the median over
repeats (with the min and max). The probe's flushes (pooling, Arrow, Parquet) and its final
``close`` are inside the timed blocks. Two more configurations show how the ratio scales:
width 128 (fewer parameters per step of compute) and batch 512 (more compute per step, the
same per-step probe work).

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

MODES = ("none", "copy", "default", "extended")


def snapshot_hook(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """The ``copy`` mode: copy the parameters before every step, nothing else."""
    params = [p.detach() for p in model.parameters()]
    snapshot = [torch.empty_like(p) for p in params]

    def copy(*_: object) -> None:
        torch._foreach_copy_(snapshot, params)

    opt.register_step_pre_hook(copy)


def measure(task, *, repeats: int, blocks: int, block_steps: int, out_dir: str) -> dict[str, list[float]]:
    """Seconds per repeat for each mode (the probe writes its parts and files as in a run)."""

    def make_run(mode: str, r: int):
        model = task.build_model(seed=r)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        probe = None
        if mode == "copy":
            snapshot_hook(model, opt)
        elif mode != "none":
            probe = Probe(model, opt, extended=mode == "extended", out_dir=f"{out_dir}/{mode}-{r}")
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
    configs = ((256, 128),) if args.quick else ((256, 128), (128, 128), (256, 512))  # (width, batch)

    per_config = {}
    for width, batch in configs:
        config = TaskConfig(dataset="mnist", model=ModelConfig(depth=2, width=width), batch_size=batch)
        task = make_task(config, data_dir=args.data_dir)
        with tempfile.TemporaryDirectory() as tmp:
            measure(task, repeats=1, blocks=2, block_steps=10, out_dir=tmp)  # warm-up (imports, allocator)
            seconds = measure(task, repeats=repeats, blocks=blocks, block_steps=block_steps, out_dir=tmp)
        steps = blocks * block_steps
        ratios = {m: [t / b for t, b in zip(seconds[m], seconds["none"])] for m in MODES[1:]}
        per_config[f"w{width}_b{batch}"] = {
            "seconds": seconds,
            "steps_per_repeat": steps,
            "ms_per_step_median": {m: 1e3 * median(seconds[m]) / steps for m in MODES},
            "ratio_median": {m: median(ratios[m]) for m in ratios},
            "ratio_min_max": {m: [min(ratios[m]), max(ratios[m])] for m in ratios},
        }
    main_c = per_config["w256_b128"]
    summary = {
        "model": "mlp 784-256-256-10, adam 1e-3, batch 128",
        "steps_per_repeat": main_c["steps_per_repeat"],
        "repeats": repeats,
        "ratio_default": round(main_c["ratio_median"]["default"], 4),
        "ratio_default_min_max": [round(x, 4) for x in main_c["ratio_min_max"]["default"]],
        "ratio_extended": round(main_c["ratio_median"]["extended"], 4),
        "ratio_copy_floor": round(main_c["ratio_median"]["copy"], 4),
        "target_default": 1.05,
        "meets_target": main_c["ratio_median"]["default"] <= 1.05,
    }
    for key, c in per_config.items():
        if key != "w256_b128":
            summary[f"ratio_default_{key}"] = round(c["ratio_median"]["default"], 4)
            summary[f"ratio_extended_{key}"] = round(c["ratio_median"]["extended"], 4)
    finish("probe_overhead", summary, {"per_config": per_config}, quick=args.quick)


if __name__ == "__main__":
    main()
