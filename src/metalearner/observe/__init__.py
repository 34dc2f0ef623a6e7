"""Observe training: the per-step physics, the probe, and the run format."""

from metalearner.observe.physics import PhysicsTracker, StepPhysics
from metalearner.observe.probe import Probe, optimizer_hparams
from metalearner.observe.sinks import TensorBoardSink
from metalearner.observe.store import (
    COLUMNS,
    EXTENDED_COLUMNS,
    SCHEMA_VERSION,
    export_trajectory,
    summarize,
    read_run,
    read_trajectory,
)

__all__ = [
    "COLUMNS", "EXTENDED_COLUMNS", "SCHEMA_VERSION", "PhysicsTracker", "Probe", "StepPhysics",
    "TensorBoardSink", "export_trajectory", "optimizer_hparams", "read_run", "read_trajectory", "summarize",
]  # fmt: skip
