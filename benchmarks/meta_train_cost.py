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
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time

from _common import finish
from metalearner.lopt.meta_train import default_config, meta_train
from metalearner.parallel import InlineExecutor, LocalExecutor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--kind", default="opt2vec", choices=["opt2vec", "controller"])
    ap.add_argument("--workers", type=int, default=2, help="worker processes; 0 = in this process (one-process peak memory)")
    args = ap.parse_args()
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
    name = "meta_train_cost" if args.workers == 2 else f"meta_train_cost_workers{args.workers}"
    finish(name, summary, {"config": dataclasses.asdict(cfg), "curve": state.curve}, quick=args.quick)


if __name__ == "__main__":
    main()
