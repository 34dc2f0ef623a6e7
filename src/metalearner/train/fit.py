"""``fit``: the one training loop everything in metalearner uses.

The data lives in memory as tensors; each epoch draws a seeded permutation and slices
batches from it, so there is no per-batch data-loading overhead. The loop reads top to
bottom:

1. shuffle the training set with the run's generator (``sampler="epoch"``; or draw every
   batch with replacement, ``sampler="random"``);
2. for each batch: :func:`train_step` (forward, loss, backward, probe, optimizer step), then
   the per-step scheduler;
3. every ``CHECK_EVERY`` steps, and before each evaluation, look at the losses since the last
   look: a NaN/Inf ends the run as ``diverged`` at the exact step where it first appeared.
   This is the loop's only regular read of a device value (a host synchronisation on a
   GPU), so steps in between never wait for the device;
4. evaluate on the validation split every ``eval_every`` steps and at each epoch end,
   stopping early when ``target_acc`` is reached;
5. at the end, evaluate once on the test split.

With a ``checkpoint`` file, the run is kept at each epoch's end and continued from it
(``metalearner train`` and ``metalearner tower`` do so), its probe's log with it.

Optimizers with a train/eval mode (Schedule-Free) are switched around evaluations, and
optimizers that declare ``takes_loss = True`` (the learned ones) get ``step(loss=...)``.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal

import torch
from torch import nn

from metalearner.errors import ConfigError, DataError
from metalearner.observe.probe import Probe
from metalearner.tasks.data import is_whole
from metalearner.tasks.task import Task
from metalearner.train.budget import Budget

Status = Literal["complete", "diverged", "target_reached", "stopped"]
CHECK_EVERY = 25  # steps between looks at the losses (also the progress bar's update interval)
SAMPLERS = ("epoch", "random")


def check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")


@dataclass
class FitResult:
    """What a run did: ``history`` has one entry per evaluation; ``eval_seconds`` is the
    wall time spent evaluating (so callers can time training alone)."""

    status: Status
    steps: int
    epochs: float
    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    eval_seconds: float = 0.0
    trajectory: Any = None  # the probe's Arrow table, when train_run kept it in memory

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, batch_size: int = 4096) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``(x, y)``."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        total_loss += loss_fn(logits, yb, reduction="sum").double().cpu()
        correct += (logits.argmax(-1) == yb).sum().cpu()
    model.train(was_training)
    if len(x) == 0:  # no examples: nothing measured
        return math.nan, math.nan
    return float(total_loss) / len(x), float(correct) / len(x)


def _has_modes(optimizer: torch.optim.Optimizer) -> bool:
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


@contextmanager
def _eval_mode(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Schedule-Free optimizers evaluate at their averaged point: switch them for evaluation."""
    if not _has_modes(optimizer):
        yield
        return
    optimizer.eval()
    try:
        yield
    finally:
        optimizer.train()


def _save(path: str | os.PathLike, options: dict[str, Any], step: int, epoch: int, stop: bool, model: nn.Module,
          optimizer: torch.optim.Optimizer, scheduler: Any, gen: torch.Generator, result: FitResult,
          keep: dict[str, list[Any]] | None, probe: Probe | None) -> None:  # fmt: skip
    """:func:`fit`'s run at an epoch's end, in one atomic file (:mod:`metalearner.checkpoint`)."""
    from metalearner.checkpoint import save_state

    save_state(path, {"options": options, "step": step, "epoch": epoch, "stop": stop, "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler is not None else None,
                      "generator": gen.get_state(), "rng": torch.get_rng_state(), "cuda_rng": _cuda_rng(model),
                      "status": result.status, "final": result.final,
                      "history": result.history, "eval_seconds": result.eval_seconds, "keep": keep,
                      "probe": probe.state_dict() if probe is not None else None})  # fmt: skip


def _cuda_rng(model: nn.Module) -> torch.Tensor | None:
    """The random state of the GPU the model is on (None on the CPU)."""
    device = next(model.parameters()).device
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _resume(path: str | os.PathLike, options: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
            gen: torch.Generator, result: FitResult, keep: dict[str, list[Any]] | None, probe: Probe | None) -> tuple[int, int, bool]:  # fmt: skip
    """Load :func:`_save`'s file into the fresh run; returns its step, epoch and whether it had stopped."""
    from metalearner.checkpoint import load_state

    state = load_state(path)
    if not isinstance(state, dict) or {"options", "step", "model", "optimizer", "generator"} - set(state):
        raise DataError(f"{path} is not a training checkpoint; delete it or use another --out")
    if state["options"] != options:
        raise ConfigError(f"{path} holds a run with other options ({state['options']}); delete it or use another --out")
    if probe is not None and state.get("probe") is None:
        raise ConfigError(f"{path} holds a run kept without a probe, whose log cannot continue; delete it or use another --out")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise DataError(f"{path} holds another model's or optimizer's state ({str(e).splitlines()[0]}); delete it or use another --out") from None
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["rng"])
    device = next(model.parameters()).device
    if state.get("cuda_rng") is not None and device.type == "cuda":  # dropout on a GPU draws from its own generator
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    result.status, result.final, result.history, result.eval_seconds = state["status"], state["final"], state["history"], state["eval_seconds"]
    for name, items in (state.get("keep") or {}).items():
        if keep is not None and name in keep:
            keep[name][:] = items
    if probe is not None:
        probe.load_state_dict(state["probe"])
    return int(state["step"]), int(state["epoch"]), bool(state["stop"])


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[..., torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
    *,
    probe: Probe | None = None,
    epoch: int = -1,
    batch: int = -1,
) -> torch.Tensor:
    """One optimizer step on a batch: forward, loss, backward, (probe), step; returns the
    loss (still on the device: reading it is the caller's choice). Optimizers declaring
    ``takes_loss = True`` (the learned ones) are called as ``step(loss=...)``.
    """
    logits = model(xb)
    loss = loss_fn(logits, yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if probe is not None:
        probe.observe(loss, logits=logits, targets=yb, epoch=epoch, batch=batch)
    if getattr(optimizer, "takes_loss", False):
        optimizer.step(loss=loss.detach())
    else:
        optimizer.step()
    return loss


def check_eval_every(eval_every: Any) -> None:
    """``None`` (epoch ends only) or a whole number of steps >= 1 (``fit`` and ``RunConfig``)."""
    if eval_every is not None and not (is_whole(eval_every) and eval_every >= 1):
        raise ConfigError(f"eval_every must be a whole number >= 1, got {eval_every!r}")


def check_target_acc(target_acc: Any) -> None:
    """``None`` or an accuracy in (0, 1], with a hint for a percentage (``fit`` and ``RunConfig``)."""
    if target_acc is not None and not 0 < target_acc <= 1:
        hint = f" (a fraction: {target_acc / 100:g} for {target_acc:g}%)" if 1 < target_acc <= 100 else ""
        raise ConfigError(f"target accuracy must be in (0, 1], got {target_acc:g}{hint}")


def _check_fit_options(batch_size: Any, scheduler_interval: Any, eval_every: Any, target_acc: Any) -> None:
    """One-line errors for :func:`fit`'s own options."""
    if batch_size is not None and not (is_whole(batch_size) and batch_size >= 1):
        raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if scheduler_interval not in ("step", "epoch"):
        raise ConfigError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
    check_eval_every(eval_every)
    check_target_acc(target_acc)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: Task,
    *,
    epochs: float | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    scheduler: Any = None,
    scheduler_interval: Literal["step", "epoch"] = "step",
    eval_every: int | None = None,
    target_acc: float | None = None,
    probe: Probe | None = None,
    seed: int = 0,
    test: bool = True,
    progress: Any = None,
    should_stop: Callable[[list[dict[str, float]]], bool] | None = None,
    sampler: Literal["epoch", "random"] = "epoch",
    checkpoint: str | os.PathLike | None = None,
    keep: dict[str, list[Any]] | None = None,
) -> FitResult:
    """Train ``model`` on ``task`` with ``optimizer`` within a budget of epochs or steps.

    Args:
        epochs / steps: the budget (at least one; a fractional epoch count is allowed).
        batch_size: defaults to ``task.config.batch_size``.
        scheduler: any LR scheduler; stepped every step or every epoch.
        eval_every: also evaluate every N steps (always at each epoch end).
        target_acc: stop as soon as validation accuracy reaches this value.
        probe: a :class:`~metalearner.observe.Probe` attached to ``model``/``optimizer``.
        seed: fixes the batch order (initial weights are fixed by ``task.build_model(seed)``).
        progress: an object with ``update(step, total, loss=..., acc=...)`` (the CLI's bar).
        should_stop: called after each evaluation before the last with the history so far;
            returning True ends training with status ``"stopped"`` (the zoo's pruning hook).
        sampler: ``"epoch"`` (each epoch a seeded permutation, sliced into batches) or
            ``"random"`` (every batch drawn with replacement; an "epoch" is then
            ``ceil(n / batch_size)`` steps).
        checkpoint: a file that keeps the run at each epoch's end (weights, optimizer,
            scheduler, batch order, random state, history); if it exists the run continues
            from it and ends as an uninterrupted one would. It must be of the same model,
            optimizer and options (the caller keys the file by them). A ``probe`` continues
            its log from it (made with ``resume=True`` on the same run directory).
        keep: the caller's per-step logs (lists it appends to, JSON-able items), kept with
            each checkpoint and refilled from it on resuming.
    """
    check_sampler(sampler)
    _check_fit_options(batch_size, scheduler_interval, eval_every, target_acc)
    if checkpoint is not None and probe is not None and probe.out_dir is None:
        raise ConfigError("fit continues a probe's log from its run directory: give the probe out_dir, or keep no checkpoint")
    if probe is not None and probe.resuming and not (checkpoint is not None and os.path.isfile(checkpoint)):
        raise ConfigError("the probe was made to continue a run (resume=True), but fit has no checkpoint file to continue it from")
    data = task.data
    device = next(model.parameters()).device
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    bs = batch_size or task.config.batch_size
    n = len(x_train)
    budget = Budget.of(n, bs, epochs=epochs, steps=steps)
    per_epoch, total = budget.per_epoch, budget.total
    loss_fn = task.loss_fn
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    result = FitResult(status="complete", steps=0, epochs=0.0)
    running = torch.zeros((), dtype=torch.float64)
    running_n = 0
    unchecked: list[torch.Tensor] = []  # losses of the steps since the last look

    def diverged() -> bool:
        """Look at the unchecked losses (one device read); record the first non-finite one."""
        if not unchecked:
            return False
        losses = torch.stack(unchecked)
        first = step - len(unchecked)
        unchecked.clear()
        bad = ~torch.isfinite(losses)
        if not bool(bad.any()):
            return False
        i = int(bad.nonzero()[0, 0])
        result.status = "diverged"
        result.final["diverged_at_step"] = first + i
        result.final["diverged_loss"] = float(losses[i])
        return True

    def run_eval() -> bool:
        nonlocal running, running_n
        t0 = time.perf_counter()
        with _eval_mode(optimizer):
            val_loss, val_acc = evaluate(model, x_val, y_val, loss_fn)
        result.eval_seconds += time.perf_counter() - t0
        train_loss = float(running) / max(running_n, 1)
        running, running_n = torch.zeros((), dtype=torch.float64), 0
        result.history.append(
            {"step": step, "epoch": step / per_epoch, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc}
        )
        if probe is not None:
            probe.log_eval(val_loss, val_acc)
        if progress is not None:
            progress.update(step, total, loss=train_loss, acc=val_acc)
        if target_acc is not None and val_acc >= target_acc:
            result.status = "target_reached"
            return True
        if should_stop is not None and step < total and should_stop(result.history):
            result.status = "stopped"
            result.final["stopped_at_step"] = step
            return True
        return False

    model.train()
    if _has_modes(optimizer):
        optimizer.train()  # Schedule-Free refuses to step in eval mode
    step = 0
    stop = False
    epoch = 0
    options = {"seed": seed, "total": total, "batch_size": bs, "sampler": sampler, "n": n, "eval_every": eval_every,
               "target_acc": target_acc, "scheduler_interval": scheduler_interval, "test": test}  # fmt: skip
    if checkpoint is not None and os.path.isfile(checkpoint):
        step, epoch, stop = _resume(checkpoint, options, model, optimizer, scheduler, gen, result, keep, probe)
        if progress is not None and result.history:
            progress.update(step, total, loss=result.history[-1]["train_loss"], acc=result.history[-1]["val_acc"])
    while step < total and not stop:
        perm = torch.randperm(n, generator=gen).to(device) if sampler == "epoch" else None
        for b in range(per_epoch):
            if perm is not None:
                idx = perm[b * bs : (b + 1) * bs]
            else:
                idx = torch.randint(0, n, (bs,), generator=gen).to(device)
            loss = train_step(model, optimizer, loss_fn, x_train[idx], y_train[idx], probe=probe, epoch=epoch, batch=b)
            if scheduler is not None and scheduler_interval == "step":
                scheduler.step()
            step += 1
            loss = loss.detach()
            running += loss.double()
            running_n += 1
            unchecked.append(loss)
            epoch_end = b == per_epoch - 1
            evaluate_now = (eval_every and step % eval_every == 0) or epoch_end or step == total
            if (step % CHECK_EVERY == 0 or evaluate_now) and diverged():
                stop = True
                break
            if progress is not None and step % CHECK_EVERY == 0:
                progress.update(step, total, loss=float(loss))
            if evaluate_now:
                if run_eval():
                    stop = True
                    break
            if step >= total:
                break
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        if probe is not None:
            probe.flush()  # a crash loses at most the current epoch
        epoch += 1
        if checkpoint is not None:
            _save(checkpoint, options, step, epoch, stop, model, optimizer, scheduler, gen, result, keep, probe)

    result.steps = step
    result.epochs = step / per_epoch
    if result.history:
        last = result.history[-1]
        result.final.update(val_loss=last["val_loss"], val_acc=last["val_acc"])
    if test and not result.diverged and len(data.x_test):
        with _eval_mode(optimizer):
            test_loss, test_acc = evaluate(model, data.x_test.to(device), data.y_test.to(device), loss_fn)
        result.final.update(test_loss=test_loss, test_acc=test_acc)
    result.final.update(status=result.status, steps=result.steps, epochs=result.epochs, steps_per_epoch=per_epoch)
    return result
