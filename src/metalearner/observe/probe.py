"""The probe: records the physics of every optimizer step of any model and optimizer.

It hooks the optimizer (``register_step_pre_hook`` / ``register_step_post_hook``), so it
works in any training loop. Tell it the batch loss (and optionally logits and targets for
accuracy) before ``optimizer.step()`` and the validation metrics when you evaluate::

    probe = Probe(model, optimizer, out_dir="runs/a")
    for x, y in batches:
        logits = model(x); loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(); loss.backward()
        probe.observe(loss, logits=logits, targets=y, epoch=e, batch=b)
        optimizer.step()
    probe.log_eval(val_loss, val_acc)
    probe.close(final={"test_acc": ...})

Per step the probe only launches the five passes of
:class:`~metalearner.observe.physics.PhysicsTracker` (``before_step``, ``after_step_raw``)
and keeps references; stacking, pooling into layer norms, accuracy, and the move to the
host happen once per chunk (``chunk_size`` steps), when a Parquet part is written. Columns are
:mod:`metalearner.observe.schema`'s, in its order and with its types.
"""

from __future__ import annotations

import math
import platform
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from metalearner.errors import ConfigError, DataError
from metalearner.observe import store
from metalearner.observe.physics import PhysicsTracker, layout
from metalearner.observe.schema import COLUMNS, EXTENDED_COLUMNS, FIELDS, arrow_type

_NOTHING: tuple = (None, None, None, -1, -1)  # a step the training loop did not report


class Sink(Protocol):
    """Receives each flushed chunk of rows (e.g. to show runs live)."""

    def write(self, table: pa.Table) -> None: ...
    def close(self) -> None: ...


def optimizer_hparams(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """The learning rate and momentum the optimizer applies: with several param groups, their
    means weighted by the groups' parameter counts (one column for the whole model).

    An optimizer whose learned or scheduled factor applies at step time records what it
    applied in ``effective_lr`` / ``effective_momentum`` (Opt2Vec; Schedule-Free's
    ``scheduled_lr``); otherwise ``lr``, and ``momentum`` (SGD, RMSprop) or ``betas[0]`` (Adam
    family); NaN if there is none.
    """
    groups = optimizer.param_groups
    if len(groups) == 1:
        return _group_hparams(groups[0])
    sizes = [sum(p.numel() for p in g["params"]) for g in groups]
    values = [_group_hparams(g) for g in groups]
    total = sum(sizes) or 1
    return tuple(sum(n * v[i] for n, v in zip(sizes, values) if n) / total for i in (0, 1))  # type: ignore[return-value]


def _group_hparams(group: dict[str, Any]) -> tuple[float, float]:
    lr = float(group.get("effective_lr", group.get("scheduled_lr", group.get("lr", math.nan))))
    if "effective_momentum" in group:
        momentum = float(group["effective_momentum"])
    elif "momentum" in group:
        momentum = float(group["momentum"])
    elif "betas" in group:
        momentum = float(group["betas"][0])
    else:
        momentum = math.nan
    return lr, momentum


def _shape(x: Any) -> str:
    return f"shape {tuple(x.shape)}" if hasattr(x, "shape") else type(x).__name__


def guess_architecture(model: nn.Module) -> dict[str, Any]:
    """``depth`` (hidden layers: layers with weights, minus the output layer), ``width`` (the
    first layer's output size) and ``activation`` (the first activation module's name) of a
    model built as a sequence of layers; empty for a model without weight layers."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if not layers:
        return {}
    first = layers[0]
    width = getattr(first, "out_features", None) or getattr(first, "out_channels", None)
    acts = [type(m).__name__.lower() for m in model.modules() if type(m).__module__ == "torch.nn.modules.activation"]
    return {"depth": len(layers) - 1, "width": width, "activation": acts[0] if acts else None}


def versions() -> dict[str, str]:
    import metalearner

    return {"metalearner": metalearner.__version__, "torch": torch.__version__, "python": platform.python_version()}


def _column(name: str, value: Any, n: int) -> pa.Array:
    """Column ``name`` of a chunk of ``n`` rows with the schema's type: a constant, a list per
    row (layer fields), or one value per row (metrics between evaluations are null)."""
    field = FIELDS[name]
    if field.group == "static" or name == "run_id":
        return pa.repeat(pa.scalar(value, type=field.type), n)
    if field.group == "layers":
        block = np.asarray(value, dtype=np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
    array = np.asarray(value)
    mask = np.isnan(array) if name in ("val_loss", "val_acc") else None
    return pa.array(array, field.type, mask=mask)


class Probe:
    """Logs per-step physics of ``model`` trained by ``optimizer``.

    Args:
        out_dir: run directory for ``trajectory.parquet`` and ``run.json``; ``None`` keeps
            everything in memory (read it with :meth:`table`).
        extended: also log ``grad_cos``, ``curvature`` and ``noise_scale``.
        task: the data set's name, for the ``task`` column and ``run.json``.
        architecture: ``depth``, ``width`` and ``activation`` for the per-row columns; by
            default read off the model (:func:`guess_architecture`: right for MLPs and CNNs
            built as a sequence of layers; pass it for anything else).
        meta: extra fields for ``run.json``.
        chunk_size: steps kept on the device before a Parquet part is written.
        sinks: extra receivers of each chunk, e.g. :class:`TensorBoardSink`.
        overwrite: replace a run already in ``out_dir`` (its files are removed); without it such
            a directory is refused, so a rerun never silently replaces a run.
        resume: keep the run already in ``out_dir`` for :meth:`load_state_dict` to continue
            (``fit`` does so from its checkpoint); its files are left as they are until then.

    A log continues from :meth:`state_dict`, taken right after a :meth:`flush`: the rows it
    counted are read back from ``out_dir`` (later ones, written after it, are dropped) and the
    steps after it are appended, in the same parts an uninterrupted run writes.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        out_dir: str | Path | None = None,
        run_id: str | None = None,
        extended: bool = False,
        task: str | None = None,
        architecture: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        chunk_size: int = 1024,
        sinks: Iterable[Sink] = (),
        overwrite: bool = False,
        resume: bool = False,
    ) -> None:
        if not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise ConfigError(f"chunk_size must be an integer >= 1 (steps per flush), got {chunk_size!r}")
        self.optimizer = optimizer
        self.tracker = PhysicsTracker(model.named_parameters(), extended=extended)
        self.extended = extended
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.out_dir is not None and self.out_dir.exists() and not self.out_dir.is_dir():
            raise ConfigError(f"{self.out_dir} exists and is not a directory; give the probe a run directory")
        if resume and self.out_dir is None:
            raise ConfigError("a probe continues the log of its run directory: give it out_dir")
        if self.out_dir is not None and (self.out_dir / store.RUN_JSON).exists() and not resume:
            if not overwrite:
                raise ConfigError(f"{self.out_dir} already holds a run; pass overwrite=True to replace it, or choose another out_dir")
            store.remove_run(self.out_dir)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.meta = dict(meta or {})
        if task is not None:
            self.meta["task"] = task
        arch = {**guess_architecture(model), **(architecture or self.meta.get("architecture") or {})}
        self.meta["architecture"] = arch
        self.sinks = list(sinks)
        self.chunk_size = chunk_size
        self._static = {
            "optimizer": type(optimizer).__name__,
            "task": self.meta.get("task"),
            "depth": arch.get("depth"),
            "width": arch.get("width"),
            "activation": arch.get("activation"),
            "n_params": sum(p.numel() for p in self.tracker.params),
        }
        self._rows: list[tuple] = []  # per step: loss, preds, targets, squared norms, extended
        self._host: dict[str, list] = {k: [] for k in ("epoch", "batch", "lr", "momentum", "wall_time")}
        self._evals: dict[int, tuple[float, float]] = {}
        self._last_eval: dict[str, float] = {}
        self._pending: tuple = _NOTHING
        self._tables: list[pa.Table] = []
        self._last_loss = math.nan
        self.step = 0  # optimizer steps recorded so far
        self.status = "partial"
        self._closed = False
        self._resuming = resume  # until load_state_dict: the run on disk is not this probe's to write
        self._t0 = time.perf_counter()
        self._hooks = [
            optimizer.register_step_pre_hook(lambda *_: self.tracker.before_step()),
            optimizer.register_step_post_hook(lambda *_: self._record()),
        ]
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if not (resume and (self.out_dir / store.RUN_JSON).exists()):
                store.write_run_json(self.out_dir, self._run_meta())

    # -- feeding the probe -------------------------------------------------------------
    def observe(
        self,
        loss: torch.Tensor,
        *,
        logits: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        epoch: int = -1,
        batch: int = -1,
    ) -> None:
        """Report the current batch; call between ``backward()`` and ``optimizer.step()``.
        ``loss``: a scalar; ``logits`` ``(..., classes)`` with ``targets`` of shape ``(...)``
        (a sequence model's ``(batch, time, classes)`` scores every position)."""
        if not torch.is_tensor(loss) or loss.numel() != 1:
            raise ConfigError(f"observe() takes the loss as a one-element tensor (reduce it first), got {_shape(loss)}")
        if logits is not None and targets is not None and tuple(logits.shape[:-1]) != tuple(targets.shape):
            raise ConfigError(f"observe(): logits of shape {tuple(logits.shape)} need targets of shape {tuple(logits.shape[:-1])}, "
                              f"got {tuple(targets.shape)}")  # fmt: skip
        preds = None if logits is None or targets is None else logits.detach().argmax(-1)
        self._pending = (loss.detach(), preds, targets, epoch, batch)

    def log_eval(self, val_loss: float, val_acc: float) -> None:
        """Attach validation metrics to the latest recorded step (also when that step was
        already flushed: its chunk is rewritten; sinks get evaluations logged before a flush)."""
        if self.step > 0:
            self._evals[self.step - 1] = (float(val_loss), float(val_acc))
            if not self._rows and self._tables:  # the step is in the last flushed chunk
                self._patch_last_chunk(self.step - 1, float(val_loss), float(val_acc))
        self._last_eval = {"val_loss": float(val_loss), "val_acc": float(val_acc)}

    def _patch_last_chunk(self, step: int, val_loss: float, val_acc: float) -> None:
        table = self._tables[-1]
        i = table.num_rows - 1  # the chunk ends at the latest step
        for name, value in (("val_loss", val_loss), ("val_acc", val_acc)):
            column = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            column[i] = value
            table = table.set_column(table.schema.get_field_index(name), name, _column(name, column, table.num_rows))
        self._tables[-1] = table
        if self.out_dir is not None:
            store.write_part(self.out_dir, len(self._tables) - 1, table)

    # -- hooks --------------------------------------------------------------------------
    def _record(self) -> None:
        if len(self._rows) == self.chunk_size:
            self.flush()
        loss, preds, targets, epoch, batch = self._pending
        squares, extended = self.tracker.after_step_raw(None if targets is None else len(targets))  # the batch size
        self._rows.append((loss, preds, targets, squares, extended))
        lr, momentum = optimizer_hparams(self.optimizer)
        h = self._host
        h["epoch"].append(epoch)
        h["batch"].append(batch)
        h["lr"].append(lr)
        h["momentum"].append(momentum)
        h["wall_time"].append(time.perf_counter() - self._t0)
        self._pending = _NOTHING
        self.step += 1

    def _chunk_values(self) -> dict[str, np.ndarray]:
        """Pool the buffered rows, all at once, into ``loss``, ``train_acc`` and the
        :class:`StepPhysics` quantities by schema name (layer fields as ``(n, L)`` arrays)."""
        rows = self._rows
        n = len(rows)
        nan = torch.tensor(math.nan)
        loss = torch.stack([r[0].float().cpu() if r[0] is not None else nan for r in rows])
        acc = torch.full((n,), math.nan)
        seen = [i for i, r in enumerate(rows) if r[1] is not None]
        if seen:
            counts = torch.tensor([rows[i][2].numel() for i in seen])
            hits = (torch.cat([rows[i][1].reshape(-1) for i in seen]) == torch.cat([rows[i][2].reshape(-1) for i in seen])).float().cpu()
            owner = torch.repeat_interleave(torch.arange(len(seen)), counts)
            acc[seen] = torch.zeros(len(seen)).index_add_(0, owner, hits) / counts
        squares = torch.stack([sq for r in rows for sq in r[3]]).view(n, -1)  # one stack per chunk
        physics = self.tracker.pool(squares.float()).cpu()
        if self.extended:
            physics = torch.cat([physics, torch.stack([r[4] for r in rows]).float().cpu()], dim=1)
        physics = physics.double().numpy()  # the StepPhysics layout, a row per step
        out = {"loss": loss.double().numpy(), "train_acc": acc.double().numpy()}
        for name, where in layout(self.tracker.n_layers).items():
            if self.extended or name not in EXTENDED_COLUMNS:
                out[name] = physics[:, where]
        return out

    # -- output -------------------------------------------------------------------------
    def flush(self) -> None:
        """Move buffered rows to the host as an Arrow chunk (and a Parquet part on disk)."""
        if not self._rows:
            return
        n = len(self._rows)
        values = self._chunk_values()
        first = self.step - n
        steps = np.arange(first, self.step, dtype=np.int64)
        loss = values["loss"]
        val = np.array([self._evals.get(int(s), (math.nan, math.nan)) for s in steps]).reshape(n, 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            values.update(
                run_id=self.run_id, step=steps, loss_delta=np.diff(loss, prepend=self._last_loss), val_loss=val[:, 0],
                val_acc=val[:, 1], update_ratio=values["update_norm"] / values["weight_norm"], **self._host, **self._static,
            )  # fmt: skip
        self._last_loss = float(loss[-1])
        names = COLUMNS + (EXTENDED_COLUMNS if self.extended else ())
        table = pa.table({name: _column(name, values[name], n) for name in names})
        if self.out_dir is not None:
            store.write_part(self.out_dir, len(self._tables), table)
        self._tables.append(table)
        for sink in self.sinks:
            sink.write(table)
        for k in self._host:
            self._host[k].clear()
        self._evals = {s: v for s, v in self._evals.items() if s >= self.step}
        self._rows = []

    # -- continuing a log ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What continues this log (:meth:`load_state_dict`): the step count, the rows of each
        part written, the run id, the tracker's memory. Take it right after :meth:`flush`."""
        if self._rows or self._pending is not _NOTHING:
            raise RuntimeError("Probe.state_dict() is taken right after flush(), with no step buffered")
        return {"run_id": self.run_id, "step": self.step, "chunks": [t.num_rows for t in self._tables], "last_loss": self._last_loss,
                "last_eval": dict(self._last_eval), "evals": [[s, *v] for s, v in self._evals.items()],
                "elapsed": time.perf_counter() - self._t0, "tracker": self.tracker.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the log that :meth:`state_dict` describes, before this probe's first step:
        its rows are read back from ``out_dir`` (the parts, or the merged trajectory of a run
        closed as partial) and laid out in the same parts, and rows written after it removed."""
        if self.step or self._rows:
            raise RuntimeError("Probe.load_state_dict() comes before the probe's first step")
        if self.out_dir is None:
            raise ConfigError("a probe continues the log of its run directory: give it out_dir")
        chunks = [int(n) for n in state["chunks"]]
        self._tables = _read_back(self.out_dir, chunks, str(state["run_id"]))
        self.run_id, self.step = str(state["run_id"]), int(state["step"])
        self._last_loss, self._last_eval = float(state["last_loss"]), dict(state["last_eval"])
        self._evals = {int(s): (float(v), float(a)) for s, v, a in state["evals"]}
        self._t0 = time.perf_counter() - float(state["elapsed"])
        self.tracker.load_state_dict(state["tracker"])
        self._resuming = False
        store.write_run_json(self.out_dir, self._run_meta())

    @property
    def resuming(self) -> bool:
        """Made with ``resume=True`` and not yet given the state to continue from."""
        return self._resuming

    def table(self) -> pa.Table:
        """Everything recorded so far as one Arrow table."""
        self.flush()
        return pa.concat_tables(self._tables) if self._tables else self._empty()

    def _empty(self) -> pa.Table:
        """No step recorded: the schema's columns, no rows."""
        names = COLUMNS + (EXTENDED_COLUMNS if self.extended else ())
        return pa.table({name: pa.array([], type=arrow_type(name)) for name in names})

    def _run_meta(self, final: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            **self.meta,
            "optimizer": self._static["optimizer"],
            "n_params": self._static["n_params"],
            "layer_names": self.tracker.layer_names,
            "param_names": self.tracker.param_names,
            "extended": self.extended,
            "steps": self.step,
            "versions": versions(),
            "final": {**self._last_eval, "steps": self.step, **(final or {})},
        }

    def close(self, status: str = "complete", final: dict[str, Any] | None = None) -> None:
        """Flush, detach the hooks, and (with ``out_dir``) write the final files. ``final``
        adds to what the probe knows (the last :meth:`log_eval` and the step count). A second
        call does nothing; nor does a probe made to resume a run that never loaded its state
        (the run on disk is left as it was)."""
        if self._closed:
            return
        self._closed = True
        if not self._resuming:
            self.flush()
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self._resuming:  # it never took over the run it was to continue: that run stays as it was
            return
        self.status = status
        if self.out_dir is not None:
            store.finalize(self.out_dir, self._tables or [self._empty()])
            store.write_run_json(self.out_dir, self._run_meta(final))
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if self._hooks:
            self.close("complete" if exc_type is None else "partial")


def _read_back(out_dir: Path, chunks: list[int], run_id: str) -> list[pa.Table]:
    """The first ``sum(chunks)`` rows of the run in ``out_dir`` as parts of ``chunks`` rows,
    written there as ``part-*`` (those beyond, and a merged trajectory, removed): from the
    parts where all of them are there as written, else from the merged trajectory (a run closed
    as partial), which is split into them before it is removed."""
    parts_dir = out_dir / store.PARTS
    named = [parts_dir / f"part-{i:06d}.parquet" for i in range(len(chunks))]
    tables = None
    if all(p.is_file() for p in named):
        tables = [store.read_parquet(p) for p in named]
        if [t.num_rows for t in tables] != chunks:
            tables = None
    if tables is None:
        try:
            whole = store.read_trajectory(out_dir)
        except DataError:
            whole = pa.table({})
        if whole.num_rows < sum(chunks):
            raise DataError(f"the log in {out_dir} ends before its checkpoint ({whole.num_rows} of {sum(chunks)} steps); "
                            "start the run over (--overwrite)")  # fmt: skip
        starts = np.cumsum([0, *chunks])
        tables = [whole.slice(int(a), n) for a, n in zip(starts, chunks)]
        for path, table in zip(named, tables):
            store.write_table(table, path)
    if tables and any(t.num_rows and t.column("run_id")[0].as_py() != run_id for t in tables):
        raise DataError(f"the log in {out_dir} is another run's than its checkpoint's; start the run over (--overwrite)")
    (out_dir / store.TRAJECTORY).unlink(missing_ok=True)
    for path in parts_dir.glob("part-*.parquet"):
        if path not in named:
            path.unlink()
    return tables
