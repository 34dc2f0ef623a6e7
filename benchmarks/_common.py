"""Shared plumbing for benchmark scripts: machine description, result files, data location."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

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


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


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
        (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(summary))
