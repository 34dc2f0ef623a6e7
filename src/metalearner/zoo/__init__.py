"""The model zoo: sweeps of observed base-model runs, in parallel, resumable.

::

    from metalearner.zoo import LocalExecutor, load_spec, load_zoo, run_sweep

    run_sweep(load_spec("tiny"), "zoo/", LocalExecutor(workers=2))
    df = load_zoo("zoo/")          # every trajectory with the run configs joined in

Pieces: :mod:`~metalearner.zoo.spec` (sweep specs and sampling),
:mod:`~metalearner.zoo.executor` (local process pool | Ray, reusable beyond zoos),
:mod:`~metalearner.zoo.sweep` (lock, manifest, resume), :mod:`~metalearner.zoo.pruning`
(early-stopping hook, successive halving), :mod:`~metalearner.zoo.summary` (queries).
"""

from metalearner.zoo.executor import Executor, InlineExecutor, LocalExecutor, RayExecutor, make_executor
from metalearner.zoo.pruning import Pruner, SuccessiveHalving, make_pruner
from metalearner.zoo.spec import SweepSpec, load_spec, run_id, sample_runs
from metalearner.zoo.summary import load_zoo, summarize_zoo
from metalearner.zoo.sweep import SweepLocked, SweepResult, read_manifest, run_sweep

__all__ = [
    "Executor", "InlineExecutor", "LocalExecutor", "Pruner", "RayExecutor", "SuccessiveHalving", "SweepLocked",
    "SweepResult", "SweepSpec", "load_spec", "load_zoo", "make_executor", "make_pruner", "read_manifest", "run_id",
    "run_sweep", "sample_runs", "summarize_zoo",
]  # fmt: skip
