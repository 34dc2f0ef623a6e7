"""On-disk run format: ``trajectory.parquet`` + ``run.json`` (schema version 1; the columns
are :mod:`metalearner.observe.schema`'s).

A run directory holds

- ``run.json``: config, layer names, architecture encoding, versions, seed, ``status``
  (``partial`` while running or after a crash, ``complete``, ``diverged``, or
  ``stopped`` by a pruning policy) and final metrics;
- ``trajectory.parquet``: one row per optimizer step, written once at the end;
- ``trajectory.parts/part-NNNNNN.parquet``: chunks written atomically while the run goes, so a
  killed run still has everything up to its last flush. They are merged into
  ``trajectory.parquet`` and removed when the run closes.

:func:`read_trajectory` reads either form with one call.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from metalearner.atomic import atomic_path, read_json_object, write_json
from metalearner.errors import ConfigError, DataError, first_line
from metalearner.observe.schema import SCHEMA_VERSION

TRAJECTORY = "trajectory.parquet"
PARTS = "trajectory.parts"
RUN_JSON = "run.json"

_METADATA = {b"metalearner.schema_version": str(SCHEMA_VERSION).encode()}
TRAJECTORY_NEEDS = ("step", "loss", "val_acc")  # what every reader of a trajectory uses


def read_parquet(path: str | Path, *, columns: Sequence[str] | None = None, needs: Sequence[str] = ()) -> pa.Table:
    """A Parquet file as a table (only ``columns``, if given). A file that is not Parquet, or
    lacks one of ``columns`` or of ``needs`` (a file written by something else), is a one-line
    :class:`DataError` naming it."""
    try:
        names = pq.read_schema(path).names
        missing = [c for c in (*(columns or ()), *needs) if c not in names]
        if not missing:
            return pq.read_table(path, columns=None if columns is None else list(columns))
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path} is not a readable Parquet file: {first_line(e)}") from None
    raise DataError(f"{path} lacks the column(s) {', '.join(dict.fromkeys(missing))} (was it written by metalearner?)")


def with_schema_metadata(table: pa.Table) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **_METADATA})


def write_table(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(with_schema_metadata(table), tmp)


def write_part(run_dir: Path, index: int, table: pa.Table) -> None:
    write_table(table, run_dir / PARTS / f"part-{index:06d}.parquet")


def finalize(run_dir: Path, tables: list[pa.Table]) -> None:
    """Write the merged trajectory, then drop the parts (a crash in between loses nothing)."""
    write_table(pa.concat_tables(tables) if tables else pa.table({}), run_dir / TRAJECTORY)
    shutil.rmtree(run_dir / PARTS, ignore_errors=True)


def remove_run(run_dir: Path) -> None:
    """Delete a run's files (``run.json``, the trajectory and its parts), nothing else."""
    for name in (RUN_JSON, TRAJECTORY):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / PARTS, ignore_errors=True)


def write_run_json(run_dir: Path, meta: dict[str, Any]) -> None:
    write_json(run_dir / RUN_JSON, {"schema_version": SCHEMA_VERSION, **meta})


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``run.json`` as a dict."""
    path = Path(run_dir) / RUN_JSON
    if not path.exists():
        raise DataError(f"{run_dir} is not a run directory (no {RUN_JSON})")
    return read_json_object(path)


def read_trajectory(
    run_dir: str | Path, *, format: Literal["arrow", "pandas"] = "arrow"
) -> "pa.Table | Any":
    """Load a run's trajectory (complete, or the flushed parts of a partial run)."""
    if format not in ("arrow", "pandas"):
        raise ConfigError(f"format must be arrow or pandas, got {format!r}")
    run_dir = Path(run_dir)
    full = run_dir / TRAJECTORY
    if full.exists():
        table = read_parquet(full, needs=TRAJECTORY_NEEDS)
    elif (run_dir / PARTS).is_dir():
        parts = sorted((run_dir / PARTS).glob("part-*.parquet"))
        table = pa.concat_tables([read_parquet(p, needs=TRAJECTORY_NEEDS) for p in parts]) if parts else pa.table({})
    else:
        raise DataError(f"{run_dir} has no {TRAJECTORY} (is it a run directory?)")
    return table.to_pandas() if format == "pandas" else table


def export_trajectory(run_dir: str | Path, dest: str | Path) -> Path:
    """Export a trajectory to ``.csv`` (per-layer lists as JSON strings) or ``.npz``
    (per-layer lists as 2-D arrays, strings as object-free unicode arrays)."""
    dest = Path(dest)
    table = read_trajectory(run_dir)
    list_cols = [f.name for f in table.schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)]
    if dest.suffix == ".csv":
        df = table.to_pandas()
        for c in list_cols:
            df[c] = [json.dumps(np.asarray(v).tolist()) for v in df[c]]
        with atomic_path(dest) as tmp:
            df.to_csv(tmp, index=False)
    elif dest.suffix == ".npz":
        arrays: dict[str, np.ndarray] = {}
        for name in table.column_names:
            col = table.column(name)
            if name in list_cols:
                arrays[name] = np.array(col.to_pylist(), dtype=np.float32)
            elif pa.types.is_string(col.type) or pa.types.is_dictionary(col.type):
                arrays[name] = np.array([str(v) for v in col.to_pylist()])
            else:
                arrays[name] = col.to_numpy(zero_copy_only=False)
        with atomic_path(dest) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    else:
        raise DataError(f"cannot export to {dest.name}: use a .csv or .npz file name")
    return dest


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """Headline facts of a run: status, steps, final metrics, divergence, extremes."""
    meta = read_run(run_dir)
    df = read_trajectory(run_dir, format="pandas")
    evals = df[df["val_acc"].notna()] if len(df) else df
    finite = np.isfinite(df["loss"].to_numpy()) if len(df) else np.array([], bool)
    first_bad = int(df["step"].to_numpy()[~finite][0]) if (~finite).any() else None
    summary = {
        "run_id": meta.get("run_id"),
        "status": meta.get("status"),
        "task": meta.get("task"),
        "optimizer": meta.get("optimizer"),
        "steps": int(len(df)),
        "epochs": float(df["epoch"].max() + 1) if len(df) else 0.0,
        "first_nonfinite_step": first_bad,
        "best_val_acc": float(evals["val_acc"].max()) if len(evals) else None,
        "final_val_acc": float(evals["val_acc"].iloc[-1]) if len(evals) else None,
        "final_train_loss": float(df["loss"].iloc[-20:].mean()) if len(df) else None,
        "max_grad_norm": float(df["grad_norm"].max()) if len(df) else None,
        "median_update_ratio": float(df["update_ratio"].median()) if len(df) else None,
        "wall_time_s": float(df["wall_time"].iloc[-1]) if len(df) else None,
    }
    summary.update({f"final/{k}": v for k, v in (meta.get("final") or {}).items() if k not in ("status", "steps")})
    return summary
