"""Tasks: data sets (real and synthetic), the models trained on them, task families."""

from metalearner.tasks.data import DATASETS, Splits, load_dataset, read_idx, resolve_data_dir
from metalearner.tasks.models import ACTIVATIONS, ModelConfig, build_model, count_params, encode_architecture
from metalearner.tasks.synthetic import Shift, SyntheticSpec, make_synthetic, shift_pair
from metalearner.tasks.task import Task, TaskConfig, TaskFamily, make_task

__all__ = [
    "ACTIVATIONS", "DATASETS", "ModelConfig", "Shift", "Splits", "SyntheticSpec", "Task", "TaskConfig",
    "TaskFamily", "build_model", "count_params", "encode_architecture", "load_dataset", "make_synthetic",
    "make_task", "read_idx", "resolve_data_dir", "shift_pair",
]  # fmt: skip
