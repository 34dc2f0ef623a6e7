"""The honest benchmark: time to target against tuned and tuning-free optimizers.

    from metalearner.bench import get_suite, run_suite
    from metalearner.parallel import make_executor
    results = run_suite(get_suite("quick"), "bench-quick", make_executor("local"))

The protocol is in :mod:`metalearner.bench.protocol` and docs/benchmark.md; methods are the
registry's (:data:`metalearner.methods.METHODS`).
"""

from metalearner.bench.protocol import SUITES, Cell, Suite, get_suite, select
from metalearner.bench.runner import Bench, results_dir, run_suite
from metalearner.bench.summary import load_results

__all__ = ["SUITES", "Bench", "Cell", "Suite", "get_suite", "load_results", "results_dir", "run_suite", "select"]
