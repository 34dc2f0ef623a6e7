"""Run a sweep of base models into one directory: parallel, resumable, crash-safe.

Layout of a zoo directory ``DIR``::

    DIR/.lock                  held (flock) by the one sweep working in DIR
    DIR/manifest.json          every run's id, config, status, error, final metrics
    DIR/runs/<id>/run.json     the run itself (observe/store format) ...
    DIR/runs/<id>/trajectory.parquet
    DIR/runs/<id>/log.txt      the run's stdout, stderr and warnings
    DIR/rungs/                 successive-halving records (only with that pruner)

The run directories are the truth; the manifest is derived from them and rewritten
atomically by the parent only. A run counts as done when its ``run.json`` has a final status
(``complete``, ``diverged`` or ``stopped``) *and* its ``trajectory.parquet`` exists: both are
written atomically, trajectory first, so a run killed at any moment is either done or left
``partial``. Each run keeps its state at every epoch's end (``runs/<id>/checkpoint.safetensors``,
removed when it ends), so rerunning the same sweep skips done runs, continues partial ones
from their last epoch's end (those killed before their first start over) and retries failed
ones from the start. Run ids hash the full config, so matching is by content.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from metalearner.atomic import read_json_object, write_json
from metalearner.errors import ConfigError, DataError, MetalearnerError
from metalearner.observe.store import RUN_JSON, TRAJECTORY, read_run
from metalearner.train.run import CHECKPOINT, RunConfig
from metalearner.parallel import DirectoryLock, Executor, LocalExecutor
from metalearner.progress import Progress
from metalearner.zoo.spec import SweepSpec, run_id, sample_runs

MANIFEST = "manifest.json"
RUNS = "runs"
LOG = "log.txt"
DONE = {"complete": "complete", "diverged": "diverged", "stopped": "pruned"}  # run.json -> manifest


# -- the worker side -----------------------------------------------------------------------


@contextlib.contextmanager
def _redirect_output(log: io.TextIOBase, fds: bool) -> Iterator[None]:
    """Send stdout, stderr and warnings to ``log`` (also at the file-descriptor level, for
    C libraries, when ``fds``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2)) if fds else None
    if saved:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    old = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = log  # type: ignore[assignment]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
    finally:
        log.flush()
        sys.stdout, sys.stderr = old
        if saved:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _pruning_hook(pruner: Any, cfg: RunConfig, rid: str, out_dir: str) -> Any:
    def should_stop(table: Any, history: list[dict[str, float]], total_steps: int) -> bool:
        import pandas as pd

        df = table.to_pandas() if table is not None else pd.DataFrame(history)
        last = history[-1]
        df.attrs.update(
            run_id=rid, step=int(last["step"]), total_steps=int(total_steps), fraction=last["step"] / max(total_steps, 1),
            epoch=last["epoch"], val_acc=last["val_acc"], val_loss=last["val_loss"], out_dir=out_dir,
        )  # fmt: skip
        return bool(pruner(df, cfg))

    return should_stop


def run_one(item: dict[str, Any]) -> dict[str, Any]:
    """Train one run of a sweep into ``item['run_dir']`` (runs in a worker process).

    Returns a small record for the manifest; an exception propagates to the executor after
    its traceback is written to the run's log.
    """
    from metalearner.train.run import continuable, train_run

    run_dir = Path(item["run_dir"])
    if run_dir.exists() and not (run_dir / CHECKPOINT).is_file():  # leftovers of an attempt with nothing to continue
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig.from_dict(item["config"])
    pruner = item.get("pruner")
    hook = _pruning_hook(pruner, cfg, item["run_id"], item["out_dir"]) if pruner is not None else None
    t0 = time.perf_counter()
    with open(run_dir / LOG, "a", buffering=1) as log:
        log.write(f"run {item['run_id']} pid {os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.write(json.dumps(item["config"], sort_keys=True) + "\n")
        if continuable(run_dir, cfg):
            log.write("continuing from the checkpoint of its last epoch's end\n")
        try:
            with _redirect_output(log, fds=item.get("isolated", True)):
                result = train_run(cfg, run_dir, data_dir=item.get("data_dir"), run_id=item["run_id"], should_stop=hook, resume=True)
        except BaseException:
            log.write(traceback.format_exc())
            raise
        wall = time.perf_counter() - t0
        log.write(f"{result.status} after {result.steps} steps in {wall:.1f}s\n")
    meta = read_run(run_dir)
    return {"status": DONE.get(meta["status"], meta["status"]), "final": meta.get("final", {}), "wall_s": wall}


# -- the parent side -----------------------------------------------------------------------


@dataclass
class SweepResult:
    """What a sweep did. ``counts`` tallies manifest statuses over this sweep's runs."""

    out_dir: Path
    total: int
    skipped: int
    ran: int
    counts: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST


def done_status(run_dir: Path) -> dict[str, Any] | None:
    """``run.json`` of a finished run (final status and trajectory present), else None."""
    if not (run_dir / TRAJECTORY).exists() or not (run_dir / RUN_JSON).exists():
        return None
    try:
        meta = read_run(run_dir)
    except DataError:
        return None
    return meta if meta.get("status") in DONE else None


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The zoo's manifest (``{"runs": {id: entry}}``); an empty one if there is none."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return {"schema_version": 1, "runs": {}}
    data = read_json_object(path)
    if not isinstance(data.setdefault("runs", {}), dict):
        raise DataError(f"{path} is not what metalearner writes there (its 'runs' is not a JSON object)")
    return data


def _final_metrics(final: dict[str, Any]) -> dict[str, Any]:
    keys = ("val_acc", "val_loss", "test_acc", "test_loss", "steps", "epochs", "diverged_at_step", "stopped_at_step", "n_params")
    return {k: final[k] for k in keys if k in final}


def run_sweep(
    spec_or_runs: SweepSpec | Sequence[RunConfig],
    out_dir: str | Path,
    executor: Executor | None = None,
    *,
    pruner: Any = None,
    data_dir: str | None = None,
    progress: bool = True,
    retry_failed: bool = True,
) -> SweepResult:
    """Train every run of a spec (or a list of configs) into ``out_dir``; resumable.

    Holds ``out_dir/.lock`` for the whole sweep (a second sweep into the same directory
    raises :class:`~metalearner.parallel.DirectoryLocked`). Skips runs already done, continues partial ones from their
    last epoch's end, reruns failed ones unless ``retry_failed=False``, records each run's status in ``manifest.json`` as it
    finishes. A run that raises is recorded ``failed`` with its error and does not stop the
    sweep. ``pruner`` (see :mod:`metalearner.zoo.pruning`) may stop runs early: ``pruned``.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    spec = spec_or_runs if isinstance(spec_or_runs, SweepSpec) else None
    configs = sample_runs(spec) if spec is not None else list(spec_or_runs)
    runs: dict[str, RunConfig] = {}
    for cfg in configs:
        runs.setdefault(run_id(cfg), cfg)
    own_executor = executor is None
    executor = executor or LocalExecutor()

    with DirectoryLock(out):
        manifest = read_manifest(out)
        entries: dict[str, dict[str, Any]] = manifest["runs"]
        if spec is not None:
            manifest["spec"] = spec.to_dict()
        manifest["created"] = manifest.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S")
        todo: list[str] = []
        skipped = 0
        for rid, cfg in runs.items():
            entry = entries.setdefault(rid, {})
            entry["config"] = cfg.to_dict()
            run_dir = out / RUNS / rid
            meta = done_status(run_dir)
            if meta is not None:
                (run_dir / CHECKPOINT).unlink(missing_ok=True)  # left if killed between the run's end and its removal
                entry.update(status=DONE[meta["status"]], final=_final_metrics(meta.get("final") or {}))
                entry.pop("error", None)
                skipped += 1
            elif entry.get("status") == "failed" and not retry_failed:
                skipped += 1
            else:
                if run_dir.exists() and entry.get("status") == "failed":
                    shutil.rmtree(run_dir)  # a failed run starts over; a killed one continues from its checkpoint (run_one)
                entry.update(status="pending", final={})
                entry.pop("error", None)
                todo.append(rid)

        def save() -> None:
            manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            write_json(out / MANIFEST, manifest)

        save()
        if pruner is not None and hasattr(pruner, "setup"):
            pruner.setup(out)
        isolated = not type(executor).__name__.startswith("Inline")
        items = [
            {"run_id": rid, "config": runs[rid].to_dict(), "run_dir": str(out / RUNS / rid), "out_dir": str(out),
             "data_dir": data_dir, "pruner": pruner, "isolated": isolated}
            for rid in todo
        ]  # fmt: skip
        counts = {"failed": 0, "diverged": 0, "pruned": 0}
        try:
            with Progress(progress) as display:
                bar = display.bar("zoo", len(runs), completed=skipped, info="failed {failed}  diverged {diverged}  pruned {pruned}", **counts)
                for item, res in executor.map_unordered(run_one, items):
                    entry = entries[item["run_id"]]
                    if isinstance(res, BaseException):
                        entry.update(status="failed", error=f"{type(res).__name__}: {res}".splitlines()[0][:500], final={})
                    else:
                        entry.update(status=res["status"], final=_final_metrics(res["final"]), wall_s=round(res["wall_s"], 2))
                    save()
                    if entry["status"] in counts:
                        counts[entry["status"]] += 1
                    bar.advance(**counts)
        finally:
            if own_executor:
                executor.close()
            save()
    counts: dict[str, int] = {}
    for rid in runs:
        s = entries[rid]["status"]
        counts[s] = counts.get(s, 0) + 1
    return SweepResult(out_dir=out, total=len(runs), skipped=skipped, ran=len(todo), counts=counts, wall_s=time.perf_counter() - t0)


# -- terminal output -----------------------------------------------------------------------


def print_report(
    out_dir: str | Path, result: SweepResult | None = None, *, ids: list[str] | None = None, top: int = 10, summary: Any = None,
) -> None:
    """Results on stdout (progress is on stderr): a line on what the sweep ``result`` did,
    then rich tables of the best runs by final val acc and of the diverged/failed/pruned.
    ``summary``: the zoo's :func:`~metalearner.zoo.summary.summarize_zoo` if already made."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from metalearner.zoo.summary import summarize_zoo

    console = Console()  # stdout, so `metalearner zoo ... > out.txt` keeps the tables
    df = summarize_zoo(out_dir) if summary is None else summary
    if ids is not None:
        df = df[df["run_id"].isin(ids)]
    if result is not None:
        parts = ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items()))
        console.print(f"{result.total} runs ({result.skipped} already done): {parts} in {result.wall_s:.0f}s -> {result.out_dir}", soft_wrap=True)
    if df.empty:
        return

    def fmt(v: Any, f: str = "{:.4f}") -> str:
        return "-" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else f.format(v)

    best = df[df["status"] == "complete"].sort_values("val_acc", ascending=False).head(top)
    t = Table(title=f"best runs (of {len(df)}) by final val acc")
    for c in ("run", "task / model", "optimizer", "lr", "bs", "val acc", "test acc"):
        t.add_column(c, no_wrap=c != "task / model")
    for r in best.itertuples():
        t.add_row(r.run_id, f"{r.dataset} {r.family} {r.depth}x{r.width} {r.activation}", r.optimizer, fmt(r.lr, "{:.3g}"),
                  str(r.batch_size), fmt(r.val_acc), fmt(r.test_acc))  # fmt: skip
    console.print(t)
    bad = df[df["status"].isin(["diverged", "failed", "pruned"])].sort_values(["status", "lr"])
    if len(bad):
        t = Table(title="diverged, failed and pruned runs")
        for c in ("run", "status", "optimizer", "lr", "model", "at step", "val acc / error"):
            t.add_column(c, no_wrap=c in ("run", "status"))
        for r in bad.head(3 * top).itertuples():
            at = r.diverged_at_step if r.status == "diverged" else r.stopped_at_step
            last = str(r.error)[:60] if r.status == "failed" else fmt(r.val_acc)
            t.add_row(r.run_id, r.status, r.optimizer, fmt(r.lr, "{:.3g}"), f"{r.family} {r.depth}x{r.width}", fmt(at, "{:.0f}"), last)
        if len(bad) > 3 * top:
            t.caption = f"... and {len(bad) - 3 * top} more"
        console.print(t)
