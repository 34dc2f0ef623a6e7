"""Zoo throughput: runs per minute with 1 and 2 local workers, and the probe's share.

The same small sweep (MLPs on scikit-learn digits, a few epochs each) is trained into a fresh
directory with ``LocalExecutor(1)`` and ``LocalExecutor(2)`` through ``run_sweep``; the
wall time includes starting the worker processes, writing every trajectory, run.json and the
manifest. Speedup = runs/min with 2 workers over 1.

The probe's share is measured in-process on the same run configs, one thread: each run is
trained by ``train_run`` with the probe (writing its files) and without (``probe=False``),
alternating the order; share = 1 - time without / time with, summed over runs.

    python benchmarks/zoo_throughput.py --quick          # < 1 minute, prints JSON
    python benchmarks/zoo_throughput.py                  # bigger sweep: writes results/zoo_throughput.json
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

import torch

from _common import RESULTS, default_data_dir, finish
from metalearner.tasks.models import ModelConfig
from metalearner.tasks.task import TaskConfig
from metalearner.train.run import RunConfig, train_run
from metalearner.zoo import LocalExecutor, load_spec, run_sweep, summarize_zoo
from metalearner.zoo.summary import summary_json


def small_sweep(n: int, epochs: int) -> list[RunConfig]:
    runs = []
    for i in range(n):
        task = TaskConfig(dataset="digits", batch_size=32, model=ModelConfig(depth=1 + i % 3, width=(32, 64)[i % 2]))
        runs.append(RunConfig(task=task, optimizer=("adam", "momentum")[i % 2], lr=(1e-3, 3e-2)[i % 2], epochs=epochs, seed=i))
    return runs


def sweep_rate(runs: list[RunConfig], workers: int, root: Path) -> dict:
    out = root / f"w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with LocalExecutor(workers) as ex:
        res = run_sweep(runs, out, ex, progress=False)
    wall = time.perf_counter() - t0
    return {"workers": workers, "runs": res.total, "wall_s": round(wall, 2), "runs_per_min": round(60 * res.total / wall, 2),
            "counts": res.counts}  # fmt: skip


def probe_share(runs: list[RunConfig], root: Path) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    on = off = 0.0
    try:
        train_run(runs[0], root / "warm", probe=True)
        for i, cfg in enumerate(runs):
            for with_probe in ((True, False) if i % 2 == 0 else (False, True)):
                t0 = time.perf_counter()
                train_run(cfg, root / f"p{i}" if with_probe else None, probe=with_probe)
                dt = time.perf_counter() - t0
                if with_probe:
                    on += dt
                else:
                    off += dt
    finally:
        torch.set_num_threads(threads)
    return {"with_probe_s": round(on, 3), "without_probe_s": round(off, 3), "probe_share": round(1 - off / on, 4)}


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
    ap.add_argument("--quick", action="store_true", help="a small sweep, 1 vs 2 workers (under a minute)")
    ap.add_argument("--preset-run", action="store_true", help="also train the mnist100 preset with 2 workers")
    ap.add_argument("--zoo-dir", type=Path, default=Path(tempfile.gettempdir()) / "metalearner_zoo_mnist100")
    ap.add_argument("--data-dir", default=default_data_dir())
    args = ap.parse_args()
    n, epochs, n_probe = (8, 6, 4) if args.quick else (16, 12, 8)
    runs = small_sweep(n, epochs)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rates = [sweep_rate(runs, w, root) for w in (1, 2)]
        probe = probe_share(runs[:n_probe], root / "probe")
    summary = {
        "runs": n, "epochs": epochs, "cores": len(os.sched_getaffinity(0)),
        "runs_per_min_1": rates[0]["runs_per_min"], "runs_per_min_2": rates[1]["runs_per_min"],
        "speedup_2_over_1": round(rates[1]["runs_per_min"] / rates[0]["runs_per_min"], 3),
        "probe_share": probe["probe_share"],
    }  # fmt: skip
    details = {"sweeps": rates, "probe": probe, "probe_method": "in-process train_run with vs without probe, 1 thread"}
    if args.preset_run:
        preset = preset_run(args.zoo_dir, args.data_dir, workers=2)
        summary.update(preset_wall_min=preset["wall_min"], preset_counts=preset["counts"])
        details["preset"] = preset
    finish("zoo_throughput", summary, details, quick=args.quick)


if __name__ == "__main__":
    main()
