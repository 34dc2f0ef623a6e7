"""Parallel execution shared by the zoo, meta-training and the benchmark.

- :mod:`~metalearner.parallel.executor`: run one function over many items, in this process,
  in a local process pool, or on a Ray cluster (:func:`make_executor` picks one from the
  command-line options ``--executor``, ``--workers`` and ``--address``);
- :mod:`~metalearner.parallel.lock`: an exclusive lock on an output directory.
"""

from metalearner.parallel.executor import Executor, InlineExecutor, LocalExecutor, RayExecutor, cpu_count, make_executor, set_threads
from metalearner.parallel.lock import DirectoryLock, DirectoryLocked

__all__ = [
    "DirectoryLock", "DirectoryLocked", "Executor", "InlineExecutor", "LocalExecutor", "RayExecutor", "cpu_count",
    "make_executor", "set_threads",
]  # fmt: skip
