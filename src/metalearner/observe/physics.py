"""The physics of a training step, defined once.

The probe logs these quantities, the mirror learns from them, and the learned optimizers read
them as inputs, so all three use this module. Every quantity refers to one optimizer step
``t`` that moves the parameters from ``θ_t`` to ``θ_{t+1}`` using the gradient ``g_t``
measured at ``θ_t``:

=================  ==========================================================================
``grad_norm``      ``‖g_t‖₂`` over all parameters (per layer in ``grad_norm_layers``)
``weight_norm``    ``‖θ_t‖₂``, the weights that produced this step's loss and gradient
``update_norm``    ``‖θ_{t+1} − θ_t‖₂``, the change the optimizer actually made
``update_ratio``   ``update_norm / weight_norm``
``grad_cos``       cosine between ``g_t`` and ``g_{t−1}`` (extended set)
``curvature``      secant curvature along the last update,
                   ``(g_t − g_{t−1})·u / ‖u‖²`` with ``u = θ_t − θ_{t−1}`` (extended set;
                   noisy, since the two gradients come from different batches)
``noise_scale``    simple gradient noise scale ``B · tr(Σ)/‖G‖²`` (McCandlish et al. 2018),
                   from bias-corrected EMAs of ``g`` and ``‖g‖²`` over steps (extended set)
=================  ==========================================================================

A "layer" is a module that owns parameters (its weight and bias together); its name is the
module path (``"1"``, ``"features.0"``). Norms are squared dot products combined with one
matrix product, so a step costs a handful of kernel launches and no per-parameter ``.item()``.

The per-step cost is memory traffic, so the tracker keeps a persistent snapshot buffer with
the parameters laid out layer by layer (one buffer per dtype and device), in which each
layer's weights and update are one contiguous slice. A step is one squared norm per gradient
tensor, one multi-tensor copy of the parameters into the snapshot and one squared norm per
layer (``‖θ_t‖²``), then after the step one in-place multi-tensor subtract and one squared
norm per layer (``‖θ_{t+1} − θ_t‖²``). On CPU the dot products go through NumPy's BLAS
(about twice as fast as ``torch.dot`` there), so the scalars are Python floats and no small
tensor ops run per step. The extended set copies the gradient into a buffer of the same
layout and works on whole buffers, one kernel per quantity, swapping the current and
previous gradient every step (float32 buffers, float64 scalar arithmetic).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np
import torch
from torch import nn

DEFAULT_FIELDS: tuple[str, ...] = ("grad_norm", "weight_norm", "update_norm")
EXTENDED_FIELDS: tuple[str, ...] = ("grad_cos", "curvature", "noise_scale")
LAYER_FIELDS: tuple[str, ...] = ("grad_norm_layers", "weight_norm_layers", "update_norm_layers")


class StepPhysics(NamedTuple):
    """One step's physics in one flat tensor (no host sync), with named views.

    Layout: ``[grad_norm, weight_norm, update_norm, grad_norm_layers (L),
    weight_norm_layers (L), update_norm_layers (L), grad_cos, curvature, noise_scale]``,
    the last three only with the extended set.
    """

    values: torch.Tensor
    n_layers: int

    @property
    def grad_norm(self) -> torch.Tensor:
        return self.values[0]

    @property
    def weight_norm(self) -> torch.Tensor:
        return self.values[1]

    @property
    def update_norm(self) -> torch.Tensor:
        return self.values[2]

    def layers(self, field: str) -> torch.Tensor:
        """Per-layer norms for ``field`` in ``LAYER_FIELDS``."""
        k, L = LAYER_FIELDS.index(field), self.n_layers
        return self.values[3 + k * L : 3 + (k + 1) * L]

    @property
    def extended(self) -> torch.Tensor | None:
        ext = self.values[3 + 3 * self.n_layers :]
        return ext if len(ext) else None


def layer_names(named_params: Iterable[tuple[str, nn.Parameter]]) -> tuple[list[str], list[int]]:
    """Group parameters by owning module: (layer names, layer index of each parameter)."""
    names: list[str] = []
    assign: list[int] = []
    for name, _ in named_params:
        layer = name.rsplit(".", 1)[0] if "." in name else name
        if layer not in names:
            names.append(layer)
        assign.append(names.index(layer))
    return names, assign



class _Buffers(NamedTuple):
    """Buffers shaped like the parameters, laid out layer by layer (see :class:`PhysicsTracker`)."""

    flats: list[torch.Tensor]  # one contiguous buffer per (dtype, device) group
    views: list[torch.Tensor]  # one per parameter, in the tracker's buffer order
    dot_flats: list[Any]  # the flats as the dot product takes them (NumPy arrays on CPU)
    dot_segments: list[Any]  # one flat slice per (group, layer), likewise


def _pooling_matrix(rows: list[tuple[int, int]], n_layers: int) -> torch.Tensor:
    """Maps a raw row of squared norms to the squares of ``[‖g‖, ‖w‖, ‖u‖, g layers (L),
    w layers (L), u layers (L)]`` in one matrix product. Raw entry ``i`` is the squared norm
    of quantity ``rows[i][0]`` (0 gradient, 1 weight, 2 update) over part of layer ``rows[i][1]``."""
    M = torch.zeros(len(rows), 3 + 3 * n_layers, dtype=torch.float64)
    for i, (k, layer) in enumerate(rows):
        M[i, k] = 1.0
        M[i, 3 + k * n_layers + layer] = 1.0
    return M


def _np_dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


def _at_least(x: float | torch.Tensor, lo: float) -> float | torch.Tensor:
    return x.clamp_min(lo) if isinstance(x, torch.Tensor) else max(x, lo)


class PhysicsTracker:
    """Computes :class:`StepPhysics` around optimizer steps.

    Call :meth:`before_step` just before ``optimizer.step()`` and :meth:`after_step` just
    after (the probe does this from optimizer step hooks). Gradients are read from ``.grad``;
    a parameter without a gradient counts as a zero gradient. With ``extended``, the previous
    gradient and update are those of the previous *tracked* step.
    """

    def __init__(
        self,
        named_params: Iterable[tuple[str, nn.Parameter]],
        *,
        extended: bool = False,
        noise_ema: float = 0.95,
    ) -> None:
        named = [(n, p) for n, p in named_params if p.requires_grad]
        if not named:
            raise ValueError("PhysicsTracker needs at least one parameter that requires grad")
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.layer_names, assign = layer_names(named)
        self.n_layers = len(self.layer_names)
        self.width = 3 + 3 * self.n_layers + (len(EXTENDED_FIELDS) if extended else 0)
        self.extended = extended
        self._beta = noise_ema
        # CPU float32/float64: dot products in NumPy, scalars as Python floats
        self._numpy = all(p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64) for p in self.params)
        self._dot: Callable[[Any, Any], Any] = _np_dot if self._numpy else torch.dot

        # buffer layout: parameters grouped by (dtype, device), each group sorted by layer
        groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, p in enumerate(self.params):
            groups.setdefault((p.dtype, p.device), []).append(i)
        self._assign = assign
        self._groups = [sorted(idx, key=assign.__getitem__) for idx in groups.values()]
        self._order = [i for idx in self._groups for i in idx]
        self._oparams = [self.params[i] for i in self._order]
        self._seg_layers = [assign[idx[j]] for idx in self._groups for j in range(len(idx))
                            if j == len(idx) - 1 or assign[idx[j + 1]] != assign[idx[j]]]  # fmt: skip
        self._snap = self._buffers()  # θ_t between before and after a step, −u_t after it
        self._zeros: dict[int, torch.Tensor] = {}
        if extended:
            # raw row: [g per layer (S), w per layer (S), u per layer (S)], from the buffers
            rows = [(k, layer) for k in range(3) for layer in self._seg_layers]
            self._grad, self._prev_buf, self._m_buf = self._buffers(), self._buffers(), self._buffers()
        else:
            # raw row: [g per parameter (P), w per layer (S), u per layer (S)]
            rows = [(0, layer) for layer in assign] + [(k, layer) for k in (1, 2) for layer in self._seg_layers]
        self._pool = _pooling_matrix(rows, self.n_layers).to(self.params[0].device)
        self._pools = {torch.float64: self._pool}
        self._sq: list[Any] = []  # this step's squared gradient and weight norms
        # extended set: this step's g·g_prev, (g − g_prev)·u_prev, ‖m‖², then the state
        # carried across steps (see state_dict)
        self._ext: list[Any] = []
        self._t = 0
        self._s: float | torch.Tensor = 0.0
        self._has_prev = False
        self._prev_g2: float | torch.Tensor = math.nan
        self._prev_u2: float | torch.Tensor = math.nan

    def _buffers(self) -> _Buffers:
        flats, views, segments = [], [], []
        for idx in self._groups:
            ps = [self.params[i] for i in idx]
            flat = torch.zeros(sum(p.numel() for p in ps), dtype=ps[0].dtype, device=ps[0].device)
            start = offset = 0
            for j, p in enumerate(ps):
                views.append(flat[offset : offset + p.numel()].view(p.shape))
                offset += p.numel()
                if j == len(ps) - 1 or self._assign[idx[j + 1]] != self._assign[idx[j]]:
                    segments.append(flat[start:offset])
                    start = offset
            flats.append(flat)
        as_dot = (lambda t: t.numpy()) if self._numpy else (lambda t: t)  # noqa: E731
        return _Buffers(flats, views, [as_dot(f) for f in flats], [as_dot(s) for s in segments])

    def _grads(self, order: Iterable[int]) -> list[torch.Tensor]:
        grads = []
        for i in order:
            g = self.params[i].grad
            if g is None:
                g = self._zeros.get(i)
                if g is None:
                    g = self._zeros[i] = torch.zeros_like(self.params[i])
            grads.append(g)
        return grads

    def _grad_squares(self) -> list[Any]:
        """``‖g‖²`` of each parameter's gradient, in parameter order."""
        dot = self._dot
        if self._numpy:
            flats = [g.detach().numpy().reshape(-1) for g in self._grads(range(len(self.params)))]
        else:
            flats = [g.detach().reshape(-1) for g in self._grads(range(len(self.params)))]
        return [dot(f, f) for f in flats]

    def _row(self, values: list[Any]) -> list[float] | torch.Tensor:
        return values if self._numpy else torch.stack(values)

    @staticmethod
    def stack_rows(rows: list[Any]) -> torch.Tensor:
        """Rows (or extended values) of :meth:`after_step_raw` as one ``(n, R)`` tensor."""
        if isinstance(rows[0], torch.Tensor):
            return torch.stack(rows)
        return torch.tensor(rows, dtype=torch.float64)

    @torch.no_grad()
    @np.errstate(over="ignore", invalid="ignore")  # a diverged run's norms are inf, as in torch
    def before_step(self) -> None:
        dot, snap = self._dot, self._snap
        sq = self._extended_before() if self.extended else self._grad_squares()
        torch._foreach_copy_(snap.views, self._oparams)
        sq += [dot(s, s) for s in snap.dot_segments]
        self._sq = sq

    @torch.no_grad()
    def after_step(self, batch_size: int | None = None) -> StepPhysics:
        """This step's physics, pooled now (what a learned optimizer reads), in float32."""
        squares, extended = self.after_step_raw(batch_size)
        values = self.pool(self.stack_rows([squares])[0])
        if extended is not None:
            values = torch.cat([values, self.stack_rows([extended])[0].to(values)])
        return StepPhysics(values.float(), self.n_layers)

    @torch.no_grad()
    @np.errstate(over="ignore", invalid="ignore")
    def after_step_raw(self, batch_size: int | None = None) -> tuple[Any, Any]:
        """This step's raw row of squared norms and its extended values (or ``None``).

        The row holds squared norms of the gradient, weights and update over pieces of
        layers; its layout is internal. On CPU (float32/float64 parameters) the row and the
        extended values are lists of Python floats, elsewhere tensors (no host sync).
        :meth:`stack_rows` stacks rows and :meth:`pool` turns them into :class:`StepPhysics`
        norms: the probe stores rows and pools a whole chunk at once.
        """
        dot, snap = self._dot, self._snap
        torch._foreach_sub_(snap.views, self._oparams)  # now θ_t − θ_{t+1} = −u_t
        row = self._sq + [dot(s, s) for s in snap.dot_segments]
        if not self.extended:
            return self._row(row), None
        S = len(self._seg_layers)
        if self._numpy:
            g2, u2 = math.fsum(row[:S]), math.fsum(row[2 * S :])
            scalars = self._ext
        else:
            g2, u2 = sum(x.double() for x in row[:S]), sum(x.double() for x in row[2 * S :])
            scalars = [x.double() for x in self._ext]
        return self._row(row), self._extended_values(*scalars, g2, u2, batch_size)

    def pool(self, squares: torch.Tensor) -> torch.Tensor:
        """Raw rows ``(..., R)`` from :meth:`after_step_raw` -> ``(..., 3 + 3L)`` global and
        layer norms (float64 rows give float64 norms, anything else float32)."""
        if squares.dtype != torch.float64:
            squares = squares.float()
        M = self._pools.get(squares.dtype)
        if M is None:
            M = self._pools[squares.dtype] = self._pool.to(squares.dtype)
        return (squares @ M).sqrt()

    # -- extended set -------------------------------------------------------------------
    def _extended_before(self) -> list[Any]:
        """Copy the gradient into its buffer and take the dot products that need the previous
        gradient and update (the snapshot still holds −u_prev). Returns ``‖g‖²`` per layer."""
        dot, grad, prev, m = self._dot, self._grad, self._prev_buf, self._m_buf
        torch._foreach_copy_(grad.views, self._grads(self._order))
        ext = []
        if self._has_prev:
            ext.append(sum(dot(a, b) for a, b in zip(grad.dot_flats, prev.dot_flats)))  # g·g_prev
            torch._foreach_sub_(prev.flats, grad.flats)  # g_prev − g
            ext.append(sum(dot(a, b) for a, b in zip(prev.dot_flats, self._snap.dot_flats)))  # (g − g_prev)·u
        b = self._beta
        if self._t == 0:
            torch._foreach_mul_(m.flats, 0.0)
        torch._foreach_lerp_(m.flats, grad.flats, 1 - b)  # m ← b·m + (1 − b)·g
        ext.append(sum(dot(x, x) for x in m.dot_flats))  # ‖m‖²
        self._ext = ext
        self._grad, self._prev_buf = prev, grad  # this gradient is the next step's previous
        return [dot(s, s) for s in grad.dot_segments]

    def _extended_values(self, *args: float | torch.Tensor) -> torch.Tensor:
        """``grad_cos``, ``curvature`` and ``noise_scale`` from this step's dot products
        (``g·g_prev`` and ``(g − g_prev)·u_prev`` when there is a previous step, then
        ``‖m‖²``), ``‖g‖²``, ``‖u‖²`` and the batch size; floats or 0-d float64 tensors."""
        *dots, g2, u2, batch_size = args
        cos = curvature = noise = math.nan
        if self._has_prev:
            gg, dgu, m2 = dots
            cos = gg / _at_least(g2 * self._prev_g2, 1e-60) ** 0.5
            curvature = dgu / _at_least(self._prev_u2, 1e-30)
        else:
            (m2,) = dots
        self._t += 1
        b = self._beta
        self._s = self._s * b + (1 - b) * g2
        if self._t >= 2 and batch_size:
            corr = 1 - b**self._t
            m2 = m2 / corr**2
            s = self._s / corr
            c = (1 - b) / (1 + b)  # variance of the EMA mean relative to one gradient's
            var = (s - m2) / (1 - c)
            true_sq = m2 - c * var
            if not isinstance(true_sq, torch.Tensor):
                true_sq = np.float64(true_sq)  # 0/0 is nan, not an exception
            noise = float(batch_size * var / true_sq) if self._numpy else batch_size * var / true_sq
        self._has_prev, self._prev_g2, self._prev_u2 = True, g2, u2
        if self._numpy:
            return [float(cos), float(curvature), float(noise)]
        device = self.params[0].device
        values = [torch.as_tensor(v, dtype=torch.float64, device=device) for v in (cos, curvature, noise)]
        return torch.stack(values).float()

    _STATE = ("_t", "_m", "_s", "_prev_grad", "_prev_update")  # what the extended set carries

    def state_dict(self) -> dict[str, object]:
        """The extended set's memory across steps (previous gradient and update, noise EMAs),
        as flat float64 tensors in parameter order (``None`` before the first step)."""
        started = self.extended and self._t > 0
        prev = started and self._has_prev
        return {
            "_t": self._t,
            "_m": self._in_param_order(self._m_buf.views) if started else None,
            "_s": torch.as_tensor(self._s, dtype=torch.float64).clone(),
            "_prev_grad": self._in_param_order(self._prev_buf.views) if prev else None,
            "_prev_update": -self._in_param_order(self._snap.views) if prev else None,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._t = int(state["_t"])
        s = state["_s"]
        self._s = float(s) if self._numpy else torch.as_tensor(s, dtype=torch.float64).clone()
        self._has_prev = self.extended and state["_prev_grad"] is not None
        if not self.extended:
            return
        if state["_m"] is not None:
            self._from_param_order(state["_m"], self._m_buf.views)
        if self._has_prev:
            self._from_param_order(state["_prev_grad"], self._prev_buf.views)
            self._from_param_order(-state["_prev_update"], self._snap.views)
            dot = self._dot
            g2 = sum(dot(x, x) for x in self._prev_buf.dot_flats)
            u2 = sum(dot(x, x) for x in self._snap.dot_flats)
            self._prev_g2, self._prev_u2 = (g2, u2) if self._numpy else (g2.double(), u2.double())

    def _in_param_order(self, views: list[torch.Tensor]) -> torch.Tensor:
        by_param = dict(zip(self._order, views))
        return torch.cat([by_param[i].reshape(-1).double() for i in range(len(self.params))])

    def _from_param_order(self, flat: torch.Tensor, views: list[torch.Tensor]) -> None:
        pieces = torch.split(flat.reshape(-1), [p.numel() for p in self.params])
        for i, view in zip(self._order, views):
            view.copy_(pieces[i].view(view.shape))
