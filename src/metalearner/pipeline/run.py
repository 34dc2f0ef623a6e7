"""Running the pipeline: stages in order, each cached by its config and its inputs' keys.

Layout of ``OUT``::

    OUT/pipeline.json          the whole config, and per stage its key, status and wall time
    OUT/<stage>/stage.json     the stage's config, key, inputs, status, wall time (atomic)
    OUT/<stage>/...            what the stage wrote (zoo runs, dataset rows, predictors, ...)
    OUT/report.html|.md        the report (figures in OUT/report/figures)

A stage's key is a hash of its name, its config and the keys of the stages it reads. A
rerun skips a stage whose ``stage.json`` says ``complete`` with the same key; a stage whose
key changed starts afresh in an emptied folder (and so does every stage that reads it, since
their keys change too); a stage interrupted with the same key resumes in its folder (the
zoo, meta-training and the benchmark continue where they stopped).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from metalearner.atomic import write_json
from metalearner.errors import ConfigError, MetalearnerWarning
from metalearner.pipeline.presets import PipelineConfig
from metalearner.pipeline.stages import Context, plain, run_bench, run_dataset, run_meta_train, run_mirror, run_zoo, weights_path

STAGES = ("zoo", "dataset", "mirror", "meta_train", "bench", "report")
STAGE_JSON = "stage.json"
PIPELINE_JSON = "pipeline.json"


def inputs_of(cfg: PipelineConfig, name: str) -> tuple[str, ...]:
    """The stages whose outputs stage ``name`` reads."""
    return {
        "zoo": (),
        "dataset": ("zoo",),
        "mirror": ("zoo", "dataset"),
        "meta_train": (),
        "bench": ("meta_train",) if cfg.meta_train.source == "train" else (),  # it runs the trained weights
        "report": STAGES[:-1],
    }[name]


def stage_key(name: str, config: Any, input_keys: dict[str, str]) -> str:
    """A short hash of the stage's name, config and its inputs' keys."""
    body = {"stage": name, "config": dataclasses.asdict(config), "inputs": input_keys}
    return hashlib.sha256(json.dumps(plain(body), sort_keys=True).encode()).hexdigest()[:16]


def keys(cfg: PipelineConfig) -> dict[str, str]:
    """Every stage's cache key, in order."""
    out: dict[str, str] = {}
    for name in STAGES:
        out[name] = stage_key(name, cfg.stage(name), {i: out[i] for i in inputs_of(cfg, name)})
    return out


def read_stage(out: str | Path, name: str) -> dict[str, Any] | None:
    """A stage's ``stage.json``, or None when it has none (or an unreadable one)."""
    path = Path(out) / name / STAGE_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _refuse_foreign(out: Path) -> None:
    """A one-line error for a stage's folder that this command did not make (it has files but no
    ``stage.json``): a stage whose config changed starts afresh by deleting its folder, which must
    never take a user's files with it."""
    for name in STAGES:
        d = out / name
        if d.exists() and not d.is_dir():
            raise ConfigError(f"{d} is a file where the pipeline keeps its {name} stage; move it or choose another --out")
        ours = {"figures"} if name == "report" else set()  # `metalearner report` on a partial run writes report/figures
        if d.is_dir() and not (d / STAGE_JSON).exists() and any(p.name not in ours for p in d.iterdir()):
            raise ConfigError(f"{d} holds files that metalearner run did not make; move them or choose another --out")


def _write_stage(d: Path, record: dict[str, Any]) -> None:
    write_json(d / STAGE_JSON, plain(record))


def preflight(cfg: PipelineConfig, data_dir: str | None) -> None:
    """Fail now, in one line, for what a later stage would lack: a GPU asked for and absent,
    a data set that cannot be loaded (no copy and no network)."""
    from metalearner.tasks.task import TaskConfig, make_task
    from metalearner.train.run import resolve_device
    from metalearner.zoo.spec import sample_runs
    from metalearner.pipeline.stages import zoo_spec

    resolve_device(cfg.zoo.device)
    resolve_device(cfg.bench.device)
    tasks = {json.dumps({"dataset": r.task.dataset, "data_options": r.task.data_options}, sort_keys=True)
             for r in sample_runs(zoo_spec(cfg.zoo))}  # fmt: skip
    tasks |= {json.dumps({"dataset": c.task.dataset, "data_options": c.task.data_options}, sort_keys=True) for c in cfg.bench.resolve().cells}
    tasks.add(json.dumps({"dataset": cfg.meta_train.analysis_task["dataset"], "data_options": {}}, sort_keys=True))
    for t in sorted(tasks):
        make_task(TaskConfig(**json.loads(t)), data_dir=data_dir)  # a missing data set raises its one-line DataError


@dataclasses.dataclass
class PipelineResult:
    out: Path
    stages: dict[str, dict[str, Any]]
    wall_s: float


def run_pipeline(
    cfg: PipelineConfig,
    out: str | Path,
    executor: Any,
    *,
    data_dir: str | None = None,
    progress: bool = True,
    check: bool = True,
    on_stage: Callable[[str, dict[str, Any]], None] | None = None,
) -> PipelineResult:
    """Run (or resume) every stage of ``cfg`` into ``out``; returns each stage's record.

    ``check`` runs :func:`preflight` first. ``on_stage(name, record)`` is called after each
    stage (run or skipped)."""
    from metalearner.progress import Progress

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if check:
        preflight(cfg, data_dir)
    _refuse_foreign(out)
    out.mkdir(parents=True, exist_ok=True)
    ks = keys(cfg)
    ctx = Context(executor=executor, data_dir=data_dir, progress=progress)
    t0 = time.perf_counter()
    records: dict[str, dict[str, Any]] = {}
    est = {n: float(cfg.estimates.get(n, 60.0)) for n in STAGES}
    with Progress(progress) as display:
        overall = display.bar("pipeline (est. s)", sum(est.values()), info="{stage}", stage="")
        for i, name in enumerate(STAGES, 1):
            overall.update(stage=f"stage {i}/{len(STAGES)}: {name}")
            bar = display.bar(f"  {name}", 1, info="{state}", state="running")
            rec = _run_stage(cfg, name, out, ks, ctx)
            records[name] = rec
            bar.update(1, state="cached" if rec.get("cached") else f"done in {rec['wall_s']:.0f}s")
            overall.advance(est[name])
            if on_stage:
                on_stage(name, rec)
            write_json(out / PIPELINE_JSON, plain({"preset": cfg.preset, "config": cfg.to_dict(), "stages": records}))
        overall.update(stage="done")
    return PipelineResult(out=out, stages=records, wall_s=time.perf_counter() - t0)


def _run_stage(cfg: PipelineConfig, name: str, out: Path, ks: dict[str, str], ctx: Context) -> dict[str, Any]:
    d = out / name
    key = ks[name]
    old = read_stage(out, name)
    # the report is always rebuilt (seconds): its files live beside the stages and may have been removed
    if name != "report" and old is not None and old.get("key") == key and old.get("status") == "complete":
        return {"key": key, "status": "complete", "cached": True, "wall_s": old.get("wall_s", 0.0)}
    earlier = 0.0
    if old is not None and old.get("key") == key:
        if old.get("status") != "complete":  # interrupted: resume in place (a complete report is rebuilt, its time anew)
            earlier = float(old.get("wall_s") or 0.0)
    elif d.exists():
        if old is not None and old.get("status") == "complete" and name != "report":
            warnings.warn(f"{d} was made with another config (or from other inputs): its results are replaced", MetalearnerWarning, stacklevel=2)
        shutil.rmtree(d)  # a changed config: start afresh (a folder this command did not make was refused: _refuse_foreign)
    d.mkdir(parents=True, exist_ok=True)
    record = {"stage": name, "key": key, "config": dataclasses.asdict(cfg.stage(name)),
              "inputs": {i: ks[i] for i in inputs_of(cfg, name)}, "status": "running",
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": earlier}  # fmt: skip
    _write_stage(d, record)
    t = time.perf_counter()
    try:
        outputs = _call(cfg, name, d, out, ctx)
    except BaseException as e:
        record.update(status="interrupted", error=f"{type(e).__name__}: {e}".splitlines()[0][:300], wall_s=earlier + time.perf_counter() - t)
        _write_stage(d, record)
        raise
    record.update(status="complete", outputs=outputs, wall_s=earlier + time.perf_counter() - t, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    record.pop("error", None)
    _write_stage(d, record)
    return {"key": key, "status": "complete", "cached": False, "wall_s": record["wall_s"]}


def _call(cfg: PipelineConfig, name: str, d: Path, out: Path, ctx: Context) -> dict[str, Any]:
    inputs = {i: out / i for i in inputs_of(cfg, name)}
    if name == "zoo":
        return run_zoo(cfg.zoo, d, inputs, ctx)
    if name == "dataset":
        return run_dataset(cfg.dataset, d, inputs, ctx)
    if name == "mirror":
        return run_mirror(cfg.mirror, d, inputs, ctx)
    if name == "meta_train":
        return run_meta_train(cfg.meta_train, d, inputs, ctx)
    if name == "bench":
        w = weights_path(out / "meta_train", cfg.meta_train)
        return run_bench(cfg.bench, d, inputs, ctx, weights={cfg.meta_train.kind: str(w)} if w else None)
    from metalearner.report.pipeline import write_pipeline_report

    paths = write_pipeline_report(out, figures_dir=d / "figures")
    return {k: str(v) for k, v in paths.items()}


def with_device(cfg: PipelineConfig, device: str) -> PipelineConfig:
    """``cfg`` with the zoo's and the benchmark's runs on ``device`` (``auto`` resolved here)."""
    from metalearner.train.run import resolve_device

    dev = resolve_device(device)
    return dataclasses.replace(cfg, zoo=dataclasses.replace(cfg.zoo, device=dev), bench=dataclasses.replace(cfg.bench, device=dev))
