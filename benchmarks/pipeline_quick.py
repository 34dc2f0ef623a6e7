"""Wall time of each stage of ``metalearner run`` (the ``quick`` preset) and the total.

    python benchmarks/pipeline_quick.py            # the quick preset; writes benchmarks/results/pipeline_quick.json
    python benchmarks/pipeline_quick.py --quick    # the tiny preset (a minute), nothing written

Runs the pipeline from scratch in a temporary folder (``--out`` to keep it) with the local
executor (2 workers on this 2-core machine), the data from ``$METALEARNER_DATA``. The last
line of stdout is the JSON record. The target: under 15 minutes (900 s) for ``quick``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import default_data_dir, finish  # noqa: E402

from metalearner.parallel import make_executor  # noqa: E402
from metalearner.pipeline import get_preset, run_pipeline  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the tiny preset; nothing written to results/")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="keep the pipeline folder here (default: a temporary one)")
    a = p.parse_args()
    preset = "tiny" if a.quick else "quick"
    out = a.out or Path(tempfile.mkdtemp(prefix="pipeline_quick_"))
    t0 = time.perf_counter()
    try:
        with make_executor("local", a.workers) as ex:
            res = run_pipeline(get_preset(preset), out, ex, data_dir=default_data_dir(), progress=False)
    finally:
        if a.out is None:
            shutil.rmtree(out, ignore_errors=True)
    total = time.perf_counter() - t0
    summary = {"preset": preset, "workers": a.workers, "stages_s": {k: round(v["wall_s"], 1) for k, v in res.stages.items()},
               "total_s": round(total, 1), "target_s": 900, "target_met": total < 900}  # fmt: skip
    load = os.getloadavg()
    finish("pipeline_quick", summary, {"load_average_at_end": [round(x, 2) for x in load]}, quick=a.quick)


if __name__ == "__main__":
    main()
