"""The mirror: datasets of optimization physics and meta-models that predict training dynamics.

::

    from metalearner.mirror import build_dataset, split_runs, fit_on_dataset, score

    ds = build_dataset("zoo/", "data/")                   # rows.parquet + dataset.json
    split = split_runs(ds.runs, "arch", seed=0)           # grouped: no run on two sides
    model, history = fit_on_dataset(ds, ["smooth_loss"], split, kind="gru")
    save_predictor(model, "models/gru", history)          # safetensors + config.json
    print(score(ds, model, "smooth_loss", split)["ratio"])  # MAE / best baseline's MAE

Pieces: :mod:`~metalearner.mirror.dataset` (features, targets, windows, splits),
:mod:`~metalearner.mirror.curves` (learning-curve extrapolation),
:mod:`~metalearner.mirror.trends` (log-loss smoothers: the loss baselines' forecasts, also
predictor inputs), :mod:`~metalearner.mirror.baselines`, :mod:`~metalearner.mirror.models` (MLP/GRU/Transformer,
one training loop, save/load), :mod:`~metalearner.mirror.evaluate` (metrics, bootstrap,
figures), :mod:`~metalearner.mirror.pipeline` (train + score on a split),
:mod:`~metalearner.mirror.use` (curve-extrapolation pruner, LR advisor, pruner replay).
"""

from metalearner.mirror.baselines import baselines
from metalearner.mirror.dataset import Dataset, DatasetConfig, build_dataset, split_runs, windows
from metalearner.mirror.evaluate import compare, metrics
from metalearner.mirror.models import Predictor, PredictorConfig, TrainConfig, load_predictor, save_predictor, train_predictor
from metalearner.mirror.pipeline import fit_ensemble, fit_on_dataset, score
from metalearner.mirror.use import CurvePruner, LRAdvisor, replay

__all__ = [
    "CurvePruner", "Dataset", "DatasetConfig", "LRAdvisor", "Predictor", "PredictorConfig", "TrainConfig", "baselines",
    "build_dataset", "compare", "fit_ensemble", "fit_on_dataset", "load_predictor", "metrics", "replay", "save_predictor",
    "score", "split_runs", "train_predictor", "windows",
]  # fmt: skip
