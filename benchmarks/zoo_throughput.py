"""Zoo throughput: the speedup of 2 local workers over 1 on runs of realistic length.

The same sweep of MNIST MLPs (784-128-128-10 and 784-256-256-10, Adam and momentum, a
training set, 3 epochs: each run several seconds long like the ``mnist100`` preset's)
is trained into a fresh directory through ``run_sweep`` with ``LocalExecutor(1)`` and
``LocalExecutor(2)``, as ``metalearner zoo --workers 1`` and ``--workers 2`` do: one worker
gets every core's threads, two workers one each (``threads_per_worker``). The wall time
includes starting the workers, loading the data in each, writing every trajectory, run.json
and the manifest. The two sweeps run side by side, in alternating order, several times;
reported are the medians (wall time, runs/min, and the per-repeat speedup = wall with 1
worker / wall with 2) and each run's own median length, to show that the runs are long
enough for start-up not to dominate. A third sweep, 1 worker on 1 thread, separates the
process pool's scaling from what intra-op threads already give a single worker. (The probe's cost is measured by probe_overhead.py.)

    python benchmarks/zoo_throughput.py --quick          # < 1 minute, prints JSON
    python benchmarks/zoo_throughput.py                  # 8 runs x 4 repeats (about 5 minutes on
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


CONFIGS = ((1, None), (1, 1), (2, None))  # (workers, threads per worker; None: the cores split among the workers)


def name(workers: int, threads: int | None) -> str:
    return f"{workers}w" + ("" if threads is None else f"_{threads}t")


def sweep_once(runs: list[RunConfig], workers: int, threads: int | None, out: Path, data_dir: str | None) -> dict:
    """One sweep into a fresh ``out``: its wall time and its runs' own lengths."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with LocalExecutor(workers, threads_per_worker=threads) as ex:
        res = run_sweep(runs, out, ex, data_dir=data_dir, progress=False)
        threads = ex.threads_per_worker
    wall = time.perf_counter() - t0
    run_s = summarize_zoo(out)["wall_s"].dropna().tolist()
    return {"workers": workers, "threads_per_worker": threads, "runs": res.total, "wall_s": round(wall, 2),
            "median_run_s": round(median(run_s), 2), "counts": res.counts}  # fmt: skip


def side_by_side(runs: list[RunConfig], repeats: int, root: Path, data_dir: str | None) -> list[dict]:
    """``repeats`` rounds of one sweep per configuration, the order rotating from round to round."""
    rounds = []
    for r in range(repeats):
        order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
        sweeps = {name(w, t): sweep_once(runs, w, t, root / f"r{r}{name(w, t)}", data_dir) for w, t in order}
        rounds.append({"repeat": r, "order": [name(w, t) for w, t in order], "sweeps": sweeps,
                       "speedup_2_over_1": round(sweeps["1w"]["wall_s"] / sweeps["2w"]["wall_s"], 3),
                       "speedup_2_over_1_one_thread": round(sweeps["1w_1t"]["wall_s"] / sweeps["2w"]["wall_s"], 3)})  # fmt: skip
    return rounds


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
    ap.add_argument("--repeats", type=int, default=None, help="pairs of sweeps (default 4, quick 2)")
    ap.add_argument("--preset-run", action="store_true", help="also train the mnist100 preset with 2 workers")
    ap.add_argument("--zoo-dir", type=Path, default=Path(tempfile.gettempdir()) / "metalearner_zoo_mnist100")
    ap.add_argument("--data-dir", default=default_data_dir())
    args = ap.parse_args()
    n, n_train, epochs, repeats = (4, 8000, 2, 2) if args.quick else (8, 50000, 3, 4)
    repeats = args.repeats or repeats
    runs = mnist_sweep(n, n_train, epochs)
    with tempfile.TemporaryDirectory() as tmp:
        rounds = side_by_side(runs, repeats, Path(tmp), args.data_dir)
    names = [name(w, t) for w, t in CONFIGS]
    walls = {k: median([r["sweeps"][k]["wall_s"] for r in rounds]) for k in names}
    run_s = {k: median([r["sweeps"][k]["median_run_s"] for r in rounds]) for k in names}

    def speedup(key: str) -> tuple[float, list[float]]:
        xs = [r[key] for r in rounds]
        return round(median(xs), 3), [min(xs), max(xs)]

    summary = {
        "runs": n, "n_train": n_train, "epochs": epochs, "repeats": repeats, "cores": len(os.sched_getaffinity(0)),
        **{f"median_run_s_{k}": round(v, 2) for k, v in run_s.items()},
        **{f"runs_per_min_{k}": round(60 * n / v, 2) for k, v in walls.items()},
        "speedup_2_over_1": speedup("speedup_2_over_1")[0], "speedup_range": speedup("speedup_2_over_1")[1],
        "speedup_2_over_1_one_thread": speedup("speedup_2_over_1_one_thread")[0],
        "speedup_one_thread_range": speedup("speedup_2_over_1_one_thread")[1],
    }  # fmt: skip
    details = {
        "method": "the same MNIST MLP sweep with LocalExecutor(1) (1w: all cores' threads), LocalExecutor(1, 1 thread) "
                  "(1w_1t) and LocalExecutor(2) (2w: one thread each), one sweep each per round, the order rotating; "
                  "speedup = wall(1w or 1w_1t) / wall(2w) per round, median over rounds; median_run_s = a run's own "
                  "training time (run.json wall_s)",
        "rounds": rounds,
    }  # fmt: skip
    if args.preset_run:
        preset = preset_run(args.zoo_dir, args.data_dir, workers=2)
        summary.update(preset_wall_min=preset["wall_min"], preset_counts=preset["counts"])
        details["preset"] = preset
    finish("zoo_throughput", summary, details, quick=args.quick)


if __name__ == "__main__":
    main()
