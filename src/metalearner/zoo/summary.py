"""Query a zoo: every trajectory as one table with the run configs joined in.

::

    df = load_zoo("zoo/")                       # pandas: one row per step of every run
    con = load_zoo("zoo/", format="duckdb")     # DuckDB views ``zoo`` (steps) and ``runs``
    con.execute("select cfg_optimizer, avg(val_acc) from zoo group by 1").df()
    runs = summarize_zoo("zoo/")                # one row per run, final metrics

In :func:`load_zoo` the config columns carry a ``cfg_`` prefix (``cfg_optimizer``,
``cfg_lr``, ``cfg_depth`` ...), because the trajectory has its own ``optimizer`` (the
class name), ``lr`` (per step, after the schedule), ``depth`` ... columns; ``status`` is the
run's status in the zoo (``complete``, ``diverged``, ``pruned``). :func:`summarize_zoo` has
no trajectory columns, so its config columns are unprefixed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa

from metalearner.errors import ConfigError, DataError, first_line, warn_skipped
from metalearner.observe.store import TRAJECTORY, read_parquet, read_run, read_trajectory
from metalearner.zoo.sweep import DONE, RUNS, done_status, read_manifest

CONFIG_TYPES: dict[str, pa.DataType] = {
    "dataset": pa.string(), "n_train": pa.int64(), "batch_size": pa.int64(), "data_seed": pa.int64(),
    "family": pa.string(), "depth": pa.int64(), "width": pa.int64(), "activation": pa.string(), "init": pa.string(),
    "optimizer": pa.string(), "lr": pa.float64(), "momentum": pa.float64(), "weight_decay": pa.float64(),
    "schedule": pa.string(), "epochs": pa.float64(), "steps": pa.int64(), "seed": pa.int64(),
}  # fmt: skip
METRICS = ("val_acc", "val_loss", "test_acc", "test_loss", "best_val_acc", "final_train_loss", "steps_done",
           "epochs_done", "diverged_at_step", "stopped_at_step", "n_params", "wall_s")  # fmt: skip
# Whole-number columns of summarize_zoo: nullable Int64, so a missing value stays empty and
# a present one is written 15, not 15.0.
INTEGER_COLUMNS = (*(k for k, t in CONFIG_TYPES.items() if t == pa.int64()), "steps_done", "diverged_at_step",
                   "stopped_at_step", "n_params")  # fmt: skip


def flatten_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A run config dict as flat columns (:data:`CONFIG_TYPES`)."""
    task = cfg.get("task") or {}
    model = task.get("model") or {}
    flat = {
        "dataset": task.get("dataset"), "n_train": task.get("n_train"), "batch_size": task.get("batch_size"),
        "data_seed": task.get("seed"), **{k: model.get(k) for k in ("family", "depth", "width", "activation", "init")},
        **{k: cfg.get(k) for k in ("optimizer", "lr", "momentum", "weight_decay", "schedule", "epochs", "steps", "seed")},
    }  # fmt: skip
    return flat


def zoo_runs(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every run of a zoo, ``id -> {config, status, final, error, wall_s}``: the manifest,
    corrected by the run directories (the truth after a crash) and completed by run
    directories the manifest does not list."""
    out = Path(out_dir)
    if not out.is_dir():
        raise DataError(f"{out} is not a directory")
    runs = {rid: dict(e) for rid, e in read_manifest(out)["runs"].items()}
    run_root = out / RUNS
    dirs = sorted(p for p in run_root.iterdir() if p.is_dir()) if run_root.is_dir() else []
    if not runs and not dirs:
        raise DataError(f"{out} is not a zoo (no {RUNS}/ and no manifest.json)")
    for d in dirs:
        meta = done_status(d)
        entry = runs.setdefault(d.name, {})
        if meta is not None:
            entry["status"] = DONE[meta["status"]]
            entry["final"] = meta.get("final") or {}
            entry["n_params"] = meta.get("n_params")
            entry.setdefault("config", meta.get("config"))
        elif entry.get("status") not in ("failed",):
            entry["status"] = "partial"
            if "config" not in entry:
                try:
                    entry["config"] = read_run(d).get("config")
                except DataError:
                    entry["config"] = None
    return runs


def summarize_zoo(out_dir: str | Path) -> pd.DataFrame:
    """One row per run: id, status, the flat config, final metrics, best val acc, error.

    Whole-number columns (:data:`INTEGER_COLUMNS`) are nullable ``Int64``; ``n_params`` is
    the run's parameter count from its ``run.json``."""
    rows, unreadable = [], []
    for rid, e in sorted(zoo_runs(out_dir).items()):
        final = e.get("final") or {}
        row: dict[str, Any] = {"run_id": rid, "status": e.get("status"), **flatten_config(e.get("config") or {})}
        row.update({k: final.get(k) for k in ("val_acc", "val_loss", "test_acc", "test_loss", "diverged_at_step", "stopped_at_step", "n_params")})
        row.update(steps_done=final.get("steps"), epochs_done=final.get("epochs"), wall_s=e.get("wall_s"), error=e.get("error"))
        if row["n_params"] is None:
            row["n_params"] = e.get("n_params")
        path = Path(out_dir) / RUNS / rid / TRAJECTORY
        row["best_val_acc"] = row["final_train_loss"] = None
        if path.exists() and row["status"] in DONE.values():
            try:
                t = read_parquet(path, columns=["loss", "val_acc"]).to_pandas()
            except DataError as err:  # one corrupt run does not hide the others
                unreadable.append(first_line(err))
                t = pd.DataFrame()
            if len(t):
                va = t["val_acc"].dropna()
                row["best_val_acc"] = float(va.max()) if len(va) else None
                row["final_train_loss"] = float(t["loss"].iloc[-20:].mean())
        rows.append(row)
    warn_skipped("the zoo summary", unreadable)
    cols = ["run_id", "status", *CONFIG_TYPES, *METRICS, "error"]
    df = pd.DataFrame(rows).reindex(columns=cols)
    for c in ("val_acc", "val_loss", "test_acc", "test_loss", "best_val_acc", "final_train_loss", "lr", "wall_s"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    for c in INTEGER_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    return df


def _as_lists(table: pa.Table) -> pa.Table:
    """Per-layer fixed-size lists (their length depends on depth) as plain lists."""
    for i, f in enumerate(table.schema):
        if pa.types.is_fixed_size_list(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.list_(f.type.value_type)))
    return table


def load_zoo(
    out_dir: str | Path,
    format: Literal["pandas", "arrow", "duckdb"] = "pandas",
    *,
    include_partial: bool = False,
) -> Any:
    """Every trajectory of a zoo concatenated, with each run's config (``cfg_*``) and
    ``status`` joined in. ``format``: ``pandas`` (DataFrame), ``arrow`` (Table) or ``duckdb``
    (a connection with views ``zoo`` = the steps and ``runs`` = :func:`summarize_zoo`).
    Finished runs only, unless ``include_partial`` (then also what killed runs flushed)."""
    if format not in ("pandas", "arrow", "duckdb"):
        raise ConfigError(f"format must be pandas, arrow or duckdb, got {format!r}")
    tables, unreadable = [], []
    for rid, e in sorted(zoo_runs(out_dir).items()):
        status = e.get("status")
        if status not in DONE.values() and not (include_partial and status == "partial"):
            continue
        try:
            t = read_trajectory(Path(out_dir) / RUNS / rid)
        except DataError as err:
            unreadable.append(first_line(err))
            continue
        if t.num_rows == 0:
            continue
        t = _as_lists(t)
        flat = flatten_config(e.get("config") or {})
        n = t.num_rows
        t = t.append_column("status", pa.repeat(pa.scalar(status, pa.string()), n))
        for k, typ in CONFIG_TYPES.items():
            v = flat.get(k)
            if v is not None and typ == pa.float64():
                v = float(v)
            t = t.append_column(f"cfg_{k}", pa.repeat(pa.scalar(v, typ), n))
        tables.append(t)
    warn_skipped("load_zoo", unreadable)
    if tables:
        table = pa.concat_tables(tables, promote_options="default")
    else:
        table = pa.table({"run_id": pa.array([], pa.string())})
    if format == "arrow":
        return table
    if format == "pandas":
        return table.to_pandas()
    try:
        import duckdb
    except ImportError:
        raise ConfigError("format='duckdb' needs duckdb: pip install 'metalearner[query]'") from None
    con = duckdb.connect()
    con.register("zoo", table)
    con.register("runs", summarize_zoo(out_dir))
    return con


def summary_json(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of :func:`summarize_zoo` as JSON-safe dicts (NaN and NA -> None)."""
    out = []
    for row in df.to_dict(orient="records"):
        out.append({k: (None if v is pd.NA or (isinstance(v, float) and not math.isfinite(v)) else v) for k, v in row.items()})
    return json.loads(json.dumps(out, default=str))
