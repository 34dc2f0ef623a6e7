"""Learning data from a zoo: per-step features, targets, windows and grouped splits.

Features are the probe's trajectory columns (:mod:`metalearner.observe.schema` is their one
definition, with the one log transform), transformed, never re-derived: ``log`` of ``loss``,
``grad_norm``, ``weight_norm``, ``update_ratio`` and ``lr``; ``momentum``; ``train_acc``; the last
validation loss/accuracy seen so far (forward filled); the step fraction ``t / T``;
``log_loss_ema``, a causal EMA (α = 0.1) of the log loss; the learning-curve extrapolations
of the validation accuracy so far (:mod:`metalearner.mirror.curves`); plus the run's static description:
``run.json``'s ``architecture.vector``, one-hot optimizer and data set, ``log2(batch size)``.
Loss predictors also see the log-loss smoothers of :mod:`metalearner.mirror.trends` (the EMA
and linear-trend baselines over their whole tuning grid; :attr:`Dataset.loss_features`).

Targets at step ``t`` of a run with per-batch losses ``ℓ`` (log losses, because losses span
orders of magnitude across runs and a diverging run would otherwise dominate every error;
capped at ``ln 1000``: a cross-entropy that large has diverged, and how far beyond is noise):

``next_loss``      ``log ℓ_{t+1}`` (raw: mostly batch noise, kept for completeness)
``smooth_loss``    ``mean(log ℓ_{t+1..t+k})``: the *smoothed* next loss. A per-batch loss is
                   the expected loss plus sampling noise of the batch that no model can
                   predict; averaging the next ``k`` losses keeps the part a predictor can
                   know (level and trend), and, unlike an EMA, is centred on the future
                   (an EMA target would lag and be half known at ``t``).
``ahead_loss``     ``mean(log ℓ_{t+a−k+1..t+a})``: the smoothed loss ``a`` steps ahead
``val_loss_next``, ``val_acc_next``  at the next evaluation after ``t`` (the loss as a log)
``final_acc``      the run's last validation accuracy (NaN for pruned runs)
``steps_to_acc``   steps from ``t`` until validation accuracy first reaches ``acc_threshold``
                   (0 once reached); NaN and ``censored_acc`` = True when never reached
``lr_log_ratio``   ``ln(lr_best / lr)`` where ``lr_best`` is the learning rate of the sibling
                   with the best ``final_acc`` among runs whose configs differ only in ``lr``
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from metalearner.atomic import atomic_path, read_json, write_json
from metalearner.errors import ConfigError, DataError, first_line, warn_skipped
from metalearner.mirror.curves import curve_features
from metalearner.mirror.trends import TREND_FEATURES, loss_trend_features
from metalearner.observe.schema import feature
from metalearner.observe.store import RUN_JSON, TRAJECTORY, read_parquet, read_run, read_trajectory
from metalearner.tasks.data import DATASETS
from metalearner.methods import METHODS

ROWS = "rows.parquet"
META = "dataset.json"
DYNAMIC = ("log_loss", "log_loss_ema", "log_grad_norm", "log_weight_norm", "log_update_ratio", "log_lr", "momentum", "train_acc",
           "log_val_loss_last", "val_acc_last", "has_eval", "fraction", "acc_fit_linear", "acc_fit_power", "acc_fit_exp")  # fmt: skip
TARGETS = ("next_loss", "smooth_loss", "ahead_loss", "val_loss_next", "val_acc_next", "final_acc", "steps_to_acc", "lr_log_ratio")
SPLITS = ("run", "arch", "task", "optimizer")
LOG_LOSS_CAP = math.log(1e3)  # a loss of 1000 nats has diverged; larger values carry no signal
EMA_ALPHA = 0.1  # of the log_loss_ema feature (a smoothed view of the logged loss)


@dataclass(frozen=True)
class DatasetConfig:
    """How rows and targets are made. ``k``: smoothing width; ``ahead``: horizon of
    ``ahead_loss``; ``acc_threshold``: the accuracy of ``steps_to_acc``."""

    k: int = 20
    ahead: int = 50
    acc_threshold: float = 0.9
    seed: int = 0


def forward_mean(x: np.ndarray, k: int, offset: int = 1) -> np.ndarray:
    """``out[t] = mean(x[t+offset-k+1 .. t+offset])`` for windows ending at ``t+offset`` with
    ``offset >= k``, else ``mean(x[t+1 .. t+k])``; NaN where the window runs past the end."""
    n = len(x)
    finite = np.isfinite(x)
    c = np.concatenate([[0.0], np.cumsum(np.where(finite, x, 0.0))])
    bad = np.concatenate([[0], np.cumsum(~finite)])  # a window with a non-finite value is NaN
    end = np.arange(n) + max(offset, k)  # inclusive last index
    start = end - k + 1
    out = np.full(n, np.nan)
    ok = end < n
    ok[ok] = bad[end[ok] + 1] == bad[start[ok]]
    out[ok] = (c[end[ok] + 1] - c[start[ok]]) / k
    return out


def causal_ema(x: np.ndarray, alpha: float) -> np.ndarray:
    """``m_t = α x_t + (1 − α) m_{t−1}``, ``m_0 = x_0``."""
    out = np.empty(len(x))
    m = x[0] if len(x) else 0.0
    for i, v in enumerate(x):
        m = alpha * v + (1 - alpha) * m
        out[i] = m
    return out


def steps_per_epoch(traj: pd.DataFrame) -> int:
    """Batches in the first epoch (the whole trajectory if it never finished one)."""
    return int((traj["epoch"] == 0).sum()) if (traj["epoch"] > 0).any() else max(len(traj), 1)


def total_steps(traj: pd.DataFrame, config: dict[str, Any], per_epoch: int | None = None) -> int:
    """The run's step budget from its config (``epochs`` and/or ``steps``); ``per_epoch``
    (``fit`` records it as ``final.steps_per_epoch``) beats counting the trajectory, which
    undercounts runs that ended inside their first epoch."""
    per = per_epoch or steps_per_epoch(traj)
    epochs, steps = config.get("epochs"), config.get("steps")
    total = min(steps or math.inf, math.ceil((epochs or math.inf) * per))
    return int(total) if math.isfinite(total) else max(len(traj), 1)


def static_features(meta: dict[str, Any]) -> dict[str, float]:
    """The run's fixed description: architecture vector, one-hot optimizer and data set."""
    arch = meta.get("architecture") or {}
    cfg = meta.get("config") or {}
    task = cfg.get("task") or {}
    out = {f"arch:{name}": float(v) for name, v in zip(arch.get("vector_fields", []), arch.get("vector", []))}
    out.update({f"opt={o}": float(cfg.get("optimizer") == o) for o in METHODS})
    out.update({f"data={d}": float(task.get("dataset") == d) for d in DATASETS})
    out["log2_batch"] = math.log2(task.get("batch_size") or 1)
    return out


def step_features(traj: pd.DataFrame, total: int, start: int = 0) -> pd.DataFrame:
    """The dynamic features of every step (see :data:`DYNAMIC`), from the probe's columns
    (the curve fits only from index ``start`` on)."""
    val_loss = traj["val_loss"].ffill()
    log_loss = np.minimum(feature("loss", traj["loss"].fillna(np.inf)), LOG_LOSS_CAP)
    val_acc = traj["val_acc"].ffill()
    logs = {f"log_{name}": feature(name, traj[name]) for name in ("grad_norm", "weight_norm", "update_ratio", "lr")}
    return pd.DataFrame({
        "log_loss": log_loss, "log_loss_ema": causal_ema(log_loss, EMA_ALPHA), **logs,
        "momentum": traj["momentum"].fillna(0.0).to_numpy(float),
        "train_acc": traj["train_acc"].fillna(0.0).to_numpy(float),
        "log_val_loss_last": np.where(val_loss.notna(), feature("val_loss", val_loss.fillna(1.0)), 0.0),
        "val_acc_last": val_acc.fillna(0.0).to_numpy(float), "has_eval": val_acc.notna().to_numpy(float),
        "fraction": traj["step"].to_numpy(float) / max(total, 1),
        **curve_features(traj["step"].to_numpy(), traj["val_acc"].to_numpy(float), float(total), start),
        **loss_trend_features(log_loss),
    })  # fmt: skip


def live_rows(traj: pd.DataFrame, config: dict[str, Any], total: int, window: int) -> pd.DataFrame:
    """Feature rows of a run in progress (a probe trajectory so far and its run config, as a
    dict), enough for the last ``window`` steps: what a pruner or advisor feeds a predictor."""
    from metalearner.tasks.models import ModelConfig, encode_architecture

    model = ModelConfig(**((config.get("task") or {}).get("model") or {}))
    n_params = int(traj["n_params"].iloc[0]) if "n_params" in traj and len(traj) else 1
    meta = {"architecture": encode_architecture(model, n_params), "config": config}
    traj = traj.reset_index(drop=True)
    rows = step_features(traj, total, start=max(len(traj) - window, 0))
    for name, v in static_features(meta).items():
        rows[name] = v
    rows.insert(0, "run_id", "live")
    return rows


def final_accuracy(traj: pd.DataFrame, meta: dict[str, Any]) -> float:
    """Last validation accuracy of a finished run; NaN for a run stopped by a pruner."""
    if meta.get("status") == "stopped":
        return math.nan
    acc = (meta.get("final") or {}).get("val_acc")
    if acc is None:
        seen = traj["val_acc"].dropna()
        acc = float(seen.iloc[-1]) if len(seen) else math.nan
    return float(acc)


def run_targets(traj: pd.DataFrame, meta: dict[str, Any], cfg: DatasetConfig) -> pd.DataFrame:
    """Every target of :data:`TARGETS` but ``lr_log_ratio`` (which needs the siblings)."""
    log_loss = np.minimum(feature("loss", traj["loss"]), LOG_LOSS_CAP)
    log_loss[~np.isfinite(traj["loss"].to_numpy(float))] = np.nan
    steps = traj["step"].to_numpy()
    nxt = np.full(len(traj), np.nan)
    nxt[:-1] = log_loss[1:]
    # next evaluation strictly after t: shift by one, then backward fill
    val_loss_next = feature("val_loss", traj["val_loss"].shift(-1).bfill())
    val_acc_next = traj["val_acc"].shift(-1).bfill().to_numpy(float)
    hit = np.flatnonzero(traj["val_acc"].to_numpy(float) >= cfg.acc_threshold)
    if len(hit):
        to_acc = np.maximum(steps[hit[0]] - steps, 0).astype(float)
    else:
        to_acc = np.full(len(traj), np.nan)
    return pd.DataFrame({
        "next_loss": nxt, "smooth_loss": forward_mean(log_loss, cfg.k), "ahead_loss": forward_mean(log_loss, cfg.k, cfg.ahead),
        "val_loss_next": val_loss_next, "val_acc_next": val_acc_next, "final_acc": final_accuracy(traj, meta),
        "steps_to_acc": to_acc, "censored_acc": not len(hit),
    })  # fmt: skip


def sibling_key(config: dict[str, Any]) -> str:
    """The config without its learning rate: runs with equal keys are LR siblings."""
    return json.dumps({k: v for k, v in config.items() if k != "lr"}, sort_keys=True, default=str)


def lr_log_ratios(runs: pd.DataFrame) -> pd.Series:
    """``ln(lr_best / lr)`` per run (index ``run_id``); NaN without a scored sibling."""
    out = pd.Series(np.nan, index=runs["run_id"].to_numpy())
    for _, g in runs.groupby("sibling_key"):
        scored = g[np.isfinite(g["final_acc"])]
        if len(g) < 2 or len(scored) < 2:
            continue
        best_lr = scored.sort_values(["final_acc", "lr"], ascending=[False, True])["lr"].iloc[0]
        out[g["run_id"].to_numpy()] = np.log(best_lr / g["lr"].to_numpy(float))
    return out


def run_rows(run_dir: Path, cfg: DatasetConfig) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """One run's rows (features, targets, ids) and its summary, or None if it is empty."""
    meta = read_run(run_dir)
    traj = read_trajectory(run_dir, format="pandas")
    if not len(traj):
        return None
    config = meta.get("config") or {}
    total = total_steps(traj, config, (meta.get("final") or {}).get("steps_per_epoch"))
    rows = step_features(traj, total)
    for name, v in static_features(meta).items():
        rows[name] = v
    rows = pd.concat([rows, run_targets(traj, meta, cfg)], axis=1)
    model = (config.get("task") or {}).get("model") or {}
    ids = {"run_id": meta.get("run_id") or run_dir.name, "task": meta.get("task"), "optimizer": config.get("optimizer"),
           "depth": model.get("depth"), "width": model.get("width"), "activation": model.get("activation"),
           "lr": config.get("lr"), "total_steps": total}  # fmt: skip
    rows.insert(0, "is_eval", traj["val_acc"].notna().to_numpy())
    rows.insert(0, "step", traj["step"].to_numpy())
    for i, (k, v) in enumerate(ids.items()):
        rows.insert(i, k, v)
    summary = {**ids, "status": meta.get("status"), "final_acc": float(rows["final_acc"].iloc[0]), "sibling_key": sibling_key(config)}
    return rows, summary


def build_dataset(
    zoo_dir: str | Path, out: str | Path | None = None, cfg: DatasetConfig = DatasetConfig(), progress: Any = None,
) -> "Dataset":
    """Rows of every finished run of a zoo (``zoo_dir/runs/*``); written to ``out`` as
    ``rows.parquet`` + ``dataset.json`` when given. Deterministic: runs sorted by id.
    ``progress``: an object with ``update(done, total)`` (a progress bar), told the runs done."""
    root = Path(zoo_dir) / "runs"
    if not root.is_dir():
        raise DataError(f"{zoo_dir} is not a zoo (no runs/ folder)")
    parts, summaries, unreadable = [], [], []
    run_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    for i, run_dir in enumerate(run_dirs):
        if progress is not None:
            progress.update(i, len(run_dirs))
        if not (run_dir / RUN_JSON).exists() or not (run_dir / TRAJECTORY).exists():
            continue  # not a finished run: a folder a sweep is still making
        try:
            got = run_rows(run_dir, cfg) if read_run(run_dir).get("status") in ("complete", "diverged", "stopped") else None
        except DataError as err:  # one corrupt run does not stop the others
            unreadable.append(first_line(err))
            continue
        if got is not None:
            parts.append(got[0])
            summaries.append(got[1])
    if progress is not None:
        progress.update(len(run_dirs), len(run_dirs))
    warn_skipped("the data set", unreadable)
    if not parts:
        raise DataError(f"{zoo_dir} has no finished runs")
    runs = pd.DataFrame(summaries)
    ratios = lr_log_ratios(runs)
    runs["lr_log_ratio"] = ratios.to_numpy()
    rows = pd.concat(parts, ignore_index=True)
    rows["lr_log_ratio"] = rows["run_id"].map(ratios).astype(float)
    ds = Dataset(rows=rows, runs=runs, config=cfg)
    if out is not None:
        ds.save(out)
    return ds


@dataclass
class Dataset:
    """Rows (one per step of every run) and runs (one per run), with the build config."""

    rows: pd.DataFrame
    runs: pd.DataFrame
    config: DatasetConfig

    @property
    def features(self) -> list[str]:
        """Feature columns: :data:`DYNAMIC` then the static ones, in a fixed order."""
        static = [c for c in self.rows.columns if c.startswith(("arch:", "opt=", "data=")) or c == "log2_batch"]
        return [*DYNAMIC, *static]

    @property
    def loss_features(self) -> list[str]:
        """:attr:`features` plus the log-loss smoothers of :mod:`~metalearner.mirror.trends`
        (every loss baseline's forecast): the inputs of loss predictors."""
        return [*self.features, *TREND_FEATURES]

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / ROWS) as tmp:
            pq.write_table(pa.Table.from_pandas(self.rows, preserve_index=False), tmp)
        write_json(out / META, {"config": asdict(self.config), "features": self.features, "targets": list(TARGETS),
                                "runs": self.runs.to_dict(orient="records")})  # fmt: skip
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Dataset":
        path = Path(path)
        if not (path / ROWS).exists() or not (path / META).exists():
            raise DataError(f"{path} is not a mirror dataset (needs {ROWS} and {META})")
        meta = read_json(path / META)
        try:
            runs = pd.DataFrame(meta["runs"])
            runs["final_acc"] = pd.to_numeric(runs["final_acc"], errors="coerce")
            runs["lr_log_ratio"] = pd.to_numeric(runs["lr_log_ratio"], errors="coerce")
            config = DatasetConfig(**meta["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path / META} is not a mirror dataset description (bad or missing entry {first_line(e)})") from None
        rows = read_parquet(path / ROWS, needs=("run_id", "step", "log_loss", "fraction")).to_pandas()
        if any(c not in rows.columns for c in TREND_FEATURES):  # written before the smoothers were features
            add_trend_features(rows)
        return cls(rows=rows, runs=runs, config=config)


def add_trend_features(rows: pd.DataFrame) -> pd.DataFrame:
    """Add (in place) :data:`~metalearner.mirror.trends.TREND_FEATURES`, computed per run
    from its ``log_loss`` column (rows of a run contiguous, in step order)."""
    cols = {name: np.zeros(len(rows)) for name in TREND_FEATURES}
    codes = pd.factorize(rows["run_id"].to_numpy())[0]
    bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True])
    ll = rows["log_loss"].to_numpy(np.float64)
    for a, b in zip(bounds[:-1], bounds[1:]):
        for name, v in loss_trend_features(ll[a:b]).items():
            cols[name][a:b] = v
    for name, v in cols.items():
        rows[name] = v
    return rows


# -- grouped splits ------------------------------------------------------------------------


def group_of(runs: pd.DataFrame, by: str) -> pd.Series:
    """The group label of each run for a split ``by`` in :data:`SPLITS`."""
    if by == "run":  # LR siblings stay together: their lr_log_ratio labels share one best run
        return (runs["sibling_key"] if "sibling_key" in runs else runs["run_id"]).astype(str)
    if by == "arch":
        return runs["depth"].astype(str) + "x" + runs["width"].astype(str) + ":" + runs["activation"].astype(str)
    if by in ("task", "optimizer"):
        return runs[by].astype(str)
    raise ConfigError(f"unknown split {by!r}; choose from {', '.join(SPLITS)}")


def split_runs(
    runs: pd.DataFrame, by: str = "run", *, test: float = 0.25, val: float = 0.15, seed: int = 0,
    holdout: Iterable[str] | None = None,
) -> dict[str, str]:
    """Assign every run to ``train``/``val``/``test`` so that a group (see :func:`group_of`)
    never straddles two sides. ``holdout``: explicit test groups; else a seeded ``test``
    fraction of the groups. ``val`` (for early stopping) takes groups of the rest."""
    groups = group_of(runs, by)
    names = sorted(groups.unique())
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    if holdout is not None:
        test_g = set(holdout)
        unknown = test_g - set(names)
        if unknown:
            raise ConfigError(f"held-out {by} groups not in the data: {', '.join(sorted(unknown))}")
    else:
        test_g = set(order[: max(1, round(test * len(order)))])
    rest = [g for g in order if g not in test_g]
    val_g = set(rest[: max(1, round(val * len(order)))]) if val > 0 and len(rest) > 1 else set()
    side = {g: "test" if g in test_g else "val" if g in val_g else "train" for g in names}
    return {rid: side[g] for rid, g in zip(runs["run_id"], groups)}


# -- windows -------------------------------------------------------------------------------


def windows(rows: pd.DataFrame, features: list[str], index: np.ndarray, horizon: int) -> np.ndarray:
    """Windows ``(len(index), horizon, F)`` of the last ``horizon`` steps up to each row in
    ``index`` (positions in ``rows``), edge-padded at the start of a run. Rows of one run
    must be contiguous and in step order (as :func:`build_dataset` writes them)."""
    x = np.nan_to_num(rows[features].to_numpy(np.float32), nan=0.0, posinf=30.0, neginf=-30.0)
    x = np.clip(x, -1e4, 1e4)
    run = rows["run_id"].to_numpy()
    codes = pd.factorize(run)[0]
    first = np.zeros(len(rows), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    first[starts] = starts
    first = np.maximum.accumulate(first)
    offs = np.arange(-horizon + 1, 1)
    idx = np.maximum(index[:, None] + offs[None, :], first[index][:, None])
    return x[idx]


def examples(
    ds: Dataset, target: str | list[str], split: dict[str, str], side: str, *, stride: int = 1,
    fraction: tuple[float, float] = (0.0, 1.0), at_fraction: float | None = None,
) -> np.ndarray:
    """Row positions of the examples of ``side`` whose targets are all finite: every
    ``stride``-th step with ``fraction`` in the given range, or, with ``at_fraction``, the one
    last step of each run at or before that fraction of its budget."""
    rows = ds.rows
    targets = [target] if isinstance(target, str) else list(target)
    ok = rows["run_id"].map(split).eq(side).to_numpy(bool).copy()
    ok &= np.isfinite(rows[targets].to_numpy(float)).all(axis=1)
    ok &= np.isfinite(rows["log_loss"].to_numpy(float))
    frac = rows["fraction"].to_numpy(float)
    if at_fraction is not None:
        cand = rows.index[ok & (frac <= at_fraction + 1e-9)]
        last = rows.loc[cand].groupby("run_id", sort=False)["step"].idxmax()
        return np.sort(last.to_numpy())
    ok &= (frac >= fraction[0]) & (frac <= fraction[1])
    ok &= rows["step"].to_numpy() % max(stride, 1) == 0
    return np.flatnonzero(ok)
