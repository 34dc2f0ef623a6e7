"""Zoo throughput: the speedup of 2 local workers over 1 on runs of realistic length.

The same sweep of MNIST MLPs (784-128-128-10 and 784-256-256-10, Adam and momentum, a
subset of the training set, each run several seconds long like the ``mnist100`` preset's)
is trained into a fresh directory through ``run_sweep`` with ``LocalExecutor(1)`` and
``LocalExecutor(2)``, as ``metalearner zoo --workers 1`` and ``--workers 2`` do: one worker
gets every core's threads, two workers one each (``threads_per_worker``). The wall time
includes starting the workers, loading the data in each, writing every trajectory, run.json
and the manifest. The two sweeps run side by side, in alternating order, several times;
reported are the medians (wall time, runs/min, and the per-repeat speedup = wall with 1
worker / wall with 2) and each run's own median length, to show that the runs are long
enough for start-up not to dominate. (The probe's cost is measured by probe_overhead.py.)

    python benchmarks/zoo_throughput.py --quick          # < 1 minute, prints JSON
    python benchmarks/zoo_throughput.py                  # 8 runs x 5 repeats (about 6 minutes on
                                                         # 2 quiet cores): results/zoo_throughput.json
    python benchmarks/zoo_throughput.py --preset-run     # also time the 100-model MNIST preset, 2 workers
                                                         # (tens of minutes; resumable: rerun to finish;
                                                         # the committed zoo_mnist100_preset.json came from
                                                         # `metalearner zoo --spec mnist100`, run in segments)
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import RESULTS, default_data_dir, finish, median
from metalearner.parallel import LocalExecutor
from metalearner.tasks.models import ModelConfig
from metalearner.tasks.task import TaskConfig
from metalearner.train.run import RunConfig
from metalearner.zoo import load_spec, run_sweep, summarize_zoo
from metalearner.zoo.summary import summary_json


def mnist_sweep(n: int, n_train: int, epochs: int) -> list[RunConfig]:
    """``n`` MNIST MLP runs of a few seconds each: widths 128/256, Adam/momentum, seeds 0..n-1."""
    runs = []
    for i in range(n):
        task = TaskConfig(dataset="mnist", batch_size=128, n_train=n_train, model=ModelConfig(depth=2, width=(128, 256)[i % 2]))
        runs.append(RunConfig(task=task, optimizer=("adam", "momentum")[i // 2 % 2], lr=(1e-3, 3e-2)[i // 2 % 2], epochs=epochs, seed=i))
    return runs


def sweep_once(runs: list[RunConfig], workers: int, out: Path, data_dir: str | None) -> dict:
    """One sweep into a fresh ``out``: its wall time and its runs' own lengths."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with LocalExecutor(workers) as ex:
        res = run_sweep(runs, out, ex, data_dir=data_dir, progress=False)
        threads = ex.threads_per_worker
    wall = time.perf_counter() - t0
    run_s = summarize_zoo(out)["wall_s"].dropna().tolist()
    return {"workers": workers, "threads_per_worker": threads, "runs": res.total, "wall_s": round(wall, 2),
            "median_run_s": round(median(run_s), 2), "counts": res.counts}  # fmt: skip


def side_by_side(runs: list[RunConfig], repeats: int, root: Path, data_dir: str | None) -> list[dict]:
    """``repeats`` pairs of sweeps (1 and 2 workers), the order alternating from pair to pair."""
    pairs = []
    for r in range(repeats):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        by_workers = {w: sweep_once(runs, w, root / f"r{r}w{w}", data_dir) for w in order}
        pairs.append({"repeat": r, "order": list(order), "sweeps": [by_workers[1], by_workers[2]],
                      "speedup_2_over_1": round(by_workers[1]["wall_s"] / by_workers[2]["wall_s"], 3)})  # fmt: skip
    return pairs


def preset_run(zoo_dir: Path, data_dir: str | None, workers: int) -> dict:
    t0 = time.perf_counter()
    with LocalExecutor(workers) as ex:
        res = run_sweep(load_spec("mnist100"), zoo_dir, ex, data_dir=data_dir, progress=True)
    wall = time.perf_counter() - t0
    df = summarize_zoo(zoo_dir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    df.to_csv(RESULTS / "zoo_mnist100_summary.csv", index=False)
    best = df[df["status"] == "complete"].sort_values("val_acc", ascending=False)
    return {
        "zoo_dir": str(zoo_dir), "workers": workers, "wall_s": round(wall, 1), "wall_min": round(wall / 60, 1),
        "runs": res.total, "ran_now": res.ran, "already_done": res.skipped, "counts": res.counts,
        "summary_csv": str(RESULTS / "zoo_mnist100_summary.csv"),
        "best": summary_json(best.head(5)), "diverged": int((df["status"] == "diverged").sum()),
        "runs_table": summary_json(df),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 runs of ~2 s, 2 repeats (under a minute); prints JSON only")
    ap.add_argument("--repeats", type=int, default=None, help="pairs of sweeps (default 5, quick 2)")
    ap.add_argument("--preset-run", action="store_true", help="also train the mnist100 preset with 2 workers")
    ap.add_argument("--zoo-dir", type=Path, default=Path(tempfile.gettempdir()) / "metalearner_zoo_mnist100")
    ap.add_argument("--data-dir", default=default_data_dir())
    args = ap.parse_args()
    n, n_train, epochs, repeats = (4, 8000, 2, 2) if args.quick else (8, 20000, 2, 5)
    repeats = args.repeats or repeats
    runs = mnist_sweep(n, n_train, epochs)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = side_by_side(runs, repeats, Path(tmp), args.data_dir)
    walls = {w: [p["sweeps"][w - 1]["wall_s"] for p in pairs] for w in (1, 2)}
    run_s = {w: median([p["sweeps"][w - 1]["median_run_s"] for p in pairs]) for w in (1, 2)}
    summary = {
        "runs": n, "n_train": n_train, "epochs": epochs, "repeats": repeats, "cores": len(os.sched_getaffinity(0)),
        "median_run_s_1": round(run_s[1], 2), "median_run_s_2": round(run_s[2], 2),
        "wall_s_1": round(median(walls[1]), 2), "wall_s_2": round(median(walls[2]), 2),
        "runs_per_min_1": round(60 * n / median(walls[1]), 2), "runs_per_min_2": round(60 * n / median(walls[2]), 2),
        "speedup_2_over_1": round(median([p["speedup_2_over_1"] for p in pairs]), 3),
        "speedup_range": [min(p["speedup_2_over_1"] for p in pairs), max(p["speedup_2_over_1"] for p in pairs)],
    }  # fmt: skip
    details = {
        "method": "the same MNIST MLP sweep with LocalExecutor(1) (all cores' threads) and LocalExecutor(2) "
                  "(one thread each), side by side in alternating order; speedup = wall(1) / wall(2) per repeat, "
                  "median over repeats; median_run_s = a run's own training time (run.json wall_s)",
        "pairs": pairs,
    }  # fmt: skip
    if args.preset_run:
        preset = preset_run(args.zoo_dir, args.data_dir, workers=2)
        summary.update(preset_wall_min=preset["wall_min"], preset_counts=preset["counts"])
        details["preset"] = preset
    finish("zoo_throughput", summary, details, quick=args.quick)


if __name__ == "__main__":
    main()
