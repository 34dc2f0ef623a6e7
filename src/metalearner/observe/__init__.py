"""Observe training: the trajectory schema, the per-step physics, the probe, and the run format."""

from metalearner.observe.physics import PhysicsTracker, StepPhysics
from metalearner.observe.probe import Probe, optimizer_hparams
from metalearner.observe.schema import COLUMNS, EXTENDED_COLUMNS, FIELDS, SCHEMA_VERSION, feature, log_feature
from metalearner.observe.sinks import TensorBoardSink
from metalearner.observe.store import export_trajectory, read_run, read_trajectory, summarize

__all__ = [
    "COLUMNS", "EXTENDED_COLUMNS", "FIELDS", "SCHEMA_VERSION", "PhysicsTracker", "Probe", "StepPhysics",
    "TensorBoardSink", "export_trajectory", "feature", "log_feature", "optimizer_hparams", "read_run",
    "read_trajectory", "summarize",
]  # fmt: skip
