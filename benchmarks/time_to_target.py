"""Time to target: every method x held-out cell x seed, both rulesets (issue 6's benchmark).

    python benchmarks/time_to_target.py --quick    # the quick suite (small tasks, ~3 min)
    python benchmarks/time_to_target.py            # the full suite (MNIST/Fashion; ~1-1.5 h on 2 cores)

Runs ``metalearner bench`` into ``benchmarks/.cache/bench_SUITE`` (resumable: rerun to finish),
prints the headline JSON last; the full run writes ``results/time_to_target.json`` (every
cell, ruleset, method and seed, with the curves) and the report into ``results/time_to_target/``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, default_data_dir, finish  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the quick suite; nothing written to results/")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: the cores)")
    ap.add_argument("--out", default=None, help="benchmark directory (default benchmarks/.cache/bench_SUITE)")
    ap.add_argument("--data-dir", default=default_data_dir())
    args = ap.parse_args()

    from metalearner.bench import get_suite, run_suite
    from metalearner.report.bench import write_report
    from metalearner.zoo.executor import make_executor

    suite = get_suite("quick" if args.quick else "full")
    out = Path(args.out or ROOT / "benchmarks" / ".cache" / f"bench_{suite.name}")
    t0 = time.perf_counter()
    with make_executor("local", args.workers) as ex:
        results = run_suite(suite, out, ex, data_dir=args.data_dir, progress=True)
    summary = {
        "suite": suite.name,
        "cells": {c: {"target": v["target"], "self_tuning": {m: e["summary"]["epochs_to_target"] for m, e in v["rulesets"]["self_tuning"].items()}}
                  for c, v in results["cells"].items()},  # fmt: skip
        "profile_scores": results["profile_scores"],
        "goals": {m: {k: v for k, v in g.items() if k != "median_epochs_on_held_out_mnist"} for m, g in results["goals"].items() if isinstance(g, dict)},
        "wall_s_this_call": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    if not args.quick:
        report_dir = RESULTS / "time_to_target"
        if report_dir.exists():
            shutil.rmtree(report_dir)
        write_report(results, report_dir)
    finish("time_to_target", summary, {"results": results}, quick=args.quick)


if __name__ == "__main__":
    main()
