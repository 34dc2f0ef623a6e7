"""Time to target: every method x held-out cell x seed, both rulesets (issue 6's benchmark).

    python benchmarks/time_to_target.py --quick    # the smoke suite: the whole protocol in about a minute
    python benchmarks/time_to_target.py --suite quick   # small tasks, ~10 min on 2 cores
    python benchmarks/time_to_target.py            # the full suite (MNIST, Fashion MLPs/CNN/GRU, MNIST-1D CNN, shift; ~2 h on 2 cores)
    python benchmarks/time_to_target.py --suite headline   # MNIST/Fashion cells + the CNN and GRU cells, tuning-free methods
    python benchmarks/time_to_target.py --rerun opt2vec,adam+controller   # rerun these (and adam), keep the other methods' runs

Runs ``metalearner bench`` into ``benchmarks/.cache/bench_SUITE`` (resumable: rerun to finish;
the smoke suite into a fresh temporary directory),
prints the headline JSON last; the full run writes ``results/time_to_target.json`` (every
cell, ruleset, method and seed, with the curves) and the report into ``results/time_to_target/``;
the headline suite likewise ``results/time_to_target_headline.json`` and ``results/time_to_target_headline/``.

``--methods`` / ``--cells`` with ``--tag TAG`` run a part of a suite (jobs cached by content, so
a part reuses what a ``--out`` directory already holds) and write
``results/time_to_target_TAG.json`` (no report), never the suite's own file;
``--learned-weights FILE`` runs ``learned_sf`` with other weights there (earlier ones, say).

``--rerun METHODS`` (full or headline suite) runs only those methods and the reference method
Adam, checks that Adam's runs equal the committed ones (so the targets are the same), and
puts the new runs in place of those methods' in the committed results
(:func:`metalearner.bench.summary.merge_rerun`; the file's ``reruns`` says which methods are
from which run): for re-shipped weights, without the hours of the other methods' runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, default_data_dir, finish  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the smoke suite (about a minute); nothing written to results/")
    ap.add_argument("--suite", default=None, help="run this suite instead (smoke, quick, headline, full, dev); headline and full write results/")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: the cores)")
    ap.add_argument("--out", default=None, help="benchmark directory (default benchmarks/.cache/bench_SUITE)")
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--rerun", default=None, help="rerun only these methods (comma-separated) and adam, keep the others' committed runs")
    ap.add_argument("--methods", default=None, help="only these methods (comma-separated, adam among them); needs --tag")
    ap.add_argument("--cells", default=None, help="only these cells (comma-separated); needs --tag")
    ap.add_argument("--tag", default=None, help="a part of a suite (--methods/--cells) writes results/time_to_target_TAG.json")
    ap.add_argument("--learned-weights", default=None, help="with --tag: learned_sf with these weights instead of the shipped ones")
    args = ap.parse_args()
    if (args.methods or args.cells or args.learned_weights) and not args.tag or args.tag and args.rerun:
        ap.error("--methods, --cells and --learned-weights need --tag (a part never replaces the suite's own results), "
                 "and --tag is not for --rerun")

    from metalearner.bench import get_suite, run_suite
    from metalearner.bench.protocol import select
    from metalearner.bench.summary import check_rerun, load_results, merge_rerun
    from metalearner.errors import MetalearnerError
    from metalearner.report.bench import write_report
    from metalearner.parallel import make_executor

    suite = get_suite(args.suite or ("smoke" if args.quick else "full"))
    args.quick = suite.name not in ("full", "headline")
    name = "time_to_target" if suite.name == "full" else f"time_to_target_{suite.name}"
    if args.tag:
        try:
            suite = select(suite, methods=args.methods, cells=args.cells)
        except MetalearnerError as e:
            sys.exit(f"time_to_target: {e}")
        name = f"time_to_target_{args.tag}"
    rerun = tuple(m.strip() for m in args.rerun.split(",")) if args.rerun is not None else ()
    whole, previous, note = suite, None, None
    if args.rerun is not None:
        if args.quick:
            sys.exit("--rerun merges into a committed full or headline suite's results; pick --suite full or headline")
        try:
            previous = load_results(RESULTS / f"{name}.json")
            check_rerun(previous, suite, rerun)  # before hours of runs, not after
        except MetalearnerError as e:
            sys.exit(f"--rerun: {e}")
        record = json.loads((RESULTS / f"{name}.json").read_text())
        note = {"previous_command": record.get("command"), "previous_machine": record.get("machine")}
        suite = select(suite, methods=(suite.reference_method, *rerun))
    if args.out:
        out = Path(args.out)
    elif suite.name == "smoke":  # a fresh run every time, so that --quick really runs the protocol
        out = Path(tempfile.mkdtemp(prefix="bench_smoke_"))
    else:
        out = ROOT / "benchmarks" / ".cache" / f"bench_{suite.name}"
    t0 = time.perf_counter()
    with make_executor("local", args.workers) as ex:
        results = run_suite(suite, out, ex, data_dir=args.data_dir, progress=True,
                            weights={"learned_sf": args.learned_weights} if args.learned_weights else None)
    if previous is not None:
        try:
            results = merge_rerun(previous, results, whole, rerun, note)
        except MetalearnerError as e:
            sys.exit(f"--rerun: {e} (the rerun's own results are in {out})")
    summary = {
        "suite": suite.name,
        "cells": {c: {"target": v["target"], "self_tuning": {m: e["summary"]["epochs_to_target"] for m, e in v["rulesets"]["self_tuning"].items()}}
                  for c, v in results["cells"].items()},  # fmt: skip
        "profile_scores": results["profile_scores"],
        "goals": {m: g for m, g in results["goals"].items() if isinstance(g, dict)},
        "wall_s_this_call": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    if not args.quick and not args.tag:
        report_dir = RESULTS / name
        if report_dir.exists():
            shutil.rmtree(report_dir)
        write_report(results, report_dir)
    finish(name, summary, {"results": _rounded(results)}, quick=args.quick)


def _rounded(obj, digits: int = 6):
    """Floats to ``digits`` significant digits: the curves dominate the file's size."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


if __name__ == "__main__":
    main()
