"""``metalearner run``: the mission's pipeline, zoo -> dataset -> mirror -> meta-train ->
bench -> report, each stage cached by its config and its inputs (see :mod:`.run`).

::

    from metalearner.parallel import make_executor
    from metalearner.pipeline import get_preset, run_pipeline

    with make_executor("local", 2) as ex:
        run_pipeline(get_preset("tiny"), "runs/pipeline", ex)   # then open runs/pipeline/report.html
"""

from metalearner.pipeline.presets import PRESETS, PipelineConfig, get_preset
from metalearner.pipeline.run import STAGES, keys, read_stage, run_pipeline, with_device

__all__ = ["PRESETS", "STAGES", "PipelineConfig", "get_preset", "keys", "read_stage", "run_pipeline", "with_device"]
