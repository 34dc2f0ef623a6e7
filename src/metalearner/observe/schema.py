"""The trajectory schema: every per-step quantity, named, typed and transformed in one place.

The probe writes these columns (Parquet, schema version 1), the mirror's datasets read them,
and the learned optimizers compute their inputs from the same names with the same transform
(:func:`log_feature`, :func:`signed_log`), so a quantity is defined once::

    FIELDS["update_ratio"].meaning      # 'update_norm / weight_norm'
    COLUMNS                             # the default columns, in file order
    EXTENDED_COLUMNS                    # grad_cos, curvature, noise_scale
    log_feature(np.array([0.1, 0.0]))   # the one log transform, vectorised

Groups: ``id`` (which run and step), ``metric`` (loss and accuracy), ``physics`` (one value
per step from :class:`~metalearner.observe.physics.StepPhysics`), ``layers`` (a list per
step, one value per layer: names in ``run.json``), ``hparam`` (what the optimizer applied),
``static`` (the run's description, constant along it), ``extended`` (logged on request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1
EPS = 1e-12  # log_feature's floor: log(0) is log(EPS), not -inf

Group = Literal["id", "metric", "physics", "layers", "hparam", "static", "extended"]
Transform = Literal["log", "signed_log", "raw"]


@dataclass(frozen=True)
class Field:
    """One column: its Arrow type, what it means, its group, and how a model reads it
    (``log``: :func:`log_feature`; ``signed_log``: :func:`signed_log`; ``raw``: as is)."""

    name: str
    type: pa.DataType
    meaning: str
    group: Group
    transform: Transform = "raw"


_F32, _F64, _I32, _I64, _STR = pa.float32(), pa.float64(), pa.int32(), pa.int64(), pa.string()
_FIELDS: tuple[Field, ...] = (
    Field("run_id", _STR, "the run's id", "id"),
    Field("step", _I64, "optimizer step t, from 0", "id"),
    Field("epoch", _I32, "epoch of the step (-1 when the loop did not say)", "id"),
    Field("batch", _I32, "batch index within the epoch (-1 when the loop did not say)", "id"),
    Field("loss", _F32, "training loss of the step's batch", "metric", "log"),
    Field("loss_delta", _F32, "loss minus the previous step's loss", "metric"),
    Field("train_acc", _F32, "accuracy on the step's batch (NaN without logits and targets)", "metric"),
    Field("val_loss", _F32, "validation loss, at evaluation steps (null between)", "metric", "log"),
    Field("val_acc", _F32, "validation accuracy, at evaluation steps (null between)", "metric"),
    Field("grad_norm", _F32, "‖g_t‖₂ over all parameters", "physics", "log"),
    Field("weight_norm", _F32, "‖θ_t‖₂, the weights that produced the step's loss", "physics", "log"),
    Field("update_norm", _F32, "‖θ_{t+1} − θ_t‖₂, the change the optimizer made", "physics", "log"),
    Field("update_ratio", _F32, "update_norm / weight_norm", "physics", "log"),
    Field("lr", _F64, "learning rate applied (a learned or scheduled factor included)", "hparam", "log"),
    Field("momentum", _F64, "momentum applied (β₁ for Adam-likes; NaN if none)", "hparam"),
    Field("optimizer", _STR, "the optimizer's class name", "static"),
    Field("task", _STR, "the data set", "static"),
    Field("depth", _I32, "hidden layers (MLP) or conv blocks (CNN)", "static"),
    Field("width", _I32, "hidden units or first-block channels", "static"),
    Field("activation", _STR, "activation function", "static"),
    Field("n_params", _I64, "trainable parameters", "static"),
    Field("wall_time", _F64, "seconds since the probe started", "id"),
    Field("grad_norm_layers", _F32, "‖g_t‖₂ per layer", "layers", "log"),
    Field("weight_norm_layers", _F32, "‖θ_t‖₂ per layer", "layers", "log"),
    Field("update_norm_layers", _F32, "‖θ_{t+1} − θ_t‖₂ per layer", "layers", "log"),
    Field("grad_cos", _F32, "cosine between g_t and g_{t−1}", "extended"),
    Field("curvature", _F32, "secant curvature (g_t − g_{t−1})·u / ‖u‖², u = θ_t − θ_{t−1}", "extended", "signed_log"),
    Field("noise_scale", _F32, "simple gradient noise scale B·tr(Σ)/‖G‖² (McCandlish et al. 2018)", "extended", "log"),
)  # fmt: skip
FIELDS: dict[str, Field] = {f.name: f for f in _FIELDS}

COLUMNS: tuple[str, ...] = tuple(f.name for f in _FIELDS if f.group != "extended")
EXTENDED_COLUMNS: tuple[str, ...] = tuple(f.name for f in _FIELDS if f.group == "extended")
PHYSICS: tuple[str, ...] = ("grad_norm", "weight_norm", "update_norm")  # measured; update_ratio is derived
LAYERS: tuple[str, ...] = tuple(f.name for f in _FIELDS if f.group == "layers")


def arrow_type(name: str) -> pa.DataType:
    return FIELDS[name].type


def log_feature(x: np.ndarray | float) -> np.ndarray:
    """``log(max(x, EPS))`` for ``x >= 0`` (so 0 maps to ``log EPS``, +inf to +inf), NaN for
    negative or NaN ``x``. Vectorised; the one log transform of the project."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(x >= 0, np.log(np.maximum(x, EPS)), np.nan)


def signed_log(x: np.ndarray | float) -> np.ndarray:
    """``sign(x) · log(1 + |x|)``: a log scale for quantities of either sign (NaN stays NaN)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.log1p(np.abs(x))


def feature(name: str, x: np.ndarray | float) -> np.ndarray:
    """Column ``name``'s values as a model reads them (its field's transform)."""
    transform = FIELDS[name].transform
    if transform == "log":
        return log_feature(x)
    if transform == "signed_log":
        return signed_log(x)
    return np.asarray(x, dtype=np.float64)


def describe() -> str:
    """The schema as a Markdown table (for docs and ``--help``)."""
    rows = ["| column | type | group | as a feature | meaning |", "|---|---|---|---|---|"]
    for f in _FIELDS:
        kind = f"list<{f.type}>" if f.group == "layers" else str(f.type)
        rows.append(f"| `{f.name}` | {kind} | {f.group} | {f.transform} | {f.meaning} |")
    return "\n".join(rows)

