"""Optional live sinks for the probe."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa

from metalearner.errors import ConfigError

_SCALARS = {
    "loss": "train/loss",
    "train_acc": "train/acc",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "grad_norm": "grad/norm",
    "weight_norm": "weight/norm",
    "update_norm": "update/norm",
    "update_ratio": "update/ratio",
    "lr": "opt/lr",
    "momentum": "opt/momentum",
    "grad_cos": "grad/cos",
    "curvature": "loss/curvature",
    "noise_scale": "grad/noise_scale",
}


class TensorBoardSink:
    """Writes the probe's scalars to TensorBoard (``pip install metalearner[tensorboard]``).

    Rows arrive once per probe chunk; pass a small ``chunk_size`` to the probe to watch live.
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("the TensorBoard sink needs tensorboard: pip install 'metalearner[tensorboard]'") from None
        self.writer = SummaryWriter(str(log_dir))

    def write(self, table: pa.Table) -> None:
        cols = {c: table.column(c).to_pylist() for c in _SCALARS if c in table.column_names}
        for i, step in enumerate(table.column("step").to_pylist()):
            for col, tag in _SCALARS.items():
                v = cols.get(col, [None] * (i + 1))[i]
                if v is not None and math.isfinite(v):
                    self.writer.add_scalar(tag, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
