"""One training run from a typed config: the unit the CLI, the zoo, the benchmark and the
model card share. Everything a run needs (task, model, method from the registry, schedule,
budget, probe) is built here from :class:`RunConfig`, and the loop is :func:`~metalearner.train.fit`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from metalearner.atomic import json_safe
from metalearner.errors import ConfigError, DataError
from metalearner.methods import check_lr, get_method
from metalearner.observe.probe import Probe
from metalearner.observe.store import RUN_JSON, read_run
from metalearner.parallel.lock import DirectoryLock
from metalearner.tasks.task import Task, TaskConfig, make_task
from metalearner.train.budget import Budget, check_budget
from metalearner.train.fit import FitResult, check_eval_every, check_sampler, check_target_acc, fit


@dataclass(frozen=True)
class RunConfig:
    """A task plus how to train on it. Saved whole into every run's ``run.json``.

    ``optimizer`` names a method of :data:`metalearner.methods.METHODS`; ``lr`` and
    ``weight_decay`` left as ``None`` take that method's defaults (resolved here, so the
    saved config says what ran); ``momentum`` ``None`` is the method's default too.
    ``options`` go to the method's factory (e.g. ``{"weights": "path.safetensors"}`` for a
    learned optimizer). ``sampler``: ``epoch`` (a seeded permutation per epoch) or
    ``random`` (batches drawn with replacement). ``device``: ``cpu``, ``cuda`` (or
    ``cuda:N``) or ``auto`` (a GPU when torch sees one; see :func:`resolve_device`).
    """

    task: TaskConfig = field(default_factory=TaskConfig)
    optimizer: str = "adam"
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str = "constant"
    epochs: float | None = 10
    steps: int | None = None
    eval_every: int | None = None
    target_acc: float | None = None
    seed: int = 0
    extended: bool = False
    sampler: Literal["epoch", "random"] = "epoch"
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.task, dict):
            object.__setattr__(self, "task", TaskConfig.from_dict(self.task))
        check_budget(self.epochs, self.steps)
        method = get_method(self.optimizer)
        object.__setattr__(self, "lr", check_lr(method.default_lr if self.lr is None else self.lr))
        if self.weight_decay is None:
            object.__setattr__(self, "weight_decay", method.weight_decay)
        method.check_schedule(self.schedule)
        check_target_acc(self.target_acc)
        check_eval_every(self.eval_every)
        check_sampler(self.sampler)
        check_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key, default in (("sampler", "epoch"), ("options", {}), ("device", "cpu")):
            if d[key] == default:
                del d[key]  # configs from before these fields existed keep their run ids
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return cls(**d)

    def budget(self, task: Task) -> Budget:
        return Budget.of(task.data.n_train, self.task.batch_size, epochs=self.epochs, steps=self.steps)


def check_device(device: str) -> str:
    """``device`` if it names one this option accepts: cpu, cuda, cuda:N or auto."""
    if device not in ("cpu", "cuda", "auto") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"unknown device {device!r}; choose from cpu, cuda, auto")
    return device


def resolve_device(device: str = "cpu") -> str:
    """The device a run uses: ``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``;
    asking for ``cuda`` without one is a one-line error."""
    import torch

    check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no GPU (use --device cpu or auto)")
    return device


def prepare_out_dir(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Check that ``out_dir`` can take a new run: not a file, and not a finished or partial
    run unless ``overwrite`` (whose old files are then removed)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; choose another --out")
    if (out / RUN_JSON).exists():
        if not overwrite:
            try:
                status = read_run(out).get("status")
            except (OSError, DataError):  # unreadable: still a run's file, still refused
                status = None
            held = "a partial (interrupted) run" if status == "partial" else "a run"
            raise ConfigError(f"{out} already holds {held}; pass --overwrite to replace it, or choose another --out")
        from metalearner.observe.store import remove_run

        remove_run(out)
    return out


CHECKPOINT = "checkpoint.safetensors"  # train_run's run at its last epoch's end (resume=True); removed when the run ends


def _run_json(out_dir: str | Path) -> dict[str, Any]:
    """The run.json in ``out_dir``, ``{}`` where there is none or it cannot be read."""
    out = Path(out_dir)
    try:
        return read_run(out) if (out / RUN_JSON).is_file() else {}
    except (OSError, DataError):
        return {}


def _status(out_dir: str | Path) -> str | None:
    return _run_json(out_dir).get("status")


def interrupted(out_dir: str | Path, cfg: RunConfig) -> bool:
    """Whether ``out_dir`` holds an interrupted (partial) run of ``cfg``."""
    meta = _run_json(out_dir)
    return meta.get("status") == "partial" and meta.get("config") == json_safe(cfg.to_dict())


def continuable(out_dir: str | Path, cfg: RunConfig) -> Path | None:
    """The checkpoint from which ``train_run(cfg, out_dir, resume=True)`` continues the
    interrupted run of ``cfg`` in ``out_dir``; ``None`` where there is none to continue."""
    checkpoint = Path(out_dir) / CHECKPOINT
    return checkpoint if checkpoint.is_file() and interrupted(out_dir, cfg) else None


def train_run(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    *,
    data_dir: str | None = None,
    task: Task | None = None,
    run_id: str | None = None,
    progress: Any = None,
    probe: bool = True,
    test: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    should_stop: Callable[[Any, list[dict[str, float]], int], bool] | None = None,
    attach: Callable[[Any, Any], None] | None = None,
) -> FitResult:
    """Build the task, model and optimizer of ``cfg``, train with the probe, write the run.

    ``task`` reuses an already loaded task (it must be ``cfg.task``'s). ``out_dir`` must not
    hold a run unless ``overwrite``. ``should_stop(trajectory, history, total_steps)`` is
    called after each evaluation with the probe's trajectory so far (an Arrow table, ``None``
    without the probe), ``fit``'s evaluation history and the run's step budget; returning
    True stops the run, which is then saved with status ``stopped``. ``attach(model,
    optimizer)`` is called once both exist (to register hooks of your own). Without
    ``out_dir`` the probe's trajectory is returned in ``result.trajectory``.

    ``resume`` (with ``out_dir`` and the probe): the run is kept at each epoch's end in
    ``out_dir/checkpoint.safetensors`` (:func:`fit`'s checkpoint, the probe's log with it),
    and an interrupted run of the same config in ``out_dir`` continues from it, ending as an
    uninterrupted run would; one interrupted before its first epoch's end starts over. The file
    is removed when the run ends.
    """
    resume = bool(resume and probe and out_dir is not None)
    if not resume:
        return _train(cfg, out_dir, None, False, data_dir=data_dir, task=task, run_id=run_id, progress=progress, probe=probe,
                      test=test, overwrite=overwrite, should_stop=should_stop, attach=attach)  # fmt: skip
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; choose another --out")
    if (out / CHECKPOINT).is_dir():
        raise ConfigError(f"{out / CHECKPOINT} is a folder where the run's checkpoint goes; move it or choose another --out")
    with DirectoryLock(out):  # one process at a time continues or replaces a run
        for stale in out.glob(f".{CHECKPOINT}.*.tmp"):  # a save killed half-way
            stale.unlink()
        if (out / CHECKPOINT).is_file() and _status(out) not in (None, "partial"):  # killed between the run's end and the file's removal
            (out / CHECKPOINT).unlink()
        continuing = not overwrite and continuable(out, cfg) is not None
        return _train(cfg, out, out / CHECKPOINT, continuing, data_dir=data_dir, task=task, run_id=run_id, progress=progress,
                      probe=probe, test=test, overwrite=overwrite or interrupted(out, cfg), should_stop=should_stop, attach=attach)  # fmt: skip


def _train(
    cfg: RunConfig,
    out_dir: str | Path | None,
    checkpoint: Path | None,
    continuing: bool,
    *,
    data_dir: str | None,
    task: Task | None,
    run_id: str | None,
    progress: Any,
    probe: bool,
    test: bool,
    overwrite: bool,
    should_stop: Callable[[Any, list[dict[str, float]], int], bool] | None,
    attach: Callable[[Any, Any], None] | None,
) -> FitResult:
    """:func:`train_run`'s run, with ``checkpoint`` (kept at each epoch's end) and whether the
    run in ``out_dir`` continues from it (else ``out_dir`` is prepared for a new run)."""
    if out_dir is not None and not continuing:
        out_dir = prepare_out_dir(out_dir, overwrite=overwrite)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
    task = task or make_task(cfg.task, data_dir=data_dir)
    model = task.build_model(seed=cfg.seed)
    if cfg.device != "cpu":
        model = model.to(resolve_device(cfg.device))  # fit moves the data to the model's device
    budget = cfg.budget(task)
    opt, scheduler = get_method(cfg.optimizer).build(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        total_steps=budget.total, schedule=cfg.schedule, **cfg.options,
    )  # fmt: skip
    if attach is not None:
        attach(model, opt)
    p = None
    if probe:
        meta = {"architecture": task.architecture(model), "seed": cfg.seed, "config": cfg.to_dict()}
        p = Probe(model, opt, out_dir=out_dir, run_id=run_id, extended=cfg.extended, task=task.name, meta=meta, resume=continuing)
    stop_fn = None
    if should_stop is not None:

        def stop_fn(history: list[dict[str, float]]) -> bool:
            return bool(should_stop(p.table() if p is not None else None, history, budget.total))

    try:
        result = fit(
            model, opt, task, epochs=cfg.epochs, steps=cfg.steps, scheduler=scheduler, eval_every=cfg.eval_every,
            target_acc=cfg.target_acc, probe=p, seed=cfg.seed, progress=progress, should_stop=stop_fn, test=test,
            sampler=cfg.sampler, checkpoint=checkpoint,
        )  # fmt: skip
    except BaseException:
        if p is not None:
            p.close("partial")
        raise
    finally:
        if callable(getattr(opt, "close", None)):
            opt.close()  # a wrapper's hooks on the inner optimizer
    if p is not None:
        status = "diverged" if result.diverged else "stopped" if result.status == "stopped" else "complete"
        p.close(status, final=result.final)
        if out_dir is None:
            result.trajectory = p.table()
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    result.final["n_params"] = sum(q.numel() for q in model.parameters())
    return result
