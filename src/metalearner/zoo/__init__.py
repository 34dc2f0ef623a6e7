"""The model zoo: sweeps of observed base-model runs, in parallel, resumable.

::

    from metalearner.parallel import LocalExecutor
    from metalearner.zoo import load_spec, load_zoo, run_sweep

    run_sweep(load_spec("tiny"), "zoo/", LocalExecutor(workers=2))
    df = load_zoo("zoo/")          # every trajectory with the run configs joined in

Pieces: :mod:`~metalearner.zoo.spec` (sweep specs and sampling),
:mod:`~metalearner.zoo.sweep` (manifest, resume; executors and the directory lock are
:mod:`metalearner.parallel`'s), :mod:`~metalearner.zoo.pruning`
(early-stopping hook, successive halving), :mod:`~metalearner.zoo.summary` (queries).
"""

from metalearner.zoo.pruning import Pruner, SuccessiveHalving, make_pruner
from metalearner.zoo.spec import SweepSpec, load_spec, run_id, sample_runs
from metalearner.zoo.summary import load_zoo, summarize_zoo
from metalearner.zoo.sweep import SweepResult, read_manifest, run_sweep

__all__ = [
    "Pruner", "SuccessiveHalving", "SweepResult", "SweepSpec", "load_spec", "load_zoo", "make_pruner", "read_manifest",
    "run_id", "run_sweep", "sample_runs", "summarize_zoo",
]  # fmt: skip
