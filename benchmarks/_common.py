"""Shared plumbing for benchmark scripts: machine description, result files, data location."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from metalearner.atomic import json_safe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def default_data_dir() -> str | None:
    """``$METALEARNER_DATA``, else ``../shared/data`` beside the repository if present."""
    if os.environ.get("METALEARNER_DATA"):
        return os.environ["METALEARNER_DATA"]
    shared = ROOT.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def slug(name: str) -> str:
    """A variant's cache folder name: its name up to any parenthesis, non-alphanumerics as ``_``."""
    return "".join(c if c.isalnum() else "_" for c in name.split(" (")[0]).strip("_")


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def spread_pp(accs: Iterable[float]) -> float:
    """Max − min of accuracies (fractions), in percentage points."""
    accs = list(accs)
    return 100 * (max(accs) - min(accs))


def seed_means(per_setting: dict[str, list[float]]) -> dict[str, float]:
    """Each setting's mean over its seeds: one seed is not a measurement where the seed alone
    moves a score as much as the setting does (``fewshot_dev.py --sensitivity``)."""
    return {k: statistics.mean(v) for k, v in per_setting.items()}


def run_parallel(fn: Callable[..., Any], jobs: list[tuple], workers: int = 2) -> list[Any]:
    """``fn(*job)`` for every job on ``workers`` processes of one torch thread each, in order.
    ``fn`` must be a module-level function (it is pickled by name); the calling script needs
    an ``if __name__ == "__main__"`` guard."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return list(pool.map(fn, *zip(*jobs))) if jobs else []


def finish(name: str, summary: dict[str, Any], details: dict[str, Any], *, quick: bool) -> None:
    """Print the one-line JSON summary last; a full run also writes ``results/NAME.json``."""
    if not quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        record = {
            "benchmark": name,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "summary": summary,
            **details,
        }
        (RESULTS / f"{name}.json").write_text(json.dumps(json_safe(record), indent=2) + "\n")
    print(json.dumps(json_safe(summary)))


def interleaved_seconds(
    task: Any,
    modes: tuple[str, ...],
    make_run: Callable[[str, int], tuple[Any, Any, Any]],
    *,
    repeats: int,
    blocks: int,
    block_steps: int,
    step_fn: Callable[..., Any] | None = None,
) -> dict[str, list[float]]:
    """Seconds of training per repeat for each mode, timed side by side.

    ``make_run(mode, repeat)`` returns ``(model, optimizer, probe or None)``. Within a repeat
    the modes take turns in blocks of ``block_steps`` steps on the same batches, rotating the
    order every block, so load from elsewhere on a shared machine hits all modes alike. Each
    step is ``step_fn(model, opt, loss_fn, x, y, probe=probe)``, by default
    :func:`metalearner.train.train_step`; closing a probe (its last flush) is timed.
    """
    from metalearner.train import train_step

    step_fn = step_fn or train_step

    data, bs = task.data, task.config.batch_size
    gen = torch.Generator().manual_seed(0)
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(repeats):
        runs = {mode: make_run(mode, r) for mode in modes}
        total = dict.fromkeys(modes, 0.0)
        for b in range(blocks):
            idx = [torch.randint(0, data.n_train, (bs,), generator=gen) for _ in range(block_steps)]
            for mode in modes[b % len(modes) :] + modes[: b % len(modes)]:
                model, opt, probe = runs[mode]
                t0 = time.perf_counter()
                for i in idx:
                    step_fn(model, opt, task.loss_fn, data.x_train[i], data.y_train[i], probe=probe)
                total[mode] += time.perf_counter() - t0
        for mode, (_, _, probe) in runs.items():
            if probe is not None:
                t0 = time.perf_counter()
                probe.close()
                total[mode] += time.perf_counter() - t0
            seconds[mode].append(total[mode])
    return seconds


def parse_args(doc: str | None, quick_help: str, extra: Callable[[Any], Any] | None = None) -> Any:
    """The flags of a benchmark: ``--quick`` (about a minute, JSON only) and ``--data-dir``
    (``extra(parser)`` adds the benchmark's own)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--data-dir", default=default_data_dir())
    if extra is not None:
        extra(ap)
    return ap.parse_args()
