"""The physics of a training step, computed once.

The probe logs these quantities, the mirror learns from them, and the learned optimizers read
them as inputs, so all three use this module; their names, types, meanings and feature
transforms are :mod:`metalearner.observe.schema`'s. Every quantity refers to one optimizer step
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
module path (``"1"``, ``"features.0"``). Norms are squared dot products
combined with one matrix product, so a step costs a handful of kernel launches and no
per-parameter ``.item()``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, NamedTuple

import torch
from torch import nn

from metalearner.observe.schema import EXTENDED_COLUMNS, LAYERS, PHYSICS


def layout(n_layers: int) -> dict[str, int | slice]:
    """Where each quantity sits on the last axis of :attr:`StepPhysics.values`:
    :data:`~metalearner.observe.schema.PHYSICS` (one value each), then each of
    :data:`~metalearner.observe.schema.LAYERS` (``n_layers`` values each), then
    :data:`~metalearner.observe.schema.EXTENDED_COLUMNS` (only with the extended set)."""
    where: dict[str, int | slice] = {name: i for i, name in enumerate(PHYSICS)}
    start = len(PHYSICS)
    where.update({name: slice(start + k * n_layers, start + (k + 1) * n_layers) for k, name in enumerate(LAYERS)})
    start += len(LAYERS) * n_layers
    where.update({name: start + j for j, name in enumerate(EXTENDED_COLUMNS)})
    return where


class StepPhysics(NamedTuple):
    """One step's physics in one flat tensor (no host sync), laid out as :func:`layout`
    says, with named views."""

    values: torch.Tensor
    n_layers: int

    def __getitem__(self, name: str) -> torch.Tensor:
        """One quantity by its schema name: a 0-d tensor, or ``(L,)`` for a layer field."""
        if name in EXTENDED_COLUMNS and self.extended is None:
            raise KeyError(name)
        return self.values[layout(self.n_layers)[name]]

    @property
    def extended(self) -> torch.Tensor | None:
        ext = self.values[len(PHYSICS) + len(LAYERS) * self.n_layers :]
        return ext if len(ext) else None

    def scalars(self) -> dict[str, float]:
        """The global quantities (and the extended ones, if measured) as host floats, read
        from the device in one transfer; ``update_ratio`` is ``update_norm / weight_norm``
        (NaN when the weight norm is 0)."""
        values = self.values.tolist()
        names = PHYSICS + (EXTENDED_COLUMNS if self.extended is not None else ())
        where = layout(self.n_layers)
        out = {name: values[where[name]] for name in names}
        out["update_ratio"] = out["update_norm"] / out["weight_norm"] if out["weight_norm"] > 0 else float("nan")
        return out


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


def _pooling_matrix(assign: list[int], n_layers: int) -> torch.Tensor:
    """Maps squared per-tensor norms ``[g (P), w (P), u (P)]`` to the squares of
    ``[‖g‖, ‖w‖, ‖u‖, g layers, w layers, u layers]`` in one matrix product."""
    P = len(assign)
    M = torch.zeros(3 * P, 3 + 3 * n_layers)
    for k in range(3):
        for i, layer in enumerate(assign):
            M[k * P + i, k] = 1.0
            M[k * P + i, 3 + k * n_layers + layer] = 1.0
    return M


def _squared_norms(flat: list[torch.Tensor]) -> list[torch.Tensor]:
    """``‖t‖²`` of each flat tensor as 0-d tensors. A BLAS dot product per tensor runs about
    twice as fast on CPU as ``torch._foreach_norm``, which matters on the probe's hot path."""
    return [torch.dot(f, f) for f in flat]


def cosine(
    a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8, squares: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """The cosine of two vectors, ``a·b / (max(‖a‖, eps) max(‖b‖, eps))``: the value of
    ``torch.nn.functional.cosine_similarity(a, b, dim=0, eps=eps)`` up to rounding (one dot
    product instead of two scaled copies; in float64 the difference never reaches float32).
    ``squares``: ``(‖a‖², ‖b‖²)`` when the caller has them."""
    aa, bb = squares if squares is not None else (torch.dot(a, a), torch.dot(b, b))
    return torch.dot(a, b) / (aa.sqrt().clamp_min(eps) * bb.sqrt().clamp_min(eps))


class PhysicsTracker:
    """Computes :class:`StepPhysics` around optimizer steps.

    Call :meth:`before_step` just before ``optimizer.step()`` and :meth:`after_step` just
    after (the probe does this from optimizer step hooks). Gradients are read from ``.grad``;
    a parameter without a gradient counts as a zero gradient.
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
        self.width = len(PHYSICS) + len(LAYERS) * self.n_layers + (len(EXTENDED_COLUMNS) if extended else 0)
        self._pool = _pooling_matrix(assign, self.n_layers).to(self.params[0].device)
        self._before = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in self.params]
        self._flat_before = [b.view(-1) for b in self._before]
        self._pre_sq: list[torch.Tensor] | None = []
        self._zeros: dict[int, torch.Tensor] = {}
        self.extended = extended
        self._beta = noise_ema
        self.forget()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._flat_before = [b.view(-1) for b in self._before]  # pickle copies views apart from their base

    def _grads(self) -> list[torch.Tensor]:
        grads = []
        for i, p in enumerate(self.params):
            if p.grad is None:
                if i not in self._zeros:
                    self._zeros[i] = torch.zeros_like(p)
                grads.append(self._zeros[i])
            else:
                grads.append(p.grad)
        return grads

    @torch.no_grad()
    def before_step(self, measure: bool = True) -> None:
        """``measure=False``: only the copy that :meth:`remember_step` needs."""
        torch._foreach_copy_(self._before, self.params)
        # ‖θ_t‖² from the fresh contiguous copy: it is still in cache, and the same values
        # in the same order give the same dot products as the parameters themselves
        self._pre_sq = _squared_norms([g.reshape(-1) for g in self._grads()] + self._flat_before) if measure else None

    @torch.no_grad()
    def after_step(self, batch_size: int | None = None) -> StepPhysics:
        """This step's physics, pooled now (what a learned optimizer reads)."""
        squares, extended = self.after_step_raw(batch_size)
        values = self.pool(torch.stack(squares))
        if extended is not None:
            values = torch.cat([values, extended])
        return StepPhysics(values, self.n_layers)

    @torch.no_grad()
    def after_step_raw(self, batch_size: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The unpooled squared norms ``[g (P), w (P), u (P)]`` and the extended values.

        The probe stores these and pools a whole chunk at once with :meth:`pool`, which keeps
        its per-step cost to five vectorised passes over the parameters (three in
        :meth:`before_step`, two here).
        """
        if self._pre_sq is None:
            raise RuntimeError("this step was not measured (before_step(measure=False)): call remember_step() after it")
        torch._foreach_sub_(self._before, self.params)  # now θ_t − θ_{t+1} = −update
        squares = self._pre_sq + _squared_norms(self._flat_before)
        extended = self._extended(self._grads(), batch_size) if self.extended else None
        return squares, extended

    @torch.no_grad()
    def remember_step(self) -> None:
        """After a step whose physics nobody reads (``before_step(measure=False)`` before it):
        only the extended set's memory (previous gradient and update, noise EMAs) advances,
        exactly as :meth:`after_step` advances it, so the next step's extended values are the
        same; its norms, cosine and curvature are not computed. A learned optimizer that reads
        the extended set once per window primes it this way on the step before."""
        torch._foreach_sub_(self._before, self.params)
        if self.extended:
            self._extended(self._grads(), None, values=False)

    def pool(self, squares: torch.Tensor) -> torch.Tensor:
        """Squared per-tensor norms ``(..., 3P)`` -> ``(..., 3 + 3L)`` global and layer norms."""
        pool = self._pool if squares.dtype == self._pool.dtype else self._pool.to(squares.dtype)  # float64, bf16 models
        return (squares @ pool).sqrt()

    _STATE = ("_t", "_m", "_s", "_prev_grad", "_prev_update")  # what the extended set carries

    def forget(self) -> None:
        """Start the extended set's memory afresh (no previous gradient, update or noise EMAs)."""
        self._t = 0
        self._prev_grad: torch.Tensor | None = None
        self._prev_update: torch.Tensor | None = None
        self._m: torch.Tensor | None = None
        self._s = torch.zeros((), dtype=torch.float64)
        self._spare: tuple[torch.Tensor | None, torch.Tensor | None] = getattr(self, "_spare", (None, None))

    def state_dict(self) -> dict[str, object]:
        """The extended set's memory across steps (previous gradient and update, noise EMAs)."""
        return {k: copy.deepcopy(getattr(self, k)) for k in self._STATE}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """The memory of :meth:`state_dict`, its tensors on the parameters' device (a checkpoint keeps them on the CPU)."""
        device = self.params[0].device
        for k in self._STATE:
            v = copy.deepcopy(state[k])
            setattr(self, k, v.to(device) if isinstance(v, torch.Tensor) else v)

    def _extended(self, grads: list[torch.Tensor], batch_size: int | None, values: bool = True) -> torch.Tensor | None:
        """``[cos, curvature, noise]`` of this step, advancing the memory (``values=False``:
        the memory only). The float64 copies of this step's gradient and update go into the
        buffers of the step before last, kept for it (two more float64 copies of the
        parameters held, none allocated per step)."""
        g = _flat64(grads, self._spare[0])
        update = _flat64(self._before, self._spare[1]).neg_()
        nan = torch.tensor(math.nan, dtype=torch.float64, device=g.device)
        cos = curvature = nan
        sq = torch.dot(g, g)
        if self._prev_grad is not None and values:
            prev = self._prev_grad
            cos = cosine(g, prev, eps=1e-30, squares=(sq, torch.dot(prev, prev)))
            u = self._prev_update  # g − g' written into the previous gradient's buffer, free now
            curvature = torch.dot(torch.sub(g, prev, out=prev), u) / torch.dot(u, u).clamp_min(1e-30)
        self._t += 1
        b = self._beta
        self._m = g * (1 - b) if self._m is None else self._m.mul_(b).add_(g, alpha=1 - b)
        self._s = self._s * b + (1 - b) * sq
        noise = nan
        if self._t >= 2 and batch_size and values:
            corr = 1 - b**self._t
            m2 = torch.dot(self._m, self._m) / corr**2
            s = self._s / corr
            c = (1 - b) / (1 + b)  # variance of the EMA mean relative to one gradient's
            var = (s - m2) / (1 - c)
            true_sq = m2 - c * var
            noise = batch_size * var / true_sq
        self._spare = (self._prev_grad, self._prev_update)
        self._prev_grad, self._prev_update = g, update
        return torch.stack([cos, curvature, noise]).float() if values else None


def _flat64(tensors: list[torch.Tensor], out: torch.Tensor | None) -> torch.Tensor:
    """The tensors flattened into one float64 vector, written into ``out`` where it fits."""
    n = sum(t.numel() for t in tensors)
    if out is None or out.numel() != n or out.device != tensors[0].device:
        out = torch.empty(n, dtype=torch.float64, device=tensors[0].device)
    views, start = [], 0
    for t in tensors:
        views.append(out[start : start + t.numel()].view(t.shape))
        start += t.numel()
    torch._foreach_copy_(views, tensors)  # ~3x faster than torch.cat(out=) into another dtype
    return out
